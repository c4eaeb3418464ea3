"""SQLite specifics: file placement, WAL, and recovery after a killed process."""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path

import anyio
import pytest

from hivecell.store import TaskStatus, TaskStore, default_database_url

pytestmark = pytest.mark.anyio

# A runner that starts a task and dies without any chance to clean up.
_CRASHING_RUNNER = """
import os, signal, sys, anyio
from hivecell.store import TaskRecord, TaskStore

async def main():
    store = await TaskStore(sys.argv[1]).open()
    record = await store.create_task(TaskRecord(description="doomed", status="running"))
    print(record.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

anyio.run(main)
"""


async def test_default_url_creates_home_and_uses_wal(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    async with TaskStore(default_database_url(home)):
        pass
    database = home / "hivecell.db"
    assert database.is_file()
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_killed_runner_leaves_task_interrupted(tmp_path: Path) -> None:
    url = default_database_url(tmp_path)
    async with TaskStore(url):
        pass  # migrate first so the child's startup is quick
    with anyio.fail_after(60):
        child = await anyio.run_process([sys.executable, "-c", _CRASHING_RUNNER, url], check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr
    task_id = child.stdout.decode().strip()
    async with TaskStore(url) as restarted:
        assert (await restarted.get(task_id)).status == TaskStatus.RUNNING
        assert await restarted.mark_interrupted() == [task_id]
        assert (await restarted.get(task_id)).status == TaskStatus.INTERRUPTED
