"""The trace record: one JSON object per line of trace.jsonl, used for writing and reading."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

TRACE_FILE = "trace.jsonl"
SCREENSHOTS_DIR = "screenshots"
CONVERSATION_FILE = "conversation.json"
# Bare file names only: a trace read from disk must not point an export outside screenshots/.
SCREENSHOT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class StepKind(StrEnum):
    LLM = "llm"
    TOOL = "tool"
    OBSERVATION = "observation"
    USER = "user"
    STATUS = "status"
    ERROR = "error"
    TRANSFER = "transfer"  # after the run: what the outbox copy took and left out
    INTERVENTION = "intervention"  # a person (or the system on their behalf) acted on the task


class Tokens(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: int = Field(default=0, ge=0)
    completion: int = Field(default=0, ge=0)


class Actor(BaseModel):
    """Who intervened. The server has one shared token, so there are no user names: ``kind``
    says which client acted (``dashboard``: a browser with the login cookie; ``api``: a
    bearer token; ``cli``: the terminal of ``hivecell run``; ``system``: the server itself,
    such as an approval denied when its timeout ran out), ``address`` where from."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dashboard", "api", "cli", "system"]
    address: str | None = Field(default=None, max_length=200)

    def label(self) -> str:
        return self.kind + (f" ({self.address})" if self.address else "")


def _now() -> datetime:
    return datetime.now(UTC)


class TraceStep(BaseModel):
    """One event of a task run. Several records may share a step number (llm, then tool)."""

    model_config = ConfigDict(extra="forbid")

    ts: datetime = Field(default_factory=_now)
    step: int = Field(ge=0)
    kind: StepKind
    # What the model said or thought before acting.
    reasoning: str | None = None
    # Free text for user messages, status changes and observations.
    text: str | None = None
    tool: str | None = None
    # Interventions: what was done (pause, takeover, answer, ...) and by whom.
    action: str | None = Field(default=None, max_length=64)
    by: Actor | None = None
    arguments: dict[str, JsonValue] | None = None
    result: JsonValue = None
    error: str | None = None
    screenshot: str | None = Field(default=None, pattern=SCREENSHOT_NAME)
    tokens: Tokens | None = None
    llm_latency_ms: float | None = Field(default=None, ge=0)
    tool_latency_ms: float | None = Field(default=None, ge=0)

    def to_line(self) -> bytes:
        # Unset fields are left out to keep long traces small; reading fills the defaults back.
        return self.model_dump_json(exclude_none=True).encode() + b"\n"
