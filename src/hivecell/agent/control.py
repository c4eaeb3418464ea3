"""Live control of a running task: pause, resume, instruct, cancel, answer, approve.

The control methods are synchronous and only flip state and events; the runner notices at
its checkpoints (between steps and before each action) or while it waits for the person.
Call them from the runner's event loop (other threads: ``anyio.from_thread.run_sync``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field

from hivecell.errors import InvalidParams, ToolFailed

if TYPE_CHECKING:
    from hivecell.agent.history import History

INSTRUCTION = "New instruction from the person: {text}"


@dataclass
class Pending:
    """What the runner waits for from the person."""

    kind: Literal["question", "choice", "approval"]
    tool: str
    question: str = ""
    options: list[str] = field(default_factory=list)
    arguments: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # why it asks (the approval rule that matched)
    timeout_s: float | None = None  # an unanswered approval is denied after this long

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "tool": self.tool,
            "question": self.question,
            "options": self.options,
            "arguments": self.arguments,
            "reason": self.reason,
            "timeout_s": self.timeout_s,
        }


class Extension(BaseModel):
    """More room for a task paused at a limit (``resume`` with more time, steps or budget)."""

    model_config = ConfigDict(extra="forbid")

    extra_time_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    extra_steps: int | None = Field(None, ge=1, le=10_000)
    extra_tokens: int | None = Field(None, ge=1)
    extra_cost_usd: float | None = Field(None, gt=0)

    def is_empty(self) -> bool:
        return not any(vars(self).values())


GUEST_UNREACHABLE = "guest_unreachable"  # the pause reason while the guest link reconnects


class Control:
    def __init__(
        self,
        set_status: Callable[..., None],
        status: Callable[[], str] = lambda: "",
        on_system: Callable[[str, dict[str, Any]], None] = lambda action, args: None,
    ) -> None:
        """``status`` reads the runner's status; ``on_system(action, arguments)`` hears what
        Control decides itself in place of a person (an approval denied at its timeout), for
        the trace."""
        self.cancel_scope = anyio.CancelScope()
        self.pending: Pending | None = None
        self.pause_reason = ""
        self.limit: str | None = None  # the limit status while paused at a limit
        self.fault: str | None = None  # GUEST_UNREACHABLE while the guest link reconnects
        self.detached = ""
        self.ended: tuple[str, str] | None = None  # (status, reason) the runtime ended it with
        self._status = status
        self._extension = Extension()
        self._set_status = set_status
        self._on_system = on_system
        self._pause_requested = False
        self._resumed = anyio.Event()
        self._instructions: list[str] = []
        self._replied = anyio.Event()
        self._reply: tuple[bool, str] = (False, "")
        self._timed_out = False

    # --- called by people (server, CLI) --------------------------------------------------
    def pause(self) -> None:
        self._pause_requested = True

    @property
    def pause_requested(self) -> bool:
        return self._pause_requested

    def resume(self, text: str | None = None, extension: Extension | None = None) -> None:
        if text:
            self._instructions.append(text)
        if extension is not None:
            self._extension = extension
        self._pause_requested = False
        self._resumed.set()

    def take_extension(self) -> Extension:
        extension, self._extension = self._extension, Extension()
        return extension

    def instruct(self, text: str) -> None:
        if not text.strip():
            raise InvalidParams("instruction text is empty", op="instruct")
        self._instructions.append(text)

    def cancel(self) -> None:
        self.cancel_scope.cancel()

    def detach(self, reason: str) -> None:
        """Stop running but leave the task paused (e.g. the CLI cannot ask anyone)."""
        self.detached = reason
        self.cancel_scope.cancel()

    # --- called by the runtime (guest faults, see agent/guestlink.py) ---------------------
    def guest_unreachable(self, reason: str) -> None:
        """The guest went silent: a running task shows as paused until it is back. A task
        already paused or waiting for the person keeps that status (it waits anyway)."""
        self.fault = GUEST_UNREACHABLE
        if self._status() == "running":
            self.pause_reason = f"{GUEST_UNREACHABLE}: {reason}"
            self._set_status("paused", self.pause_reason)

    def guest_back(self) -> None:
        self.fault = None
        if self.pause_reason.startswith(GUEST_UNREACHABLE) and self._status() == "paused":
            self.pause_reason = ""
            self._set_status("running")

    def end(self, status: str, reason: str) -> None:
        """Stop running: the task ends with ``status`` (e.g. ``guest_lost``)."""
        self.ended = (status, reason)
        self.cancel_scope.cancel()

    def answer(self, text: str) -> str:
        """Answer the pending question; for a choice, text may be the option or its number."""
        pending = self._expect(("question", "choice"), "answer")
        value = _match_option(text, pending.options) if pending.kind == "choice" else text
        self._reply = (True, value)
        self._replied.set()
        return value

    def approve(self) -> None:
        self._expect(("approval",), "approve")
        self._reply = (True, "")
        self._replied.set()

    def deny(self, reason: str = "") -> None:
        self._expect(("approval",), "deny")
        self._reply = (False, reason)
        self._replied.set()

    def _expect(self, kinds: tuple[str, ...], op: str) -> Pending:
        if self.pending is None or self.pending.kind not in kinds:
            raise InvalidParams(f"nothing to {op}: the task is not waiting for that", op=op)
        return self.pending

    # --- awaited by the runner -----------------------------------------------------------
    async def checkpoint(self, history: History) -> None:
        """Between steps: apply new instructions, and stop here while paused.

        (Before each action of a step the runner checks ``pause_requested`` itself.)"""
        if self._pause_requested:
            await self.pause_for("paused by the person")
        self.apply_instructions(history)

    def apply_instructions(self, history: History) -> None:
        for text in self._instructions:
            history.add({"role": "user", "content": INSTRUCTION.format(text=text)})
        self._instructions.clear()

    async def pause_for(self, reason: str, *, limit: str | None = None) -> None:
        self.pause_reason, self.limit = reason, limit
        self._resumed = anyio.Event()
        self._set_status("paused", reason)
        await self._resumed.wait()
        self.pause_reason, self.limit = "", None
        self._set_status("running")

    async def ask(self, tool: str, args: dict[str, Any]) -> str:
        kind: Literal["question", "choice"] = "choice" if tool == "ask_user_choice" else "question"
        pending = Pending(kind, tool, args["question"], list(args.get("options", [])))
        _, value = await self._wait_for_person(pending)
        return value

    async def approval(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        reason: str = "",
        timeout_s: float | None = None,
    ) -> None:
        pending = Pending(
            "approval",
            tool,
            f"allow {tool}?",
            arguments=arguments,
            reason=reason,
            timeout_s=timeout_s,
        )
        ok, reason = await self._wait_for_person(pending)
        if not ok and self._timed_out:
            raise ToolFailed(
                f"{tool} was denied by timeout: nobody approved it within {timeout_s:g} s",
                op=tool,
            )
        if not ok:
            raise ToolFailed(
                f"the person denied {tool}" + (f": {reason}" if reason else ""), op=tool
            )

    async def _wait_for_person(self, pending: Pending) -> tuple[bool, str]:
        self.pending = pending
        self._replied = anyio.Event()
        self._timed_out = False
        self._set_status("waiting_for_user", pending.question)
        try:
            with anyio.move_on_after(pending.timeout_s) as scope:
                await self._replied.wait()
            if scope.cancelled_caught:  # nobody answered in time: that is a deny
                self._reply, self._timed_out = (False, ""), True
                self._on_system("deny", {"tool": pending.tool, "timeout_s": pending.timeout_s})
        finally:
            self.pending = None
        self._set_status("running")
        return self._reply


def _match_option(text: str, options: list[str]) -> str:
    cleaned = text.strip()
    for option in options:
        if cleaned.casefold() == option.casefold():
            return option
    if cleaned.isdigit() and 1 <= int(cleaned) <= len(options):
        return options[int(cleaned) - 1]
    listed = ", ".join(f"{i}) {o}" for i, o in enumerate(options, 1))
    raise InvalidParams(f"{text!r} is not one of the options: {listed}", op="answer")
