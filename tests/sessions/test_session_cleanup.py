"""The ``home``/``short_home`` fixtures stop a test's leftover session supervisors, their
agents and the agents' jobs that ignore SIGHUP; another home's sessions are left alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest

from hivecell.sessions.recorders import argv_of, process_tree
from hivecell.sessions.service import SessionCreate, SessionService
from tests.sessions.cleanup import stop_sessions, supervisors
from tests.sessions.helpers import make_repo

pytestmark = [pytest.mark.anyio]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _runs_sleep(pids: dict[int, str]) -> bool:
    return any((argv_of(p) or [""])[0] == "sleep" for p in pids)  # a pid may vanish: None


async def _until_dead(pids: list[int]) -> None:
    with anyio.fail_after(10):
        while True:  # SIGKILL is delivered, not awaited
            if not any(_alive(p) for p in pids):
                return
            await anyio.sleep(0.05)


async def _session_with_a_stubborn_job(home: Path, repo: Path) -> list[int]:
    service = SessionService(home, {"PATH": os.environ["PATH"]})
    req = SessionCreate(name="left1", agent="shell", repo=str(repo), isolation="none")
    view = await service.create(req)
    assert view.pid is not None and view.supervisor_pid is not None
    await service.send("left1", "(trap '' HUP; exec sleep 7777) & echo started", enter=True)
    with anyio.fail_after(20):
        while True:  # until the job runs
            tree = process_tree(view.pid)
            if _runs_sleep(tree):
                return [view.supervisor_pid, *tree]
            await anyio.sleep(0.05)


async def test_leftover_sessions_of_a_home_are_stopped_others_kept(
    short_home: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "r")
    mine = await _session_with_a_stubborn_job(short_home, repo)
    # A home whose path starts like this one's is somebody else's.
    other_home = Path(str(short_home) + "x")
    await anyio.Path(other_home).mkdir()
    try:
        theirs = await _session_with_a_stubborn_job(other_home, repo)
        assert supervisors(short_home) and supervisors(other_home)
        stop_sessions(short_home)  # what the fixture does after the test
        await _until_dead(mine)
        assert all(_alive(p) for p in theirs)
    finally:
        stop_sessions(other_home)
        await _until_dead(theirs)
        await anyio.to_thread.run_sync(shutil.rmtree, other_home, True)
