"""The server's desk for crews: desktops admitted by capacity like tasks' own, and each TODO
an ordinary task in the task manager (live view, takeover, approvals, trace, retry)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path

import anyio

from hivecell.agent.hosttools import HostTool
from hivecell.agent.llm import ProviderConfig, make_model
from hivecell.agent.runner import RunSettings
from hivecell.agent.service import TaskService
from hivecell.crew.desk import TodoRun, todo_request
from hivecell.crew.local import SANDBOX_PREFIX
from hivecell.errors import HivecellError
from hivecell.sandbox.base import SandboxInfo, SandboxSpec, create_owned
from hivecell.server.app import ServerState
from hivecell.trace import Actor

CREW = Actor(kind="system")


class ServerDesk:
    def __init__(
        self,
        state: ServerState,
        crew_id: str,
        *,
        llm: ProviderConfig,
        spec: SandboxSpec,
        files: list[Path],
    ) -> None:
        self._state = state
        self._crew_id = crew_id
        self._llm = llm
        self._spec = spec
        self._files = files

    async def open_desktop(self, name: str) -> SandboxInfo:
        """A warm desktop of the crew's shape when the pool has one (a restart removes pool
        sandboxes by their own name), else a new one named for the crew."""
        state = self._state
        info = await state.pool.take(self._spec)
        if info is None:
            info = await self._new_desktop(name)
        state.hub.publish(
            "sandbox.created", {"sandbox_id": info.id, "task_id": None, "crew_id": self._crew_id}
        )
        return info

    async def _new_desktop(self, name: str) -> SandboxInfo:
        state = self._state
        spec = self._spec.model_copy(update={"name": f"{SANDBOX_PREFIX}{self._crew_id}-{name}"})
        info: SandboxInfo | None = None
        async with state.capacity.admitted(spec, wait=True, make_room=state.pool.evict_one):
            with anyio.CancelScope(shield=True):  # a cancel during boot leaves no half box
                info = await create_owned(state.provider, spec)
        assert info is not None  # the shielded block always sets it or raises
        return info

    async def close_desktop(self, sandbox_id: str) -> None:
        await self._state.manager.destroy_sandbox(sandbox_id)

    async def cancel_task(self, task_id: str) -> None:
        with suppress(HivecellError):  # it ended meanwhile
            await self._state.manager.control(task_id, "cancel", by=CREW)

    async def run_todo(
        self,
        sandbox: SandboxInfo,
        description: str,
        settings: RunSettings,
        tools: list[HostTool],
        on_task: Callable[[str], Awaitable[None]],
    ) -> TodoRun:
        state = self._state
        request = todo_request(sandbox, description, settings, self._files)
        client = make_model(self._llm)
        try:
            service = TaskService(
                home=state.config.home,
                provider=state.provider,
                store=state.store,
                llm=client,
                model=self._llm.model,
                provider_name=self._llm.name,
                transfer_limits=state.config.transfer_limits,
            )
            record = await service.create(request)
            if state.prefs.output_dir:
                output = str(Path(state.prefs.output_dir) / record.id)
                record = await state.store.update(record.id, output_dir=output)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await client.aclose()
            raise
        with anyio.CancelScope(shield=True):  # a cancel here would leave the task queued forever
            await on_task(record.id)
        state.manager.enqueue(record, request, service, client, host_tools=tools)  # owns client
        try:
            final = await state.manager.wait_ended(record.id)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.cancel_task(record.id)
                await state.manager.wait_ended(record.id)
            raise
        return TodoRun.of(final)
