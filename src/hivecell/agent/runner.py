"""The agent loop for one task: observe -> decide -> act, with limits and live control.

A ``TaskRunner`` owns nothing but the conversation and its control state; the sandbox, the
model client and the trace are handed in. Servers and the CLI drive it through the control
methods (pause, resume, instruct, cancel, answer, approve, deny), which are plain sync
methods to call from the runner's event loop thread.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar, cast

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hivecell.agent import approval, catalog, prompts
from hivecell.agent.beside import beside
from hivecell.agent.clock import WorkClock
from hivecell.agent.control import Control, Extension, Pending
from hivecell.agent.history import History, image_message
from hivecell.agent.hosttools import HostTool, TaskEnds, by_name
from hivecell.agent.tools import GUI_TOOLS, TOOLS, USER_TOOLS, GuestCall, ToolBox
from hivecell.errors import HivecellError, InvalidParams, NotFound
from hivecell.trace.models import Actor

SYSTEM = Actor(kind="system")
TREE_BUDGET_MS = 1000  # an observation's accessibility tree; a slow app truncates it

Status = Literal[
    "queued",
    "running",
    "paused",
    "waiting_for_user",
    "completed",
    "failed",
    "cancelled",
    "timed_out",
    "max_steps_reached",
    "budget_exceeded",
    "interrupted",
    "guest_lost",
]
FINAL = frozenset(
    {
        "completed",
        "failed",
        "cancelled",
        "timed_out",
        "max_steps_reached",
        "budget_exceeded",
        "interrupted",
        "guest_lost",
    }
)


class RunSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(100, ge=1)
    timeout_s: float = Field(1800.0, gt=0)
    max_tokens: int | None = Field(None, ge=1, description="total token budget")
    max_cost_usd: float | None = Field(None, gt=0)
    disabled_tools: list[str] = Field(default_factory=list)
    approval_tools: list[str] = Field(
        default_factory=lambda: list(approval.DEFAULT_TOOLS),
        description="tools that wait for approval (write_file: only onto an existing file; "
        "run_shell: only commands matching approval_shell_rules)",
    )
    approval_shell_rules: list[str] = Field(
        default_factory=lambda: list(approval.DEFAULT_SHELL_RULES),
        description="names of the destructive-command rules that make run_shell ask",
    )
    approval_timeout_s: float | None = Field(
        None, gt=0, description="deny an unanswered approval after this long (None: wait)"
    )
    pause_at_limits: bool = Field(
        False,
        description="reaching timeout, max_steps or a budget pauses the task (resumable with "
        "more) instead of ending it",
    )
    keep_screenshots: int = Field(3, ge=1)
    observe_tree: bool = Field(
        False, description="each observation carries the accessibility tree's text beside the "
        "screenshot (only the newest is kept)",
    )  # fmt: skip
    tool_domains: list[str] = Field(
        default_factory=lambda: list(catalog.DEFAULT_DOMAINS),
        description="tool domains offered to the model (docs/tools.md)",
    )
    screenshot_max_width: int | None = Field(1280, ge=320)

    @field_validator("disabled_tools", "approval_tools")
    @classmethod
    def _known_tools(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(TOOLS))
        if unknown:
            raise ValueError(f"unknown tool(s) {', '.join(unknown)}; tools: {', '.join(TOOLS)}")
        return names

    @field_validator("tool_domains")
    @classmethod
    def _known_domains(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(catalog.DOMAINS))
        if unknown:
            raise ValueError(f"unknown tool domain(s) {', '.join(unknown)}; domains: "
                             f"{', '.join(catalog.DOMAINS)}")  # fmt: skip
        return names

    @field_validator("approval_shell_rules")
    @classmethod
    def _known_rules(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(approval.SHELL_RULES))
        if unknown:
            raise ValueError(
                f"unknown run_shell approval rule(s) {', '.join(unknown)}; "
                f"rules: {', '.join(approval.SHELL_RULES)}"
            )
        return names


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Outcome(BaseModel):
    status: Status
    success: bool
    summary: str
    steps: int
    usage: Usage
    error: str | None = None
    # The limits as they ended, resumes with more included (the record keeps these).
    limits: dict[str, float | int | None] = Field(default_factory=dict)


class ChatModel(Protocol):
    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> Any: ...


class Recorder(Protocol):
    """What the runner needs from a trace (``hivecell.trace.TraceWriter`` fits)."""

    async def record(self, step: int, kind: str, **fields: Any) -> Any: ...

    async def save_screenshot(self, step: int, png: bytes) -> str: ...

    async def write_conversation(self, messages: list[dict[str, Any]]) -> None: ...

    async def sync(self) -> None: ...


EventSink = Callable[[str, dict[str, Any]], None]
_T = TypeVar("_T")


class _Finished(Exception):
    def __init__(self, status: Status, success: bool, summary: str, error: str | None = None):
        super().__init__(summary)
        self.outcome: tuple[Status, bool, str, str | None] = (status, success, summary, error)


class _WriteBehind:
    """Trace writes in submission order on one task beside the loop.

    A step's records are written while its tool runs and its screenshot is taken instead of
    one after the other in its path; ``flush`` before each model request keeps the promise
    that everything up to the request the model is working on is written (a process killed
    while the model thinks leaves a complete trace: tests/cli/test_cli_run.py). The fsync
    that makes it survive a machine crash is queued after the flush, so it runs while the
    model thinks: on a busy disk it took 10-50 ms of the task's first request.
    """

    def __init__(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[
            Callable[[], Awaitable[None]]
        ](math.inf)

    def submit(self, job: Callable[[], Awaitable[None]]) -> None:
        self._send.send_nowait(job)

    async def flush(self) -> None:
        written = anyio.Event()

        async def mark() -> None:
            written.set()

        self.submit(mark)
        await written.wait()

    async def around(self, body: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``body`` while writing; when it ends, finish the queued writes.

        Errors of ``body`` are re-raised as themselves, not wrapped in an ExceptionGroup, so
        callers still see the typed HivecellError.
        """

        async def then_close() -> _T:
            try:
                return await body()
            finally:
                self._send.close()

        return await beside(self._drain, then_close)

    async def _drain(self) -> None:
        async with self._receive:
            async for job in self._receive:
                await job()


