"""What a crew needs from whoever runs its tasks: desktops, and one TODO run as a task.

Two implementations: the server's (tasks queued in its task manager, so each TODO is an
ordinary task with a live view, takeover and trace) and the CLI's (``TaskService`` in
process, like ``hivecell run``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from hivecell.agent.hosttools import HostTool
from hivecell.agent.runner import RunSettings
from hivecell.agent.service import TaskRequest
from hivecell.sandbox.base import SandboxInfo
from hivecell.store import TaskRecord


class TodoRun(BaseModel):
    """How one TODO's task ended."""

    task_id: str
    status: str
    success: bool
    summary: str
    cost_usd: float
    output_dir: str | None

    @classmethod
    def of(cls, record: TaskRecord) -> TodoRun:
        """From the task's final record."""
        return cls(
            task_id=record.id,
            status=str(record.status),
            success=bool(record.success),
            summary=record.summary or record.error or str(record.status),
            cost_usd=record.cost_usd,
            output_dir=record.output_dir,
        )

    @classmethod
    def failed(cls, task_id: str, reason: str) -> TodoRun:
        """Its task could not run (or broke): the TODO failed, saying why."""
        return cls(
            task_id=task_id, status="failed", success=False, summary=reason, cost_usd=0.0,
            output_dir=None,
        )  # fmt: skip


def todo_request(
    sandbox: SandboxInfo, description: str, settings: RunSettings, files: list[Path]
) -> TaskRequest:
    """A TODO's task: in the agent's desktop, with the crew's input files."""
    return TaskRequest(
        description=description,
        files=files,
        settings=settings,
        network=sandbox.spec.network,
        network_allow=sandbox.spec.network_allow,
        resolution=(sandbox.spec.width, sandbox.spec.height),
        sandbox_id=sandbox.id,
    )


class Desk(Protocol):
    async def open_desktop(self, name: str) -> SandboxInfo:
        """A running sandbox for the agent ``name`` (waits for capacity)."""
        ...

    async def run_todo(
        self,
        sandbox: SandboxInfo,
        description: str,
        settings: RunSettings,
        tools: list[HostTool],
        on_task: Callable[[str], Awaitable[None]],
    ) -> TodoRun:
        """Run one task in ``sandbox`` to its end; ``on_task`` gets its id once it exists
        (awaited, shielded: the crew stores the link before the task runs).
        Cancelled: the task is cancelled and waited for, then the cancel goes on."""
        ...

    async def cancel_task(self, task_id: str) -> None:
        """Stop one running TODO's task (a person cancelled the TODO)."""
        ...

    async def close_desktop(self, sandbox_id: str) -> None: ...
