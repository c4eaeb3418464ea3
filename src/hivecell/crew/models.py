"""A crew as it is stored and shown: the goal, the whiteboard (TODOs and notes), the agents."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.runner import RunSettings
from hivecell.sandbox.base import NetworkMode

CrewStatus = Literal[
    "planning", "running", "completed", "partially_completed", "failed", "cancelled"
]
ACTIVE: frozenset[str] = frozenset({"planning", "running"})
TodoStatus = Literal["pending", "running", "done", "failed", "cancelled"]
TODO_ENDED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
MAX_AGENTS = 8
MAX_TODOS = 50


def new_crew_id() -> str:
    return "c-" + secrets.token_hex(5)


def now() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Todo(_Strict):
    id: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_.-]+$")
    title: str = Field(min_length=1, max_length=300)
    detail: str = Field("", max_length=4000)
    depends_on: list[str] = Field(default_factory=list)
    status: TodoStatus = "pending"
    agent: str | None = None
    task_id: str | None = None
    result: str = ""


class Note(_Strict):
    by: str  # an agent's name, or "person"
    text: str = Field(min_length=1, max_length=4000)
    ts: datetime = Field(default_factory=now)


class Member(_Strict):
    """One agent of the crew: its desktop (kept across its TODOs) and the tasks it ran."""

    name: str
    sandbox_id: str | None = None
    # False from the moment its desktop starts closing: a page loaded meanwhile still finds
    # the sandbox listed, but must not ask for a view it would be refused.
    desktop_open: bool = False
    task_ids: list[str] = Field(default_factory=list)
    todo: str | None = None  # the TODO it works on now
    cost_usd: float = 0.0


class CrewRequest(_Strict):
    """What a person asks for: one goal, how many agents, and the agents' task settings."""

    goal: str = Field(min_length=1, max_length=20_000)
    agents: int = Field(3, ge=1, le=MAX_AGENTS)
    files: list[Path] = Field(default_factory=list)
    settings: RunSettings = Field(default_factory=RunSettings)
    network: NetworkMode = "offline"
    network_allow: list[str] = Field(default_factory=list)
    resolution: tuple[int, int] = (1280, 800)
    max_cost_usd: float | None = Field(None, gt=0, description="for the whole crew")


class Crew(_Strict):
    id: str = Field(default_factory=new_crew_id)
    goal: str
    agents: int
    status: CrewStatus = "planning"
    model: str | None = None
    provider: str | None = None
    todos: list[Todo] = Field(default_factory=list)
    notes: list[Note] = Field(default_factory=list)
    members: list[Member] = Field(default_factory=list)
    summary: str = ""
    error: str | None = None
    cost_usd: float = 0.0
    max_cost_usd: float | None = None
    files: list[str] = Field(default_factory=list, description="input file names")
    folder: str = Field("", description="host folder of the crew: shared/ and outputs/")
    created_at: datetime = Field(default_factory=now)
    finished_at: datetime | None = None

    @property
    def outputs_dir(self) -> Path:
        return Path(self.folder) / "outputs"

    @property
    def shared_dir(self) -> Path:
        return Path(self.folder) / "shared"

    def todo(self, todo_id: str) -> Todo:
        for todo in self.todos:
            if todo.id == todo_id:
                return todo
        raise KeyError(todo_id)

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)
