"""The task record callers see: plain pydantic models, never ORM rows."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING_FOR_USER = "waiting_for_user"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    MAX_STEPS_REACHED = "max_steps_reached"
    BUDGET_EXCEEDED = "budget_exceeded"
    INTERRUPTED = "interrupted"
    GUEST_LOST = "guest_lost"  # the sandbox died or its guest agent stayed unreachable


# A process owns a task while it is in one of these; if that process dies the task is interrupted.
ACTIVE_STATUSES: frozenset[TaskStatus] = frozenset(
    {TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.WAITING_FOR_USER}
)
# Final: the store refuses to move a task out of these. INTERRUPTED is not final so a task can
# be resumed or re-queued after a crash.
TERMINAL_STATUSES: frozenset[TaskStatus] = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
        TaskStatus.TIMED_OUT,
        TaskStatus.MAX_STEPS_REACHED,
        TaskStatus.BUDGET_EXCEEDED,
        TaskStatus.GUEST_LOST,
    }
)
# Statuses that end a run: entering one stamps finished_at.
ENDED_STATUSES: frozenset[TaskStatus] = TERMINAL_STATUSES | {TaskStatus.INTERRUPTED}
# What a retry (a new task linked by retry_of) may be made from: runs that did not finish.
RETRYABLE_STATUSES: tuple[TaskStatus, ...] = (
    TaskStatus.INTERRUPTED,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
    TaskStatus.GUEST_LOST,
)


def new_task_id() -> str:
    """Short, URL-safe, unguessable enough to not collide in one installation."""
    return "t-" + secrets.token_hex(5)


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC, so ordering never mixes local and UTC times."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UTCDatetime = Annotated[datetime, AfterValidator(as_utc)]


class TaskSettings(BaseModel):
    """Per-task limits and switches. Unknown keys are kept so the runner can grow new ones."""

    model_config = ConfigDict(extra="allow")

    max_steps: int | None = None
    timeout_s: float | None = None
    network: str | None = Field(None, description="offline | nat")
    network_allow: list[str] = Field(
        default_factory=list, description="nat: the domains and CIDRs the sandbox may reach"
    )
    disabled_tools: list[str] = Field(default_factory=list)
    tool_domains: list[str] | None = Field(None, description="tool domains offered")
    max_cost_usd: float | None = Field(None, description="cost budget in USD")
    max_tokens: int | None = Field(None, description="token budget")
    approve_tools: list[str] | None = Field(None, description="calls that wait for approval")
    inbox_writable: bool | None = None
    desktop: str | None = Field(None, description="full | minimal")


class TaskRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str = Field(default_factory=new_task_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str
    status: TaskStatus = TaskStatus.QUEUED
    success: bool | None = None
    summary: str | None = None
    error: str | None = None
    model: str | None = None
    provider: str | None = None
    sandbox_id: str | None = None
    # Which process runs the task ("host:pid:start-ticks"); the store fills it in.
    owner: str | None = None
    created_at: UTCDatetime = Field(default_factory=utcnow)
    started_at: UTCDatetime | None = None
    finished_at: UTCDatetime | None = None
    steps: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    trace_dir: str | None = None
    output_dir: str | None = None
    # Paths of files the task produced, relative to output_dir.
    artifacts: list[str] = Field(default_factory=list)
    settings: TaskSettings = Field(default_factory=TaskSettings)
    # The task this one retries (POST /tasks/{id}/retry, `hivecell tasks retry`).
    retry_of: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="python") | {"settings": self.settings.model_dump(mode="json")}


# Fields update() may not touch: identity and creation time are fixed at insert.
IMMUTABLE_FIELDS = frozenset({"id", "created_at"})
