"""Agent tasks behind the MCP task tools: what a backend offers, and the in-process one.

``hivecell mcp`` (stdio) runs tasks in its own process with the same ``TaskService`` as
``hivecell run``, recorded in the same store, so ``hivecell tasks`` lists them. The server
(``hivecell up``) plugs in its task manager instead (``server/mcp.py``), so tasks appear on
the dashboard. Both answer with the same ``TaskView``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.control import Control
from hivecell.agent.llm import Model, ProviderConfig, make_model
from hivecell.agent.runner import FINAL, RunSettings, TaskRunner
from hivecell.agent.service import TaskRequest, TaskService
from hivecell.errors import InvalidParams
from hivecell.mcp.reaper import Reaper
from hivecell.sandbox.base import SandboxProvider
from hivecell.sandbox.transfer import TransferLimits
from hivecell.store import TaskRecord, TaskStore

ResolveLLM = Callable[[str | None, str | None], Awaitable[ProviderConfig]]
log = logging.getLogger(__name__)
CANCEL_GRACE_S = 30.0  # at disconnect: how long running tasks get to end cleanly


class TaskOrder(BaseModel):
    """What ``task_run`` asks for."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1, max_length=50_000)
    files: list[Path] = Field(default_factory=list)
    provider: str | None = None
    model: str | None = None
    max_steps: int | None = Field(None, ge=1, le=10_000)


class TaskView(BaseModel):
    """A task as ``task_status`` shows it: the record plus what only the live run knows."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: str
    description: str
    success: bool | None
    summary: str | None
    error: str | None
    steps: int
    pending: dict[str, Any] | None = Field(
        description="the question, choice or approval the task waits for (answer it with "
        "task_answer), or null"
    )
    artifacts: list[str]
    output_dir: str | None
    trace_dir: str | None
    sandbox_id: str | None
    model: str | None

    @property
    def ended(self) -> bool:
        return self.status in FINAL


def view_of(
    record: TaskRecord, *, steps: int | None = None, pending: Any = None, status: str | None = None
) -> TaskView:
    """``status``: what the live run says now (the record follows a moment later)."""
    return TaskView(
        id=record.id,
        status=status or str(record.status),
        description=record.description,
        success=record.success,
        summary=record.summary,
        error=record.error,
        steps=record.steps if steps is None else steps,
        pending=pending,
        artifacts=list(record.artifacts),
        output_dir=record.output_dir,
        trace_dir=record.trace_dir,
        sandbox_id=record.sandbox_id,
        model=record.model,
    )


class TaskBackend(Protocol):
    async def start(self, order: TaskOrder) -> TaskView: ...

    async def view(self, task_id: str) -> TaskView: ...

    async def answer(self, task_id: str, text: str) -> TaskView: ...

    async def cancel(self, task_id: str) -> TaskView: ...

    def watch(self, task_id: str) -> AsyncIterator[TaskView]:
        """The task's view now and after each change, until it ends (for progress)."""
        ...


def reply(control: Control, text: str) -> None:
    """``task_answer``: the answer to a question or choice; for an approval ``approve`` /
    ``yes`` allows the action and anything else denies it (the text is the reason)."""
    pending = control.pending
    if pending is None:
        raise InvalidParams("the task is not waiting for an answer", op="task_answer")
    if pending.kind != "approval":
        control.answer(text)
    elif text.strip().casefold() in ("approve", "approved", "yes", "y", "allow", "ok"):
        control.approve()
    else:
        control.deny(text)


