"""Interventions in the trace: who paused, took over, answered, cancelled... and with what.

A running task's runner writes them in order with its steps (``TaskRunner.intervened``).
Before the runner exists (queued, booting) the manager keeps them on the job and hands them
over when it does; a task that never gets a runner (cancelled first) has them written here,
as does a task that already ended (retry), when no runner can write to its trace any more.

Who: the server has a single shared token and no user names, so the actor is the kind of
client (``dashboard``: the browser's login cookie; ``api``: a bearer token or the
WebSocket ``?token=``) and the address it came from (see ``trace.Actor``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import HTTPConnection

from hivecell.agent.control import Extension
from hivecell.server.auth import COOKIE
from hivecell.store import TaskRecord
from hivecell.trace import Actor, StepKind, TraceWriter


@dataclass
class Note:
    action: str
    by: Actor
    arguments: dict[str, Any] = field(default_factory=dict)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))


def actor_of(conn: HTTPConnection) -> Actor:
    """The client behind a request: the dashboard when the login cookie authenticated it (a
    bearer header wins, as in ``auth.presented_token``), otherwise an API client."""
    bearer = conn.headers.get("authorization", "").lower().startswith("bearer ")
    browser = not bearer and (COOKIE in conn.cookies or "origin" in conn.headers)
    address = conn.client.host if conn.client else None
    return Actor(kind="dashboard" if browser else "api", address=address)


def arguments_of(action: str, text: str, extension: Extension | None) -> dict[str, Any]:
    """What an action carried, as the trace shows it."""
    arguments: dict[str, Any] = {}
    if text:
        key = {"answer": "answer", "deny": "reason"}.get(action, "text")
        arguments[key] = text
    if extension is not None:
        arguments |= extension.model_dump(exclude_none=True)
    return arguments


async def write_notes(record: TaskRecord, notes: list[Note], step: int = 0) -> None:
    """Write interventions of a task no runner writes for (never started, or ended)."""
    if not notes or record.trace_dir is None:
        return
    async with TraceWriter(Path(str(record.trace_dir))) as trace:
        for note in notes:
            await trace.record(
                step,
                StepKind.INTERVENTION,
                action=note.action,
                by=note.by,
                arguments=note.arguments or None,
                ts=note.ts,
            )
    notes.clear()
