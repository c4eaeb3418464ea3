"""The session audit log through the real server, real PTYs (a bash shell as the agent) and
the real CLI: typed lines, processes, file changes, the session's life; the writer's
rotation and torn lines; the API behind auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from hivecell.sessions.audit import AUDIT, AuditLog, arecord, record
from hivecell.sessions.recorders import LineAssembler, ProcessWatch, SessionRecorder
from tests.server.helpers import Running, serve
from tests.sessions.helpers import cli, make_repo, viewer

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


async def _entries(running: Running, name: str) -> list[dict[str, Any]]:
    page = await running.get(f"/sessions/{name}/audit", params={"limit": 5000})
    assert page.status_code == 200, page.text
    return list(page.json()["items"])


async def until_entry(
    running: Running, name: str, wanted: dict[str, Any], timeout: float = 30
) -> list[dict[str, Any]]:
    """Until an entry whose fields include ``wanted`` is in the log (the recorders run on
    their own time: inotify events, /proc polls)."""
    with anyio.fail_after(timeout):
        while True:
            entries = await _entries(running, name)
            if any(wanted.items() <= e.items() for e in entries):
                return entries
            await anyio.sleep(0.1)


async def test_typed_lines_processes_and_file_changes_are_recorded(shome: Path, repo: Path) -> None:
    async with serve(shome) as running:
        body = {"name": "au1", "agent": "shell", "repo": str(repo), "isolation": "worktree"}
        made = await running.post("/sessions", json=body)
        assert made.status_code == 201, made.text
        await until_entry(running, "au1", {"action": "session_start", "agent": "shell"})
        # Typed through the CLI's send and through a viewer, with editing keys and an
        # escape sequence that must not reach the log raw.
        await cli(shome, running, "send", "au1", "echo from-send")
        async with viewer(running, "au1") as v:
            await v.type("echo typo\x7f\x7f\x7f\x7fviewer\x1b[D\x1b[C\x1b]0;evil\x07\r")
            await v.until(b"viewer")
            await v.type("sleep 4242\r")
            entries = await until_entry(
                running, "au1", {"action": "process_spawn", "target": "sleep"}
            )
            spawned = [e for e in entries if e["action"] == "process_spawn"]
            assert any(e["detail"]["argv"] == ["sleep", "4242"] for e in spawned), spawned
            await v.type("\x03")
            await v.type("echo data > made.txt; mkdir -p d; echo x > d/in.txt; echo ok-$((3*3))\r")
            await v.until(b"ok-9")
            await until_entry(running, "au1", {"action": "file_write", "target": "made.txt"})
            await until_entry(running, "au1", {"action": "file_write", "target": "d/in.txt"})
            await v.type("rm made.txt; echo gone-$((2*3))\r")
            await v.until(b"gone-6")
            # A password prompt (echo off, line mode): only the length is recorded.
            await v.type('p=pass; read -s -p "$p-word: " pw; echo got-${#pw}\r')
            await v.until(b"pass-word: ")
            await v.type("hunter2\r")
            await v.until(b"got-7")
            entries = await until_entry(
                running, "au1", {"action": "file_delete", "target": "made.txt"}
            )
        inputs = [e["target"] for e in entries if e["action"] == "input"]
        assert "echo from-send" in inputs
        assert "echo viewer" in inputs  # backspaces applied, arrows and the OSC dropped
        assert "sleep 4242" in inputs
        assert "^C" in inputs
        assert "[typed with echo off: 7 characters]" in inputs
        raw = (shome / "sessions" / "au1" / AUDIT).read_bytes()
        assert b"\x1b" not in raw and b"\x07" not in raw and b"evil" not in raw
        assert b"hunter2" not in raw
        # git's own bookkeeping is not the agent's work: nothing under .git is recorded.
        assert all(".git" not in (e["target"] or "").split("/") for e in entries)
        for e in entries:
            assert e["session"] == "au1" and e["outcome"] == "allowed"
        seqs = [e["seq"] for e in entries]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

        # The detail view carries the newest entries; the CLI prints them, JSON or text.
        detail = (await running.get("/sessions/au1")).json()
        assert detail["audit"] and detail["audit"][-1]["seq"] == seqs[-1]
        done = await cli(shome, running, "audit", "au1", "--json")
        printed = [json.loads(line) for line in done.stdout.decode().splitlines()]
        assert [p["seq"] for p in printed][: len(seqs)] == seqs
        text = (await cli(shome, running, "audit", "au1")).stdout
        assert b'"echo viewer"' in text and b"\x1b" not in text

        await running.post("/sessions/au1/restart")
        await until_entry(running, "au1", {"action": "session_restart"})
        await cli(shome, running, "destroy", "au1", "--force")


async def test_audit_api_needs_auth_and_checks_names(shome: Path, repo: Path) -> None:
    async with serve(shome) as running:
        body = {"name": "au2", "agent": "shell", "repo": str(repo), "isolation": "none"}
        assert (await running.post("/sessions", json=body)).status_code == 201
        await until_entry(running, "au2", {"action": "session_start"})
        async with httpx2.AsyncClient(base_url=running.base_url) as anonymous:
            for path in ("audit", "diff"):
                bare = await anonymous.get(f"/api/v1/sessions/au2/{path}")
                assert bare.status_code == 401, bare.text
                wrong = await anonymous.get(
                    f"/api/v1/sessions/au2/{path}", headers={"Authorization": "Bearer nope"}
                )
                assert wrong.status_code == 401, wrong.text
            merged = await anonymous.post("/api/v1/sessions/au2/merge", json={})
            assert merged.status_code == 401
        for bad in ("..%2F..%2Fetc", "AU2", "nope"):
            page = await running.get(f"/sessions/{bad}/audit")
            assert page.status_code in (404, 422), (bad, page.text)
        page = await running.get("/sessions/au2/audit", params={"limit": 0})
        assert page.status_code == 422
        # Paging: after=SEQ returns what follows.
        first = (await running.get("/sessions/au2/audit", params={"limit": 1})).json()
        assert len(first["items"]) == 1 and first["more"] is True
        rest = await running.get("/sessions/au2/audit", params={"after": first["next_after"]})
        assert all(e["seq"] > first["next_after"] for e in rest.json()["items"])
        # --follow prints entries as they are written.
        command = [sys.executable, "-m", "hivecell.cli.main", "session", "audit", "au2"]
        command += ["--follow", "--json", "--home", str(shome), "--server", running.base_url]
        async with await anyio.open_process(command) as follow:
            assert follow.stdout is not None
            seen = b""
            with anyio.fail_after(30):
                async for chunk in follow.stdout:
                    seen += chunk
                    if b"session_start" in seen:
                        break
                await running.post("/sessions/au2/send", json={"text": "echo followed"})
                async for chunk in follow.stdout:
                    seen += chunk
                    if b"echo followed" in seen:
                        break
            follow.terminate()
        await cli(shome, running, "destroy", "au2")


async def test_the_isolation_hook_records_blocked_attempts(shome: Path, repo: Path) -> None:
    """What the sandbox/worktree isolation calls when it refuses a path or a connection."""
    async with serve(shome) as running:
        body = {"name": "au3", "agent": "shell", "repo": str(repo), "isolation": "none"}
        assert (await running.post("/sessions", json=body)).status_code == 201
        folder = shome / "sessions" / "au3"
        await anyio.to_thread.run_sync(
            lambda: record(
                folder,
                "file_read",
                session="au3",
                agent="shell",
                target="/root/.ssh/id_ed25519",
                outcome="blocked",
            )
        )
        await arecord(
            folder,
            "network_request",
            session="au3",
            agent="shell",
            target="192.0.2.1:443",
            outcome="blocked",
            detail={"rule": "deny private"},
        )
        entries = await until_entry(running, "au3", {"action": "network_request"})
        blocked = [(e["action"], e["target"]) for e in entries if e["outcome"] == "blocked"]
        assert blocked == [
            ("file_read", "/root/.ssh/id_ed25519"),
            ("network_request", "192.0.2.1:443"),
        ]
        await cli(shome, running, "destroy", "au3")


# -- the writer and the reader, without a session ----------------------------------------
def _append(log: AuditLog, text: str) -> None:
    log.append(session="s", agent="shell", action="input", target=text)


def test_torn_last_line_is_skipped_and_the_next_writer_starts_fresh(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    _append(log, "one")
    _append(log, "two")
    with open(tmp_path / AUDIT, "ab") as f:  # a writer killed mid-line
        f.write(b'{"seq": 3, "timestamp": "2026-11-30T20:00:00Z", "session": "s", "ag')
    assert [e.target for e in log.read()] == ["one", "two"]
    assert [e.target for e in log.tail(10)] == ["one", "two"]
    _append(log, "three")
    assert [e.target for e in log.read()] == ["one", "two", "three"]
    assert [e.seq for e in log.read()] == [1, 2, 3]


def test_a_writer_killed_mid_write_never_breaks_readers(tmp_path: Path) -> None:
    """Real processes killed at random points while appending; whatever is on disk after
    reads cleanly, with strictly growing seq numbers."""
    code = (
        "import sys; from pathlib import Path; from hivecell.sessions.audit import AuditLog\n"
        "log = AuditLog(Path(sys.argv[1]), max_bytes=20000)\n"
        "print('go', flush=True)\n"
        "while True: log.append(session='s', agent='a', action='input', target='x' * 300)\n"
    )
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"go\n"
        # Wait until it has really written (state, not time), then kill it mid-stream.
        while AuditLog(tmp_path).last_seq() < 50 * (_ + 1):
            time.sleep(0.001)
        proc.kill()
        proc.wait()
    log = AuditLog(tmp_path, max_bytes=20000)
    seqs = [e.seq for e in log.read(limit=100000)]
    assert seqs and seqs == sorted(set(seqs))
    assert all(p.stat().st_size <= 20000 + 400 for p in log.files())
    assert len(log.files()) <= 4  # the current file and three rotated ones


def test_rotation_keeps_the_newest_and_paging_survives_it(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, max_bytes=4096, keep=2)
    for i in range(200):
        _append(log, f"line-{i}")
    kept = log.read(limit=10000)
    assert kept[-1].target == "line-199"
    assert kept[0].seq > 1  # the oldest were dropped
    assert sum(p.stat().st_size for p in log.files()) <= 3 * 4096
    after = kept[-5].seq
    assert [e.target for e in log.read(after=after)] == [f"line-{i}" for i in range(196, 200)]
    assert (tmp_path / AUDIT).stat().st_mode & 0o777 == 0o600


def test_the_line_assembler_edits_and_escapes() -> None:
    lines = LineAssembler()
    assert lines.feed(b"ls -l\x7f\x7fa\r") == ["ls a"]
    assert lines.feed(b"x\x1b") == []  # an escape cut in two waits for its end
    assert lines.feed(b"[Dy\x1b[200~paste\x1b[201~\r") == ["xypaste"]
    assert lines.feed("\u00e9".encode()[:1]) == []
    assert lines.feed("\u00e9".encode()[1:] + b"\tz\n") == ["\u00e9^Iz"]
    assert lines.feed(b"sleep 9\x03") == ["sleep 9^C"]
    assert lines.feed(b"secret\x15ls\r") == ["ls"]
    assert lines.feed(b"q" * 5000)[0] == "q" * 4096
    lines = LineAssembler()
    assert lines.feed(b"sec", hidden=True) == []
    assert lines.feed(b"ret\rnext\r") == [f"[typed with echo off: {n} characters]" for n in (6, 4)]
    assert lines.feed(b"shown\r") == ["shown"]


def test_process_watch_sees_a_new_child_and_its_exec(tmp_path: Path) -> None:
    watch = ProcessWatch()
    root = os.getpid()
    watch.poll(root)
    child = subprocess.Popen(["sleep", "3131"])
    try:
        fresh = watch.poll(root)
        assert (child.pid, ["sleep", "3131"]) in fresh
        assert watch.poll(root) == []  # recorded once
    finally:
        child.kill()
        child.wait()


def test_files_already_inside_a_new_folder_are_recorded(tmp_path: Path) -> None:
    # inotify watches a new folder only once it is reported: `mkdir d; echo x > d/f` can
    # write d/f before the watch exists, and no event names it (seen in a fresh-clone run).
    work = tmp_path / "worktree"
    (work / "d" / "e").mkdir(parents=True)
    (work / "d" / "e" / "f.txt").write_text("x")
    (work / "d" / "top.txt").write_text("x")
    (work / "d" / ".git").mkdir()
    (work / "d" / ".git" / "HEAD").write_text("ref")
    (work / "link").symlink_to(tmp_path)  # a link to a folder is not walked
    recorder = SessionRecorder(tmp_path / "session", "s", "shell", work, 1 << 20)
    found = recorder._inside_new_folders([str(work / "d"), str(work / "link")])
    assert sorted(found) == [("file_write", "d/e/f.txt"), ("file_write", "d/top.txt")]
