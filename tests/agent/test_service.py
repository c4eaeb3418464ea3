"""TaskService end to end in-process: sandbox, inbox, runner, outbox, trace and task record."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm import LLMClient
from hivecell.agent.llm.script import Reply, ScriptItem
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.agent.runner import TaskRunner
from hivecell.agent.service import TaskRequest, TaskService
from hivecell.errors import NotFound
from hivecell.sandbox.base import SandboxInfo
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.store import InvalidTransition, TaskStore
from tests.agent.helpers import act, call, finish, provider_config, system_prompt, tool_results

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@asynccontextmanager
async def service(
    home: Path, provider: LocalProvider, store: TaskStore, steps: list[ScriptItem]
) -> AsyncIterator[tuple[TaskService, ScriptedLLMServer]]:
    async with (
        ScriptedLLMServer(steps) as server,
        LLMClient(provider_config(server.base_url)) as llm,
    ):
        yield TaskService(home=home, provider=provider, store=store, llm=llm, model="m"), server


async def test_inbox_files_are_listed_and_outbox_files_collected(
    home: Path, provider: LocalProvider, store: TaskStore, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    await anyio.Path(notes).write_text("three apples\n")
    command = (
        "cat /shared/inbox/notes.txt > /shared/outbox/copy.txt"
        " && mkdir /shared/outbox/sub && echo deep > /shared/outbox/sub/deep.txt"
    )
    steps = [act(call("run_shell", command=command)), *finish("copied")]
    async with service(home, provider, store, steps) as (svc, server):
        request = TaskRequest(description="copy the notes", files=[notes])
        record = await svc.create(request)
        result = await svc.run(record, request)
    assert (result.status, result.success, result.summary) == ("completed", True, "copied")
    assert "/shared/inbox/notes.txt" in system_prompt(server.chat_requests[0])
    assert tool_results(server.chat_requests[1])[0]["exit_code"] == 0
    output = anyio.Path(result.output_dir)
    assert output == anyio.Path(home / "outputs" / record.id)
    assert sorted(result.artifacts) == ["copy.txt", "sub/deep.txt"]
    assert await (output / "copy.txt").read_text() == "three apples\n"
    saved = await store.get(record.id)
    assert saved.status == "completed" and saved.success is True
    assert saved.artifacts == result.artifacts and saved.steps == 2
    assert saved.prompt_tokens == 30 and saved.sandbox_id == result.sandbox_id
    assert await provider.list() == []  # the task's own sandbox is gone


async def test_pause_is_recorded_in_the_store(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    runners: list[TaskRunner] = []
    paused = anyio.Event()

    def first(request: dict[str, Any]) -> Reply:
        runners[0].control.pause()  # takes effect once step 1 is done
        return act(call("wait", seconds=0))

    async def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "status" and data["status"] == "paused":
            paused.set()

    async def person(task_id: str) -> None:
        await paused.wait()
        saved = await store.get(task_id)
        assert (saved.status, saved.error) == ("paused", "paused by the person")
        runners[0].control.resume()

    async with service(home, provider, store, [first, *finish()]) as (svc, _):
        request = TaskRequest(description="pause me")
        record = await svc.create(request)
        async with anyio.create_task_group() as tg:
            tg.start_soon(person, record.id)
            result = await svc.run(record, request, on_event=on_event, on_runner=runners.append)
    assert result.status == "completed"
    assert (await store.get(record.id)).status == "completed"


async def test_warm_start_reuses_and_keeps_the_sandbox(
    home: Path, provider: LocalProvider, store: TaskStore, sandbox: SandboxInfo
) -> None:
    async with service(home, provider, store, finish()) as (svc, _):
        request = TaskRequest(description="nothing to do", sandbox_id=sandbox.id)
        result = await svc.run(await svc.create(request), request)
    assert result.status == "completed" and result.sandbox_id == sandbox.id
    assert (await provider.info(sandbox.id)).status == "running"


async def test_a_run_that_breaks_is_recorded_as_failed(
    home: Path, provider: LocalProvider, store: TaskStore, tmp_path: Path
) -> None:
    async with service(home, provider, store, []) as (svc, _):
        request = TaskRequest(description="read a file", files=[tmp_path / "missing.txt"])
        record = await svc.create(request)
        with pytest.raises(NotFound, match=r"missing\.txt"):
            await svc.run(record, request)
    saved = await store.get(record.id)
    assert saved.status == "failed" and saved.success is False
    assert "missing.txt" in (saved.error or "")
    assert await provider.list() == []


async def test_the_record_shows_running_and_its_sandbox_before_the_first_model_request(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    # The "running" write goes on while the runner connects and looks; the model's first
    # request waits for it, so whoever the model's call prompts to look finds it.
    seen: list[tuple[str, str | None]] = []

    def first(request: dict[str, Any]) -> Reply:
        with closing(sqlite3.connect(home / "hivecell.db")) as db:
            row = db.execute("SELECT status, sandbox_id FROM tasks").fetchone()
        seen.append(row)
        return finish()[0]

    async with service(home, provider, store, [first, *finish()[1:]]) as (svc, _):
        request = TaskRequest(description="look")
        record = await svc.create(request)
        result = await svc.run(record, request)
    assert result.status == "completed"
    assert seen == [("running", result.sandbox_id)]


async def test_a_task_finished_while_it_was_dispatched_never_reaches_the_model(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    async with service(home, provider, store, finish()) as (svc, server):
        request = TaskRequest(description="too late")
        record = await svc.create(request)
        await store.update(record.id, status="cancelled")  # a person, at the worst moment
        with pytest.raises(InvalidTransition, match="is cancelled and cannot change status"):
            await svc.run(record, request)
    assert server.chat_requests == []
    assert (await store.get(record.id)).status == "cancelled"
    assert await provider.list() == []