@dataclass
class _Job:
    record: TaskRecord
    runner: TaskRunner | None = None
    sandbox_id: str | None = None
    cancelled: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)

    def poke(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class LocalTasks:
    """Runs tasks in this process, each in a fresh sandbox, until the session ends (then the
    tasks still running are cancelled and their sandboxes removed)."""

    def __init__(
        self,
        *,
        home: Path,
        provider: SandboxProvider,
        store: TaskStore,
        resolve_llm: ResolveLLM,
        transfer_limits: TransferLimits | None = None,
        reaper: Reaper | None = None,
    ) -> None:
        """``reaper``: told each task's sandbox, so a killed server leaves none behind."""
        self._home = home
        self._reaper = reaper
        self._provider = provider
        self._store = store
        self._resolve_llm = resolve_llm
        self._limits = transfer_limits
        self._jobs: dict[str, _Job] = {}
        self._tg: TaskGroup | None = None

    async def __aenter__(self) -> LocalTasks:
        self._tg = await anyio.create_task_group().__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._tg is not None
        running = [job for job in self._jobs.values() if not job.done.is_set()]
        for job in running:  # ended as cancelled, their sandboxes removed by the service
            self._cancel(job)
        with anyio.move_on_after(CANCEL_GRACE_S, shield=True):
            for job in running:
                await job.done.wait()
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(et, e, tb)

    async def start(self, order: TaskOrder) -> TaskView:
        assert self._tg is not None, "use `async with LocalTasks(...)`"
        await _check_files(order.files)
        config = await self._resolve_llm(order.provider, order.model)
        client = make_model(config)
        service = TaskService(
            home=self._home,
            provider=self._provider,
            store=self._store,
            llm=client,
            model=config.model,
            provider_name=config.name,
            transfer_limits=self._limits,
        )
        request = _request(order)
        try:
            record = await service.create(request)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await client.aclose()
            raise
        job = self._jobs[record.id] = _Job(record)
        self._tg.start_soon(self._run, job, service, client, request, name=f"task {record.id}")
        return view_of(record)

    async def _run(
        self, job: _Job, service: TaskService, client: Model, request: TaskRequest
    ) -> None:
        async def on_event(kind: str, data: dict[str, Any]) -> None:
            if job.sandbox_id is None and self._reaper is not None:
                job.sandbox_id = (await self._store.get(job.record.id)).sandbox_id
                if job.sandbox_id is not None:
                    await self._reaper.adopt(job.sandbox_id)
            job.poke()

        try:
            async with client:
                await service.run(job.record, request, on_event=on_event, on_runner=job_attach(job))
        except Exception as exc:  # the service recorded the failure on the task
            log.info("task %s failed: %s", job.record.id, exc)
        finally:
            job.done.set()
            job.poke()
            if job.sandbox_id is not None and self._reaper is not None:
                with anyio.CancelScope(shield=True):  # the service removed it
                    await self._reaper.release(job.sandbox_id)

    async def view(self, task_id: str) -> TaskView:
        record = await self._store.get(task_id)
        job = self._jobs.get(task_id)
        if job is None or job.runner is None or job.done.is_set():
            return view_of(record)
        runner = job.runner
        pending = runner.control.pending.as_dict() if runner.control.pending else None
        status = runner.status if runner.status not in ("queued", *FINAL) else None
        return view_of(record, steps=runner.steps, pending=pending, status=status)

    async def answer(self, task_id: str, text: str) -> TaskView:
        job = await self._live(task_id, "task_answer")
        if job.runner is None:
            raise InvalidParams("the task is not waiting for an answer", op="task_answer")
        reply(job.runner.control, text)
        return await self.view(task_id)

    async def cancel(self, task_id: str) -> TaskView:
        self._cancel(await self._live(task_id, "task_cancel"))
        return await self.view(task_id)

    async def watch(self, task_id: str) -> AsyncIterator[TaskView]:
        job = self._jobs.get(task_id)
        while True:
            changed = job.changed if job else None
            view = await self.view(task_id)
            yield view
            if view.ended or changed is None:
                return
            await changed.wait()

    async def _live(self, task_id: str, op: str) -> _Job:
        record = await self._store.get(task_id)  # unknown ids: task_not_found
        job = self._jobs.get(task_id)
        if job is None or job.done.is_set():
            raise InvalidParams(
                f"task {task_id} is {record.status}, not running in this MCP session: "
                "only the session that started a task can steer it",
                op=op,
                context={"id": task_id, "status": str(record.status)},
            )
        return job

    def _cancel(self, job: _Job) -> None:
        job.cancelled = True
        if job.runner is not None:
            job.runner.control.cancel()


async def _check_files(files: list[Path]) -> None:
    """Refused before anything is recorded: a task that cannot get its files never starts."""
    for path in files:
        if not path.is_absolute() or not await anyio.Path(path).is_file():
            raise InvalidParams(
                f"files: {str(path)!r} is not an absolute path to a file on this host",
                op="task_run",
                context={"path": str(path)},
            )


def job_attach(job: _Job) -> Callable[[TaskRunner], None]:
    def attach(runner: TaskRunner) -> None:
        job.runner = runner
        if job.cancelled:  # asked for while the sandbox was booting
            runner.control.cancel()

    return attach


def _request(order: TaskOrder) -> TaskRequest:
    # Nobody may be there to extend a limit or approve an action: limits end the task, and an
    # approval waits as a pending question task_answer can answer.
    settings = RunSettings(pause_at_limits=False)
    if order.max_steps is not None:
        settings = settings.model_copy(update={"max_steps": order.max_steps})
    return TaskRequest(description=order.description, files=order.files, settings=settings)
