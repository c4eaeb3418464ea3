"""The session CLI against a real ``hivecell up`` process: it finds the server through
``$HIVECELL_HOME``, attaches a real terminal (a PTY here) and detaches on Ctrl-], follows
logs, and a SIGKILLed server's sessions carry on into the next one."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tests.server.test_restart import hivecell_up
from tests.sessions.helpers import make_repo, stop_all

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def shome(home: Path) -> Iterator[Path]:
    yield home
    stop_all(home)


def hivecell(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "hivecell.cli.main", *args, "--home", str(home)]


async def session(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    done = await anyio.run_process(hivecell(home, "session", *args), check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done


def read_until(fd: int, needle: bytes, seen: bytes = b"", timeout: float = 30) -> bytes:
    """Blocking: read a PTY master until ``needle`` shows (select bounds each wait)."""
    import time

    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} never came; saw {seen[-400:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the attach process ended
                chunk = b""
            assert chunk, f"{needle!r} never came before EOF; saw {seen[-400:]!r}"
            seen += chunk
    return seen


async def test_cli_finds_the_server_attaches_detaches_and_survives_a_killed_server(
    shome: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo")
    async with hivecell_up(shome) as (process, _running):
        assert json.loads((shome / "server.json").read_text())["url"].startswith(
            "http://127.0.0.1:"
        )
        await session(
            shome, "create", "cl1", "--agent", "shell", "--repo", str(repo), "--isolation", "none"
        )

        # `session attach` in a real terminal: type, see the echo, Ctrl-] detaches.
        master, slave = pty.openpty()
        attach = subprocess.Popen(  # noqa: ASYNC220 - a PTY-attached process, read below
            hivecell(shome, "session", "attach", "cl1"),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        try:
            # The replayed prompt shows once attached (and the terminal raw).
            seen = await anyio.to_thread.run_sync(read_until, master, b"bash-")
            os.write(master, b"echo cli-$((5*5))\r")
            seen = await anyio.to_thread.run_sync(read_until, master, b"cli-25", seen)
            os.write(master, b"\x1d")
            await anyio.to_thread.run_sync(read_until, master, b"detached from cl1", seen)
            with anyio.fail_after(20):
                assert await anyio.to_thread.run_sync(attach.wait) == 0
        finally:
            if attach.poll() is None:
                attach.kill()
            os.close(master)
        listed = json.loads((await session(shome, "ls", "--json")).stdout)
        assert listed[0]["status"] != "exited"  # detaching leaves the agent running

        # logs --follow: what is already there, then what comes next.
        follow = await anyio.open_process(hivecell(shome, "session", "logs", "cl1", "--follow"))
        try:
            await session(shome, "send", "cl1", "echo later-$((8*8))")
            assert follow.stdout is not None
            seen = b""
            with anyio.fail_after(30):
                async for chunk in follow.stdout:
                    seen += chunk
                    if b"later-64" in seen:
                        break
            assert b"cli-25" in seen
        finally:
            follow.kill()
            await follow.wait()
        process.send_signal(signal.SIGKILL)  # no clean shutdown at all

    done = await anyio.run_process(hivecell(shome, "session", "ls"), check=False)
    assert done.returncode == 2 and b"hivecell up" in done.stderr  # stale server.json
    async with hivecell_up(shome):
        listed = json.loads((await session(shome, "ls", "--json")).stdout)
        assert (listed[0]["name"], listed[0]["supervisor"]) == ("cl1", "running")
        logs = (await session(shome, "logs", "cl1")).stdout
        assert b"cli-25" in logs and b"later-64" in logs
        await session(shome, "destroy", "cl1")