class TaskRunner:
    def __init__(
        self,
        *,
        description: str,
        guest: GuestCall,
        llm: ChatModel,
        trace: Recorder,
        settings: RunSettings | None = None,
        screen: tuple[int, int] = (1280, 800),
        network: str = "offline",
        inbox: list[str] | None = None,
        on_event: EventSink | None = None,
        host_tools: list[HostTool] | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``ready``: awaited after the first look, before the first model request (the
        caller's own preparation, done meanwhile; its error ends the run as it would have
        before the run began)."""
        self.description = description
        self.settings = settings or RunSettings()
        self.status: Status = "queued"
        self.steps = 0
        self.usage = Usage()
        self.control = Control(
            self._set_status,
            lambda: self.status,
            on_system=lambda action, args: self.intervened(action, SYSTEM, args),
        )
        self.clock = WorkClock(self.settings.timeout_s)
        self._guest = guest
        self._llm = llm
        self._trace = trace
        self._screen = screen
        self._network = network
        self._inbox = inbox or []
        self._on_event = on_event or (lambda kind, data: None)
        disabled = set(self.settings.disabled_tools) | catalog.outside(self.settings.tool_domains)
        self._tools = ToolBox(guest, disabled=frozenset(disabled))
        self._host_tools = by_name(host_tools or [])
        self._host_schemas = [tool.schema() for tool in self._host_tools.values()]
        self._history: History | None = None
        self._tree_part: dict[str, Any] | None = None  # the newest observation's tree text
        self._writes = _WriteBehind()
        self._ready = ready
        # call id -> the vendor safety checks a person approved for it (until its result)
        self._acknowledged: dict[str, list[dict[str, Any]]] = {}

    # --- the loop ------------------------------------------------------------------------
    async def run(self) -> Outcome:
        self._set_status("running")
        # The writes happen outside the timeout and cancel scopes, so stopping the loop
        # never loses records already queued.
        outcome = await self._writes.around(self._until_finished)
        return await self._finish(*outcome)

    async def _until_finished(self) -> tuple[Status, bool, str, str | None]:
        try:
            with self.control.cancel_scope:
                await self._loop()
            if self.control.ended is not None:  # the runtime ended it (the guest is lost)
                status, reason = self.control.ended
                raise _Finished(cast(Status, status), False, reason, f"{status}: {reason}")
            if self.control.detached:
                if self.control.limit is not None:  # nobody can give it more: the limit ends it
                    limit = cast(Status, self.control.limit)
                    raise _Finished(limit, False, self.control.pause_reason)
                raise _Finished("paused", False, self.control.detached, self.control.detached)
            if self.control.cancel_scope.cancel_called:
                raise _Finished("cancelled", False, "cancelled by the person")
        except _Finished as done:
            return done.outcome
        return "failed", False, "the agent loop ended unexpectedly", None

    async def _loop(self) -> None:
        shot = await self._observe(0)
        self._history = History(
            self._system_prompt(shot), self.description, keep_images=self.settings.keep_screenshots
        )
        self._history.add(await self._observation("The desktop now.", shot))
        if self._ready is not None:
            await self._ready()
        while True:
            await self.control.checkpoint(self._history)
            await self._hold_at_limits(self._exceeded)
            await self._step()

    async def _step(self) -> None:
        assert self._history is not None
        self.steps += 1
        tools = self._tools.schemas() + self._host_schemas
        response = await self._decide(self._history.messages, tools=tools)
        if not response.tool_calls:
            await self._check_done(response)
            return
        self._history.add(_assistant_message(response))
        self._record(kind="llm", reasoning=response.text, **_llm_fields(response))
        for index, call in enumerate(response.tool_calls):
            if hold := self._hold_reason():
                # A pause, take-over or the time limit came while the model was thinking or
                # between actions: the rest of this reply does not run (the screen may change
                # meanwhile); the model re-plans from the next screenshot.
                self._skip(response.tool_calls[index:], hold)
                break
            self._history.add(await self._act(call))
        for text, image in self._tools.take_images():  # e.g. the catalogue's zoom
            self._history.add(image_message(text, image))
        shot = await self._observe(self.steps)
        self._history.add(await self._observation(f"Screenshot after step {self.steps}.", shot))

    # --- decide --------------------------------------------------------------------------
    async def _decide(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        """One model call; endpoint outages pause the task until resumed, then retry."""
        while True:
            await self._writes.flush()
            self._writes.submit(self._trace.sync)
            try:
                with self.clock.bounded() as limit:
                    response = await self._llm.complete(messages, **kwargs)
                if limit.cancelled_caught:  # the time ran out while the model was thinking
                    await self._hold_at_limits(self._exceeded_time)
                    continue
            except HivecellError as exc:
                if exc.code not in ("llm_unavailable", "llm_rejected"):
                    raise
                self._record(kind="error", error=str(exc))
                await self.control.pause_for(f"model endpoint failing: {exc}")
                if self._history is not None:
                    # The retry sends the same list: let it carry what the person said on resume.
                    self.control.apply_instructions(self._history)
                continue
            self._account(response)
            # Already paid for: if more budget is granted, the reply is acted on.
            await self._hold_at_limits(self._exceeded_budget)
            return response

    def _account(self, response: Any) -> None:
        usage = getattr(response, "usage", None)
        if usage is not None:
            self.usage.prompt_tokens += usage.prompt_tokens
            self.usage.completion_tokens += usage.completion_tokens
        self.usage.cost_usd += getattr(response, "cost_usd", None) or 0.0

    # --- limits --------------------------------------------------------------------------
    def _exceeded(self) -> tuple[Status, str] | None:
        if self.steps >= self.settings.max_steps:
            return "max_steps_reached", f"stopped after {self.steps} steps (max_steps)"
        return self._exceeded_time() or self._exceeded_budget()

    def _exceeded_time(self) -> tuple[Status, str] | None:
        if self.clock.remaining() <= 0:
            return "timed_out", f"stopped after {self.clock.budget_s:g} s of work (timeout)"
        return None

    def _exceeded_budget(self) -> tuple[Status, str] | None:
        spent = self._spent()
        return ("budget_exceeded", next(iter(spent.values()))) if spent else None

    def exceeded_budgets(self) -> tuple[str, ...]:
        """What a resume must add for the budgets used up now (``extra_tokens``, ...)."""
        return tuple(sorted(self._spent()))

    def _spent(self) -> dict[str, str]:
        """The budgets used up now: the resume field that raises each -> why it stopped."""
        s, used = self.settings, self.usage
        spent = {}
        if s.max_tokens is not None and used.total_tokens > s.max_tokens:
            spent["extra_tokens"] = f"used {used.total_tokens} tokens (max_tokens)"
        if s.max_cost_usd is not None and used.cost_usd > s.max_cost_usd:
            spent["extra_cost_usd"] = f"cost ${used.cost_usd:.4f} (max_cost_usd)"
        return spent

    async def _hold_at_limits(self, exceeded: Callable[[], tuple[Status, str] | None]) -> None:
        """At a limit: end the task, or (``pause_at_limits``) pause until given more."""
        while found := exceeded():
            status, summary = found
            if not self.settings.pause_at_limits:
                raise _Finished(status, False, summary)
            await self.control.pause_for(summary, limit=status)
            self._extend(self.control.take_extension())

    def _extend(self, more: Extension) -> None:
        s = self.settings
        if more.extra_time_s:
            self.clock.extend(more.extra_time_s)
        updates: dict[str, Any] = {}
        if more.extra_steps:
            updates["max_steps"] = s.max_steps + more.extra_steps
        if more.extra_tokens and s.max_tokens is not None:
            updates["max_tokens"] = s.max_tokens + more.extra_tokens
        if more.extra_cost_usd and s.max_cost_usd is not None:
            updates["max_cost_usd"] = s.max_cost_usd + more.extra_cost_usd
        self.settings = s.model_copy(update=updates)

    def _hold_reason(self) -> str | None:
        if self.control.pause_requested:
            return "paused by the person before this action ran"
        if self.clock.remaining() <= 0:
            return "the time limit was reached before this action ran"
        return None

    def _skip(self, calls: list[Any], reason: str) -> None:
        assert self._history is not None
        for call in calls:
            error = f"not run: {reason}; the next screenshot shows the desktop as it is now"
            self._record(kind="tool", tool=call.name, arguments=call.arguments, error=error)
            content = json.dumps({"error": error})
            self._history.add({"role": "tool", "tool_call_id": call.id, "content": content})

    async def _check_done(self, response: Any) -> None:
        """The model stopped calling tools: ask it, with structured output, if it is done."""
        assert self._history is not None
        self._history.add({"role": "assistant", "content": response.text or ""})
        self._record(kind="llm", reasoning=response.text, **_llm_fields(response))
        question = prompts.COMPLETION_CHECK.format(task=self.description)
        check = [*self._history.messages, {"role": "user", "content": question}]
        verdict_response = await self._decide(check, response_format=prompts.COMPLETION_SCHEMA)
        verdict = _parse_verdict(verdict_response.text)
        # Its latency too (for the model-latency metric); its tokens are in the task's usage.
        latency = getattr(verdict_response, "latency_ms", None)
        self._record(kind="llm", text="completion check", result=verdict, llm_latency_ms=latency)
        if verdict["complete"]:
            status: Status = "completed" if verdict["success"] else "failed"
            raise _Finished(status, bool(verdict["success"]), str(verdict["summary"]))
        self._history.add(
            {"role": "user", "content": prompts.NOT_COMPLETE.format(summary=verdict["summary"])}
        )

    # --- act -----------------------------------------------------------------------------
    async def _act(self, call: Any) -> dict[str, Any]:
        """Run one tool call; every failure becomes an observation for the model."""
        started = time.perf_counter()
        try:
            result: Any = None
            error: str | None = "stopped: the time limit was reached while this action ran"
            with self.clock.bounded():
                result = await self._dispatch(call)
                error = None
        except (HivecellError, InvalidParams) as exc:
            result, error = None, f"{exc.code}: {exc}"
        except ValueError as exc:  # pydantic ValidationError of the tool's arguments
            result, error = None, f"invalid arguments for {call.name}: {exc}"
        except TaskEnds as ends:  # a host tool's verdict: traced like any call, then the end
            self._record(kind="tool", tool=call.name, arguments=call.arguments, result="ended")
            status: Status = "completed" if ends.success else "failed"
            raise _Finished(status, ends.success, ends.summary) from None
        tool_ms = (time.perf_counter() - started) * 1000
        result = _short(result)
        self._record(
            kind="tool",
            tool=call.name,
            arguments=call.arguments,
            result=result,
            error=error,
            tool_latency_ms=tool_ms,
        )
        content = json.dumps({"error": error} if error else result)
        message = {"role": "tool", "tool_call_id": call.id, "content": content}
        if acknowledged := self._acknowledged.pop(call.id, None):
            message["acknowledged_safety_checks"] = acknowledged  # the adapter sends them back
        return message

    async def _dispatch(self, call: Any) -> Any:
        if call.parse_error:
            raise InvalidParams(f"{call.parse_error}; resend the call", op=call.name)
        host = self._host_tools.get(call.name)
        if host is not None:
            return await host.call(host.args.model_validate(call.arguments or {}))
        args = self._tools.validate(call.name, call.arguments)
        if call.name in USER_TOOLS:
            await self._writes.flush()  # a person may take hours: what led here is on disk
            return {"answer": await self.control.ask(call.name, args.model_dump())}
        reason = await approval.reason_to_ask(
            call.name,
            args.model_dump(),
            tools=self.settings.approval_tools,
            shell_rules=self.settings.approval_shell_rules,
            exists=self._exists,
        )
        checks = getattr(call, "safety_checks", None) or []
        if checks:  # the vendor's own reasons to have a person confirm this action first
            reason = "; ".join(filter(None, (reason, approval.safety_reason(checks))))
        if reason is not None:
            await self._writes.flush()
            await self.control.approval(
                call.name,
                call.arguments or {},
                reason=reason,
                timeout_s=self.settings.approval_timeout_s,
            )
        if checks:
            self._acknowledged[call.id] = [c.model_dump(exclude_none=True) for c in checks]
        result = await self._tools.execute(call.name, args)
        if call.name in GUI_TOOLS:
            await self._guest("wait_for_settle", {"timeout": 2.0})
        return result

    async def _exists(self, path: str) -> bool:
        """Whether ``path`` exists in the sandbox (a symlink counts: writing follows it)."""
        try:
            await self._guest("stat_file", {"path": path})
        except NotFound:
            return False
        return True

    # --- observe -------------------------------------------------------------------------
    async def _observe(self, step: int) -> dict[str, Any]:
        params: dict[str, Any] = {"format": "png", "max_width": self.settings.screenshot_max_width}
        raw = await self._guest("screenshot", params)
        self._tools.scale = float(raw["scale"])
        png = base64.b64decode(raw["data"])
        self._writes.submit(lambda: self._write_observation(step, png))
        return {"png": png, "width": raw["width"], "height": raw["height"]}

    async def _observation(self, text: str, shot: dict[str, Any]) -> dict[str, Any]:
        message = image_message(text, shot["png"])
        if self.settings.observe_tree:
            part = {"type": "text", "text": await self._tree_text()}
            if self._tree_part is not None:  # trees are long: only the newest stays
                self._tree_part["text"] = "[older accessibility tree omitted]"
            self._tree_part = part
            message["content"].append(part)
        return message

    async def _tree_text(self) -> str:
        try:
            tree = await self._tools.tree_text(budget_ms=TREE_BUDGET_MS)
        except HivecellError as exc:  # a desktop without AT-SPI still has its screenshot
            return f"Accessibility tree unavailable: {exc}"
        return "Accessibility tree (ids for click_element, set_element_text):\n" + tree["tree"]

    async def _write_observation(self, step: int, png: bytes) -> None:
        name = await self._trace.save_screenshot(step, png)
        await self._write(step, {"kind": "observation", "screenshot": name})

    # --- guest faults (agent/guestlink.py reports them) -----------------------------------
    def guest_event(self, event: Literal["unreachable", "back", "lost"], reason: str) -> None:
        """Trace what happened to the guest connection and pause, resume or end the task."""
        if event == "unreachable":
            self._record(kind="error", tool="guest", error=f"guest_unreachable: {reason}")
            self.control.guest_unreachable(reason)
        elif event == "back":
            self._record(kind="status", tool="guest", text=f"guest_reconnected: {reason}")
            self.control.guest_back()
        else:
            self._record(kind="error", tool="guest", error=f"guest_lost: {reason}")
            self.control.end("guest_lost", reason)

    # --- bookkeeping ---------------------------------------------------------------------
    def _system_prompt(self, shot: dict[str, Any]) -> str:
        return prompts.system_prompt(
            width=self._screen[0],
            height=self._screen[1],
            shot_width=shot["width"],
            shot_height=shot["height"],
            network=self._network,
            inbox=self._inbox,
        )

    def _set_status(self, status: Status, reason: str = "") -> None:
        self.status = status
        # Only work counts toward the timeout: not pauses, take-overs or waiting for answers.
        if status == "running":
            self.clock.start()
        else:
            self.clock.stop()
        self._on_event("status", {"status": status, "reason": reason})

    def intervened(
        self,
        action: str,
        by: Actor,
        arguments: dict[str, Any] | None = None,
        *,
        ts: datetime | None = None,
    ) -> None:
        """Put an intervention (who did what) in the trace, in order with the steps.

        After the loop ended nothing is written: the run is over, the action had no effect."""
        fields: dict[str, Any] = {
            "kind": "intervention",
            "action": action,
            "by": by.model_dump(exclude_none=True),  # plain data: the step event goes out as JSON
        }
        if arguments:
            fields["arguments"] = arguments
        if ts is not None:
            fields["ts"] = ts.isoformat()
        with suppress(anyio.ClosedResourceError):
            self._record(**fields)

    def _record(self, **fields: Any) -> None:
        step = self.steps
        self._writes.submit(lambda: self._write(step, fields))

    async def _write(self, step: int, fields: dict[str, Any]) -> None:
        """Persist one record, then tell the watchers (so what they see is in the trace)."""
        await self._trace.record(step=step, **fields)
        self._on_event("step", {"step": step, **{k: v for k, v in fields.items() if k != "result"}})

    async def _finish(
        self, status: Status, success: bool, summary: str, error: str | None = None
    ) -> Outcome:
        with anyio.CancelScope(shield=True):
            if self._history is not None:
                await self._trace.write_conversation(self._history.messages)
            status_record = {"kind": "status", "result": {"status": status, "summary": summary}}
            await self._write(self.steps, status_record)
        self._set_status(status, summary)
        outcome = Outcome(
            status=status,
            success=success,
            summary=summary,
            steps=self.steps,
            usage=self.usage,
            error=error,
            limits={
                "max_steps": self.settings.max_steps,
                "timeout_s": self.clock.budget_s,
                "max_tokens": self.settings.max_tokens,
                "max_cost_usd": self.settings.max_cost_usd,
            },
        )
        self._on_event("finished", outcome.model_dump())
        return outcome


def _assistant_message(response: Any) -> dict[str, Any]:
    calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.raw_arguments}}
        for c in response.tool_calls
    ]
    message = {"role": "assistant", "content": response.text or None, "tool_calls": calls}
    if items := getattr(response, "provider_items", None):
        message["provider_items"] = items  # an adapter that must resend them reads them here
    return message


def _llm_fields(response: Any) -> dict[str, Any]:
    usage = getattr(response, "usage", None)
    tokens = (
        {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens} if usage else None
    )
    return {"tokens": tokens, "llm_latency_ms": getattr(response, "latency_ms", None)}


def _parse_verdict(text: str | None) -> dict[str, Any]:
    try:
        verdict = json.loads(text or "")
    except ValueError:
        verdict = None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("complete"), bool):
        # A model that cannot produce the check is treated as "not done" with a nudge.
        return {
            "complete": False,
            "success": False,
            "summary": "the completion check reply was not valid JSON",
        }
    verdict.setdefault("success", False)
    verdict.setdefault("summary", "")
    return verdict


def _short(result: Any, limit: int = 20_000) -> Any:
    """Results go to the model as text; cap huge ones so one tool cannot flood the context."""
    text = json.dumps(result, default=str)
    if len(text) <= limit:
        return result
    return {"truncated": True, "head": text[:limit]}


__all__ = ["FINAL", "Outcome", "Pending", "RunSettings", "Status", "TaskRunner", "Usage"]
