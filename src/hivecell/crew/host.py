"""Where a server's crews run: a task group as long-lived as the server, and the live
runners by id (for cancel and a person's edits)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup

from hivecell.crew.runner import CrewRunner
from hivecell.errors import InvalidParams

log = logging.getLogger(__name__)


class CrewHost:
    def __init__(self) -> None:
        self._group: TaskGroup | None = None
        self._live: dict[str, CrewRunner] = {}
        self._idle = anyio.Event()
        self._idle.set()

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Host crews until cancelled; on the way out every crew is cancelled and waited for
        (their tasks end cancelled, their desktops go)."""
        try:
            async with anyio.create_task_group() as tg:
                self._group = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._group = None

    def start(
        self, runner: CrewRunner, cleanup: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Run ``runner``; ``cleanup`` (closing its model client) once it has ended."""
        if self._group is None:
            raise InvalidParams("the server is stopping: no new crew starts", op="crew.start")
        self._live[runner.crew.id] = runner
        self._idle = anyio.Event()
        self._group.start_soon(self._run, runner, cleanup, name=f"crew {runner.crew.id}")

    async def _run(self, runner: CrewRunner, cleanup: Callable[[], Awaitable[None]] | None) -> None:
        try:
            await runner.run()
        except Exception:  # a bug in one crew must not end the others (or the server)
            log.exception("crew %s failed", runner.crew.id)
        finally:
            with anyio.CancelScope(shield=True):
                if cleanup is not None:
                    await cleanup()
            self._live.pop(runner.crew.id, None)
            if not self._live:
                self._idle.set()

    async def stop(self, reason: str) -> None:
        """Interrupt every crew (its tasks are cancelled, its desktops removed) and wait
        until they have all ended: before the task manager stops."""
        for runner in list(self._live.values()):
            runner.interrupt(reason)
        await self._idle.wait()

    def get(self, crew_id: str) -> CrewRunner | None:
        return self._live.get(crew_id)

    def live_ids(self) -> set[str]:
        return set(self._live)
