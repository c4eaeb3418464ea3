"""Attacks on a real ``hivecell up`` process: its files on disk, huge uploads, the VNC socket.

Synchronous on purpose: the server is another process and the clients are raw sockets, so
what the server holds in memory is its own, measurable in /proc.
"""

from __future__ import annotations

import select
import socket
import stat
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.security.conftest_server import UpProcess, hivecell_up

MiB = 1024 * 1024


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_home_and_everything_private_in_it_are_owner_only(home: Path, tmp_path: Path) -> None:
    """An older version (or umask 022) left the home readable; `hivecell up` fixes it, and
    never through a link a task planted in its outputs."""
    outside = tmp_path / "host-file"
    outside.write_text("not hivecell's")
    outside.chmod(0o644)
    home.chmod(0o755)
    (home / "token").write_text("t" * 43 + "\n")
    (home / "config.toml").write_text("")
    for path in (home / "token", home / "config.toml"):
        path.chmod(0o644)
    trace = home / "traces" / "t-1"
    trace.mkdir(parents=True)
    (trace / "trace.jsonl").write_text("{}\n")
    (trace / "trace.jsonl").chmod(0o666)
    outputs = home / "outputs" / "t-1"
    outputs.mkdir(parents=True)
    (outputs / "tool").write_text("#!/bin/sh\n")
    (outputs / "tool").chmod(0o4755)  # setuid, as a box might have left it
    (outputs / "link").symlink_to(outside)
    for folder in (trace, outputs, home / "traces", home / "outputs"):
        folder.chmod(0o777)

    with hivecell_up(home):
        pass

    assert mode(home) == 0o700
    for name in ("token", "config.toml", "hivecell.db"):
        assert mode(home / name) == 0o600, name
    for folder in (trace, outputs, home / "traces", home / "outputs"):
        assert mode(folder) == 0o700, folder
    assert mode(trace / "trace.jsonl") == 0o600
    assert mode(outputs / "tool") == 0o700  # owner bits kept, setuid and group/other gone
    assert mode(outside) == 0o644  # the link was not followed
    for path in home.rglob("*"):  # nothing else (WAL files, ...) is open to others
        if (
            not path.is_symlink()
            and path.parent.name != "pycache"
            and "sandboxes" not in path.parts
        ):
            assert mode(path) & 0o077 == 0, path


def test_a_fresh_home_is_created_private(tmp_path: Path, pycache: Path) -> None:
    home = tmp_path / "fresh"
    with hivecell_up(home, "--no-auth"):
        pass
    assert mode(home) == 0o700
    assert mode(home / "hivecell.db") == 0o600


def _request_head(up: UpProcess, extra: str) -> bytes:
    return (
        f"POST /api/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\n"
        f"Authorization: Bearer {up.token}\r\n"
        "Content-Type: multipart/form-data; boundary=XyZ\r\n" + extra + "\r\n"
    ).encode()


def _stream_until_answered(up: UpProcess, total: int) -> tuple[bytes, int]:
    """Send a chunked multipart upload of ``total`` bytes, stopping as soon as the server
    answers; returns (the answer's first bytes, bytes sent)."""
    part = b'--XyZ\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
    part += b"Content-Type: application/octet-stream\r\n\r\n"
    chunk = b"A" * MiB
    with socket.create_connection(("127.0.0.1", up.port)) as sock:
        sock.sendall(_request_head(up, "Transfer-Encoding: chunked\r\n"))
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sent = len(part)
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server answered (or closed) mid-upload
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.settimeout(30)
        try:
            return sock.recv(4096), sent
        except ConnectionResetError:
            return b"", sent


def test_a_huge_upload_is_refused_while_it_streams(home: Path) -> None:
    with hivecell_up(home, "--max-upload-mb", "4") as up:
        before = up.status("VmHWM")
        answer, sent = _stream_until_answered(up, 512 * MiB)
        grown_mib = (up.status("VmHWM") - before) / 1024
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 128 * MiB, f"the server read {sent // MiB} MiB before refusing"
        assert grown_mib < 48, f"the server's peak memory grew by {grown_mib:.0f} MiB"
        # A declared length over the cap is refused before a byte of the body is read.
        with socket.create_connection(("127.0.0.1", up.port)) as sock:
            sock.sendall(_request_head(up, f"Content-Length: {1024 * MiB}\r\n"))
            sock.settimeout(30)
            assert sock.recv(4096).startswith(b"HTTP/1.1 413")
        leftovers = list((home / "inputs").rglob("*")) if (home / "inputs").exists() else []
        assert leftovers == []


def test_foreign_pages_and_hosts_are_refused_on_vnc_and_http(home: Path) -> None:
    with hivecell_up(home, "--allowed-host", "hive.example") as up:
        for host, expected in [("hive.example", b" 200"), ("evil.example", b" 400")]:
            with socket.create_connection(("127.0.0.1", up.port)) as sock:
                sock.sendall(
                    f"GET /api/v1/status HTTP/1.1\r\nHost: {host}\r\n"
                    f"Authorization: Bearer {up.token}\r\nConnection: close\r\n\r\n".encode()
                )
                sock.settimeout(30)
                assert expected in sock.recv(4096).split(b"\r\n")[0], host
        url = f"ws://127.0.0.1:{up.port}/api/v1/sandboxes/sb-nope/vnc"
        cookie = {"Cookie": f"hivecell_token={up.token}"}
        foreign = f"http://127.0.0.1:{up.port + 1}"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=foreign, additional_headers=cookie).close()  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        assert b"forbidden_origin" in (refused.value.response.body or b"")
        rebound = f"ws://evil.example:{up.port}/api/v1/sandboxes/sb-nope/vnc"
        with pytest.raises(InvalidStatus) as refused:
            sock = socket.create_connection(("127.0.0.1", up.port))
            connect(rebound, sock=sock, additional_headers=cookie).close()
        assert refused.value.response.status_code == 400
        # Its own page passes the guard and reaches the relay, which has no such sandbox.
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=up.base_url, additional_headers=cookie).close()  # type: ignore[arg-type]
        assert b"forbidden_origin" not in (refused.value.response.body or b"")
