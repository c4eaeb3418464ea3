"""Terminal side of a running task: progress lines, questions, approvals, Ctrl-C menu.

Everything is printed to stderr so ``--json`` leaves stdout to the final object. Answers
are read from stdin, so they can be piped (``echo 2 | hivecell run ...``).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import anyio
from rich.console import Console

from hivecell.agent.control import GUEST_UNREACHABLE, Extension
from hivecell.agent.runner import RunSettings, TaskRunner
from hivecell.errors import InvalidParams
from hivecell.trace import Actor

CLI = Actor(kind="cli")
MENU = "paused — [r]esume, [i]nstruct <text>, [c]ancel: "


class LiveConsole:
    def __init__(self, *, interactive: bool, console: Console | None = None) -> None:
        self.interactive = interactive  # stdin is a terminal: we may wait for a person
        self.console = console or Console(stderr=True, highlight=False)
        self.runner: TaskRunner | None = None

    def attach(self, runner: TaskRunner) -> None:
        self.runner = runner

    async def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "step":
            self._show_step(data)
        elif kind == "status":
            await self._on_status(data)

    def _show_step(self, data: dict[str, Any]) -> None:
        kind = data.get("kind")
        step = data.get("step")
        if kind == "tool":
            outcome = f"[red]{data['error']}[/red]" if data.get("error") else "ok"
            args = _clip(str(data.get("arguments") or {}), 80)
            self.console.print(f"  step {step}: {data.get('tool')} {args} -> {outcome}")
        elif kind == "llm" and data.get("reasoning"):
            tokens = data.get("tokens") or {}
            used = f" [dim]({tokens.get('prompt', 0)}+{tokens.get('completion', 0)} tokens)[/dim]"
            self.console.print(f"step {step}: {_clip(data['reasoning'], 160)}{used}")
        elif kind == "error":
            self.console.print(f"[yellow]{data.get('error')}[/yellow]")
        elif kind == "status" and data.get("tool") == "guest":  # back after a guest fault
            self.console.print(str(data.get("text")), style="green", markup=False)

    async def _on_status(self, data: dict[str, Any]) -> None:
        status, reason = data["status"], data.get("reason", "")
        if status == "waiting_for_user":
            await self._ask_person()
        elif status == "paused" and reason:
            if self.runner is not None and self.runner.control.detached:
                return  # the run has ended paused; the final report says why
            if reason.startswith(f"{GUEST_UNREACHABLE}:"):
                # Nothing to ask: the runtime reconnects and resumes by itself (or ends it).
                # Judged by the event, not the live state: the reconnection may be done already.
                note = f"paused, reconnecting to the sandbox: {reason}"
                self.console.print(note, style="yellow", markup=False)
                return
            self.console.print(f"[yellow]paused:[/yellow] {reason}")
            await self._paused(reason)
        elif status not in ("running",):
            self.console.print(f"status: {status} {reason}")

    async def _ask_person(self) -> None:
        assert self.runner is not None
        pending = self.runner.control.pending
        if pending is None:
            return
        if pending.kind == "approval":
            if pending.reason:
                self.console.print(f"why: {pending.reason}", markup=False)
            await self._approve(pending.tool, pending.arguments)
            return
        self.console.print(f"[bold]agent asks:[/bold] {pending.question}")
        for number, option in enumerate(pending.options, 1):
            self.console.print(f"  {number}) {option}")
        while True:
            line = await read_line("answer: ")
            if line is None:
                self.runner.control.detach("waiting for an answer, but stdin is closed")
                return
            try:
                value = self.runner.control.answer(line)
                self._did("answer", {"answer": value, "tool": pending.tool})
                return
            except InvalidParams as exc:
                self.console.print(f"[red]{exc.message}[/red]")

    async def _approve(self, tool: str, arguments: dict[str, Any]) -> None:
        assert self.runner is not None
        self.console.print(f"[bold]approve {tool}[/bold] {arguments}? [y/N]")
        line = await read_line("> ")
        if line is None:
            self.runner.control.detach(f"waiting for approval of {tool}, but stdin is closed")
        elif line.strip().lower() in ("y", "yes"):
            self.runner.control.approve()
            self._did("approve", {"tool": tool})
        else:
            self.runner.control.deny("denied on the terminal")
            self._did("deny", {"tool": tool, "reason": "denied on the terminal"})

    async def _paused(self, reason: str) -> None:
        assert self.runner is not None
        if not self.interactive:
            self.runner.control.detach(reason)
            return
        if self.runner.control.limit is not None:
            await self._at_limit(self.runner.control.limit, reason)
            return
        await self.menu()

    async def _at_limit(self, limit: str, reason: str) -> None:
        """A limit was reached: give the task as much again, or end it with that status."""
        assert self.runner is not None
        line = await read_line(f"{limit}: [m]ore (the same again) or [e]nd? ")
        if line is None or not line.strip().lower().startswith("m"):
            self.runner.control.detach(reason)
            return
        extension = _same_again(limit, self.runner.settings)
        self.runner.control.resume(extension=extension)
        self._did("resume", extension.model_dump(exclude_none=True))

    def _did(self, action: str, arguments: dict[str, Any] | None = None) -> None:
        """The person at this terminal intervened: say so in the trace."""
        if self.runner is not None:
            self.runner.intervened(action, CLI, arguments)

    async def menu(self) -> None:
        """The Ctrl-C / pause menu: resume, add an instruction, or cancel."""
        assert self.runner is not None
        line = await read_line(MENU)
        choice = (line or "c").strip()
        if choice.startswith("i"):
            text = choice[1:].strip()
            self.runner.control.resume(text or None)
            self._did("resume", {"text": text} if text else None)
        elif choice.startswith("c"):
            self.runner.control.cancel()
            self._did("cancel")
        else:
            self.runner.control.resume()
            self._did("resume")

    async def watch_interrupts(self) -> None:
        """Ctrl-C pauses after the current step and opens the menu; twice cancels."""
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            async for _ in signals:
                if self.runner is None:
                    continue
                if self.runner.control.pause_reason or not self.interactive:
                    self.runner.control.cancel()
                    self._did("cancel")
                    continue
                self.console.print("\n[yellow]pausing after the current step...[/yellow]")
                self.runner.control.pause()
                self._did("pause")


def _same_again(limit: str, settings: RunSettings) -> Extension:
    if limit == "timed_out":
        return Extension(extra_time_s=settings.timeout_s)
    if limit == "max_steps_reached":
        return Extension(extra_steps=settings.max_steps)
    return Extension(extra_tokens=settings.max_tokens, extra_cost_usd=settings.max_cost_usd)


async def read_line(prompt: str) -> str | None:
    """One line from stdin without blocking the event loop; None at end of input."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    line = await anyio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
    return None if line == "" else line.rstrip("\n")


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
