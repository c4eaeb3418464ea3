"""``hivecell tasks retry ID``: a new local run of an ended task, linked by retry_of."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.store import TaskRecord, TaskSettings, TaskStore, default_database_url
from tests.agent.helpers import act, call, finish
from tests.cli.test_cli_run import hivecell
from tests.server.helpers import write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COPY = "tr a-z A-Z < /shared/inbox/notes.txt > /shared/outbox/shout.txt"


async def _ended_task(home: Path, status: str) -> str:
    async with TaskStore(default_database_url(home)) as store:
        settings = TaskSettings(max_steps=5, timeout_s=300, network="offline")
        record = TaskRecord(description="shout the notes", provider="scripted", settings=settings)
        record = await store.create_task(record)
        await store.update(record.id, status=status, success=False)
    inbox = home / "inputs" / record.id  # what the server keeps of a task's uploads
    inbox.mkdir(parents=True)
    (inbox / "notes.txt").write_text("three apples\n")
    return record.id


async def test_retry_a_cancelled_task_runs_it_again_with_its_files(home: Path) -> None:
    async with ScriptedLLMServer([act(call("run_shell", command=COPY)), *finish()]) as llm:
        write_provider(home, llm.base_url)
        original = await _ended_task(home, "cancelled")
        done = await hivecell(home, "tasks", "retry", original, "--json")
        assert done.returncode == 0, done.stderr.decode()
        result = json.loads(done.stdout)
        assert result["status"] == "completed" and result["artifacts"] == ["shout.txt"]
        assert (Path(result["output_dir"]) / "shout.txt").read_text() == "THREE APPLES\n"
        async with TaskStore(default_database_url(home)) as store:
            again = await store.get(result["task_id"])
        assert again.retry_of == original and again.id != original
        assert again.settings.max_steps == 5
        # A completed task is not retried.
        refused = await hivecell(home, "tasks", "retry", again.id)
        assert refused.returncode != 0 and b"can be retried" in refused.stderr
