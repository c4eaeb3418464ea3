"""Tokens and cost of a session's model calls: read from the answers as they pass, kept in
``usage.json`` in the session's folder, checked against the session's budget.

The three wire dialects report usage differently; all are read, whole or streamed:
- chat completions: ``usage.prompt_tokens`` / ``completion_tokens`` (streamed: the last
  chunk, which the relay asks for with ``stream_options.include_usage``);
- responses: ``usage.input_tokens`` / ``output_tokens`` (streamed: ``response.completed``);
- Anthropic messages: ``usage.input_tokens`` (+ cache reads and writes) /
  ``output_tokens`` (streamed: ``message_start`` then ``message_delta``).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivecell.agent.llm.response import Usage
from hivecell.sessions.spec import write_private

USAGE_FILE = "usage.json"
MAX_EVENT = 4 * 1024 * 1024  # one SSE line longer than this is passed on, not read


class SessionUsage(BaseModel):
    """What a session's agent has spent through the proxy so far."""

    model_config = ConfigDict(extra="forbid")

    requests: int = 0
    refused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_requests: int = Field(0, description="answers of a model with no known price")
    last_model: str | None = None
    max_cost_usd: float | None = None


def usage_of(payload: Any) -> Usage | None:
    """The usage in a whole answer or in one streamed event of any dialect, if it has one."""
    if not isinstance(payload, dict):
        return None
    kind = payload.get("type")
    if kind == "response.completed":  # responses, streamed
        return usage_of(payload.get("response"))
    if kind == "message_start":  # anthropic, streamed: the prompt side
        return usage_of(payload.get("message"))
    raw = payload.get("usage")
    if not isinstance(raw, dict):
        return None
    return _normalise(raw)


def _normalise(raw: dict[str, Any]) -> Usage:
    def number(key: str, within: dict[str, Any] = raw) -> int:
        value = within.get(key)
        return value if isinstance(value, int) and value >= 0 else 0

    if "prompt_tokens" in raw or "completion_tokens" in raw:  # chat completions
        details = raw.get("prompt_tokens_details")
        cached = number("cached_tokens", details) if isinstance(details, dict) else 0
        prompt, completion = number("prompt_tokens"), number("completion_tokens")
    else:  # responses and anthropic
        details = raw.get("input_tokens_details")
        cached = number("cached_tokens", details) if isinstance(details, dict) else 0
        cached += number("cache_read_input_tokens")
        prompt = number("input_tokens") + number("cache_read_input_tokens")
        prompt += number("cache_creation_input_tokens")
        completion = number("output_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_prompt_tokens=cached,
    )


class StreamMeter:
    """Reads usage out of a server-sent-event stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._skipping = False  # inside a line too long to read
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_prompt_tokens = 0
        self.seen = False

    def feed(self, data: bytes) -> None:
        self._pending += data
        while (end := self._pending.find(b"\n")) >= 0:
            line = bytes(self._pending[:end]).rstrip(b"\r")
            del self._pending[: end + 1]
            if not self._skipping:
                self._line(line)
            self._skipping = False
        if len(self._pending) > MAX_EVENT:
            self._pending.clear()
            self._skipping = True

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        try:
            event = json.loads(line[5:])
        except ValueError:
            return  # "[DONE]" and anything else that is not JSON
        found = usage_of(event)
        if found is None:
            return
        self.seen = True
        # Anthropic splits one call's usage over two events; the others send it once.
        # Each figure is the largest reported, so a dialect that repeats totals counts once.
        self.prompt_tokens = max(self.prompt_tokens, found.prompt_tokens)
        self.completion_tokens = max(self.completion_tokens, found.completion_tokens)
        self.cached_prompt_tokens = max(self.cached_prompt_tokens, found.cached_prompt_tokens)

    def usage(self) -> Usage | None:
        if not self.seen:
            return None
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens,
        )


class Ledger:
    """``usage.json`` of one session folder. One writer (the server); a lock keeps two
    answers finishing together from losing one another's tokens."""

    def __init__(self, folder: Path, max_cost_usd: float | None) -> None:
        self.path = folder / USAGE_FILE
        self.max_cost_usd = max_cost_usd
        self._lock = threading.Lock()

    def read(self) -> SessionUsage:
        return read_usage(self.path.parent).model_copy(update={"max_cost_usd": self.max_cost_usd})

    def over_budget(self) -> SessionUsage | None:
        """The usage when the budget is spent, else None."""
        if self.max_cost_usd is None:
            return None
        current = self.read()
        return current if current.cost_usd >= self.max_cost_usd else None

    def add(self, model: str | None, usage: Usage | None, cost: float | None) -> SessionUsage:
        with self._lock:
            current = self.read()
            updated = current.model_copy(
                update={
                    "requests": current.requests + 1,
                    "prompt_tokens": current.prompt_tokens + (usage.prompt_tokens if usage else 0),
                    "completion_tokens": current.completion_tokens
                    + (usage.completion_tokens if usage else 0),
                    "cost_usd": current.cost_usd + (cost or 0.0),
                    "unpriced_requests": current.unpriced_requests
                    + (1 if usage and cost is None else 0),
                    "last_model": model or current.last_model,
                }
            )
            write_private(self.path, updated.model_dump_json())
            return updated

    def refused(self) -> None:
        with self._lock:
            current = self.read()
            write_private(
                self.path,
                current.model_copy(update={"refused": current.refused + 1}).model_dump_json(),
            )


def read_usage(folder: Path) -> SessionUsage:
    """A session's usage; zero when it has made no call (or the file is unreadable)."""
    try:
        fd = os.open(folder / USAGE_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return SessionUsage()
    with os.fdopen(fd) as f:
        try:
            return SessionUsage.model_validate_json(f.read())
        except (ValidationError, ValueError):
            return SessionUsage()
