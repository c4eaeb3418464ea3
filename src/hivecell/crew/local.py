"""The in-process desk: each TODO runs through ``TaskService`` here, like ``hivecell run``.

Used by ``hivecell crew``; the server has its own desk over its task manager.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import anyio

from hivecell.agent.hosttools import HostTool
from hivecell.agent.llm import Model
from hivecell.agent.runner import RunSettings, TaskRunner
from hivecell.agent.service import TaskResult, TaskService
from hivecell.crew.desk import TodoRun, todo_request
from hivecell.crew.models import Crew, CrewRequest
from hivecell.crew.records import DESKTOP_PREFIX, new_crew
from hivecell.crew.runner import CrewRunner, EventSink
from hivecell.sandbox.base import SandboxInfo, SandboxProvider, SandboxSpec, create_owned
from hivecell.sandbox.transfer import TransferLimits
from hivecell.store import TaskStore

SANDBOX_PREFIX = DESKTOP_PREFIX


class TaskWatch(Protocol):
    """Someone following one TODO's task (the terminal: questions and approvals)."""

    async def on_event(self, kind: str, data: dict[str, Any]) -> None: ...

    def attach(self, runner: TaskRunner) -> None: ...


class LocalDesk:
    def __init__(
        self,
        crew_id: str,
        *,
        provider: SandboxProvider,
        service: TaskService,
        spec: SandboxSpec,
        files: list[Path],
        watch: Callable[[str], TaskWatch] | None = None,
    ) -> None:
        """``watch``: makes a follower for each TODO's task, given its id."""
        self._crew_id = crew_id
        self._watch = watch
        self._provider = provider
        self._service = service
        self._spec = spec
        self._files = files
        self._runners: dict[str, TaskRunner] = {}

    async def open_desktop(self, name: str) -> SandboxInfo:
        named = self._spec.model_copy(update={"name": f"{SANDBOX_PREFIX}{self._crew_id}-{name}"})
        with anyio.CancelScope(shield=True):  # never a half-made sandbox left behind
            info = await create_owned(self._provider, named)
        return info

    async def close_desktop(self, sandbox_id: str) -> None:
        await self._provider.destroy(sandbox_id)

    async def cancel_task(self, task_id: str) -> None:
        runner = self._runners.get(task_id)
        if runner is not None:
            runner.control.cancel()

    async def run_todo(
        self,
        sandbox: SandboxInfo,
        description: str,
        settings: RunSettings,
        tools: list[HostTool],
        on_task: Callable[[str], Awaitable[None]],
    ) -> TodoRun:
        request = todo_request(sandbox, description, settings, self._files)
        record = await self._service.create(request)
        with anyio.CancelScope(shield=True):  # a cancel here would leave the task never run
            await on_task(record.id)
        attached, ended = anyio.Event(), anyio.Event()
        runs: list[TodoRun] = []
        watch = self._watch(record.id) if self._watch is not None else None

        def attach(runner: TaskRunner) -> None:
            self._runners[record.id] = runner
            if watch is not None:
                watch.attach(runner)
            attached.set()

        async def run() -> None:
            # Shielded: a cancel reaches the task through its control (below), so it ends
            # cancelled with its trace and record written, not torn down midway.
            with anyio.CancelScope(shield=True):
                try:
                    result = await self._service.run(
                        record,
                        request,
                        on_event=watch.on_event if watch is not None else None,
                        on_runner=attach,
                        host_tools=tools,
                    )
                    runs.append(_todo_run(record.id, result))
                except Exception as exc:  # recorded failed by the service: the TODO failed
                    runs.append(TodoRun.failed(record.id, f"the task failed: {exc}"))
                finally:
                    self._runners.pop(record.id, None)
                    attached.set()
                    ended.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                await ended.wait()
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await attached.wait()  # a task still starting has no control yet
                    await self.cancel_task(record.id)
                    await ended.wait()
                raise
        return runs[0]


def _todo_run(task_id: str, result: TaskResult) -> TodoRun:
    return TodoRun(
        task_id=task_id,
        status=result.status,
        success=result.success,
        summary=result.summary,
        cost_usd=result.cost_usd,
        output_dir=result.output_dir,
    )


async def run_here(
    request: CrewRequest,
    *,
    home: Path,
    provider: SandboxProvider,
    store: TaskStore,
    llm: Model,
    on_event: EventSink | None = None,
    limits: TransferLimits | None = None,
    started: Callable[[CrewRunner], None] | None = None,
    watch: Callable[[str], TaskWatch] | None = None,
) -> Crew:
    """One crew from plan to summary in this process (``hivecell crew``)."""
    model, provider_name = llm.config.model, llm.config.name
    crew = await new_crew(store, home, request, model=model, provider=provider_name)
    service = TaskService(
        home=home,
        provider=provider,
        store=store,
        llm=llm,
        model=model,
        provider_name=provider_name,
        transfer_limits=limits,
    )
    spec = SandboxSpec(
        width=request.resolution[0],
        height=request.resolution[1],
        network=request.network,
        network_allow=request.network_allow,
    )
    desk = LocalDesk(
        crew.id, provider=provider, service=service, spec=spec, files=request.files, watch=watch
    )
    runner = CrewRunner(
        crew, settings=request.settings, desk=desk, llm=llm, store=store, on_event=on_event,
        limits=limits,
    )  # fmt: skip
    if started is not None:
        started(runner)
    return await runner.run()
