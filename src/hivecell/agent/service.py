"""Runs one task end to end: sandbox, inbox files, the agent loop, outbox, trace, record.

Both ``hivecell run`` and the server use ``TaskService``; it owns no global state. Events
from the runner flow through a memory stream to one consumer task that persists status
changes and forwards them to the caller's (async) event handler.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hivecell.agent.beside import beside
from hivecell.agent.guestlink import GUEST_WINDOW_S, GuestEvent, GuestLink
from hivecell.agent.hosttools import HostTool
from hivecell.agent.runner import ChatModel, Outcome, RunSettings, TaskRunner
from hivecell.errors import SandboxError, SandboxNotFound
from hivecell.sandbox import netpolicy, transfer
from hivecell.sandbox.base import (
    Desktop,
    NetworkMode,
    ProviderName,
    SandboxInfo,
    SandboxProvider,
    SandboxSpec,
    create_owned,
)
from hivecell.sandbox.transfer import Skipped, TransferLimits, TransferReport
from hivecell.store import InvalidTransition, TaskRecord, TaskSettings, TaskStore
from hivecell.trace import StepKind, TraceWriter, write_network
from hivecell.trace.files import write_atomically

TRANSFER_FILE = "transfer.json"  # in the trace folder: what the outbox collection left out


class _Started:
    """The task's "running" row and its sandbox, written while the runner connects and takes
    its first look instead of before (the write was ~8 ms of every warm dispatch). The first
    model request waits for it (``wait``, which raises its error: a task cancelled meanwhile
    ends as it did before), and so does the consumer of the runner's events, so no status
    the runner reports overtakes it."""

    def __init__(self, write: Callable[[], Awaitable[object]]) -> None:
        self._write = write
        self._done = anyio.Event()
        self._error: Exception | None = None

    async def write(self) -> None:
        try:
            await self._write()
        except Exception as exc:  # raised by wait(), in the run's own path
            self._error = exc
        finally:
            self._done.set()

    async def written(self) -> bool:
        """Once the write ended: whether it was made (a refused one leaves the row alone)."""
        await self._done.wait()
        return self._error is None

    async def wait(self) -> None:
        await self._done.wait()
        if self._error is not None:
            raise self._error


EventHandler = Callable[[str, dict[str, Any]], Awaitable[None]]


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = Field(min_length=1)
    files: list[Path] = Field(default_factory=list)
    settings: RunSettings = Field(default_factory=RunSettings)
    network: NetworkMode = "offline"
    network_allow: list[str] = Field(
        default_factory=list, description="nat: domains, *.domains and CIDRs it may reach"
    )
    resolution: tuple[int, int] = (1280, 800)
    desktop: Desktop = "full"
    output_dir: Path | None = None
    keep_sandbox: bool = False
    sandbox_id: str | None = Field(None, description="reuse a running sandbox (warm start)")
    owns_sandbox: bool = Field(
        False,
        description="the sandbox in sandbox_id was made for this task alone (the server's "
        "task manager): it is stopped, not frozen, before the outbox is collected",
    )
    inbox_writable: bool = Field(
        False,
        description="a new sandbox's /shared/inbox is writable inside it (default read-only); "
        "a reused sandbox keeps its own setting",
    )
    sandbox_provider: ProviderName | None = Field(
        None, description="a new sandbox's provider: local or qemu (default: the caller's)"
    )

    @field_validator("network_allow")
    @classmethod
    def _allow_entries(cls, entries: list[str]) -> list[str]:
        return netpolicy.normalize(entries)

    def sandbox_spec(self, **more: Any) -> SandboxSpec:
        """The sandbox this task asks for; ``more``: what the caller adds (limits, a name)."""
        width, height = self.resolution
        return SandboxSpec(
            width=width,
            height=height,
            network=self.network,
            network_allow=self.network_allow,
            inbox_writable=self.inbox_writable,
            desktop=self.desktop,
            provider=self.sandbox_provider,
            **more,
        )


class TaskResult(BaseModel):
    task_id: str
    status: str
    success: bool
    summary: str
    steps: int
    artifacts: list[str]
    output_dir: str
    trace_dir: str
    sandbox_id: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    duration_s: float
    transfer: TransferReport | None = Field(None, description="what the outbox copy left out")


class TaskService:
    def __init__(
        self,
        *,
        home: Path,
        provider: SandboxProvider,
        store: TaskStore,
        llm: ChatModel,
        model: str = "",
        provider_name: str = "",
        transfer_limits: TransferLimits | None = None,
        guest_window_s: float = GUEST_WINDOW_S,
    ) -> None:
        """``transfer_limits``: caps on each inbox and outbox copy (default 1 GiB, 10 000 files).
        ``guest_window_s``: how long a lost guest agent is reconnected to (the task paused)
        before the task ends ``guest_lost``."""
        self._home = home
        self._limits = transfer_limits or TransferLimits()
        self._provider = provider
        self._store = store
        self._llm = llm
        self._model = model
        self._provider_name = provider_name
        self._guest_window_s = guest_window_s

    async def create(self, request: TaskRequest) -> TaskRecord:
        """Record a queued task (so it is listed even before a sandbox exists)."""
        record = TaskRecord(
            description=request.description,
            model=self._model or None,
            provider=self._provider_name or None,
            settings=_settings(request),
        )
        trace_dir = self._home / "traces" / record.id
        output_dir = request.output_dir or self._home / "outputs" / record.id
        record = record.model_copy(
            update={"trace_dir": str(trace_dir), "output_dir": str(output_dir)}
        )
        return await self._store.create_task(record)

    async def run(
        self,
        record: TaskRecord,
        request: TaskRequest,
        *,
        on_event: EventHandler | None = None,
        on_runner: Callable[[TaskRunner], None] | None = None,
        host_tools: list[HostTool] | None = None,
    ) -> TaskResult:
        """``host_tools``: tools the caller adds for the model (a crew's whiteboard)."""
        try:
            return await self._run(record, request, on_event, on_runner, host_tools or [])
        except Exception as exc:
            # Without this a task whose sandbox or inbox failed stays "running" for ever.
            with anyio.CancelScope(shield=True), suppress(InvalidTransition):
                await self._store.update(
                    record.id, status="failed", success=False, summary=str(exc), error=str(exc)
                )
            raise

    async def _run(
        self,
        record: TaskRecord,
        request: TaskRequest,
        on_event: EventHandler | None,
        on_runner: Callable[[TaskRunner], None] | None,
        host_tools: list[HostTool],
    ) -> TaskResult:
        started = time.perf_counter()
        info = await self._sandbox(request)
        # Ours alone to stop: made here and not kept, or made for this task by the caller.
        owned = (request.sandbox_id is None and not request.keep_sandbox) or request.owns_sandbox
        try:
            # No files, nothing to copy or check: a warm dispatch skips the worker thread.
            inbox = (
                await anyio.to_thread.run_sync(
                    transfer.copy_in, request.files, Path(info.shared_dir), "inbox", self._limits
                )
                if request.files
                else transfer.TransferReport()
            )
            names = [f"/shared/inbox/{name}" for name in inbox.copied]
            running = _Started(
                lambda: self._store.update(record.id, sandbox_id=info.id, status="running")
            )
            outcome = await beside(
                running.write,
                lambda: self._run_loop(
                    record, request, info, names, on_event, on_runner, host_tools, running
                ),
            )
            report = await self._collect_after(outcome, info, record, owned=owned)
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish_sandbox(record, request, info, owned=owned)
        await self._record_transfer(record, outcome, inbox, report)
        return await self._save(record, outcome, report, info, time.perf_counter() - started)

    async def _collect_after(
        self, outcome: Outcome, info: SandboxInfo, record: TaskRecord, *, owned: bool
    ) -> TransferReport:
        """The outbox; after ``guest_lost`` whatever of it is left (the box may be gone)."""
        if outcome.status != "guest_lost":
            return await self._collect(info, record, owned=owned)
        try:
            return await self._collect(info, record, owned=owned)
        except SandboxError as exc:
            gone = Skipped(path=".", reason="error", detail=str(exc))
            return TransferReport(skipped=[gone], skipped_count=1)

    async def _collect(
        self, info: SandboxInfo, record: TaskRecord, *, owned: bool
    ) -> TransferReport:
        """Copy the outbox from a box that cannot change it meanwhile: a task's own sandbox is
        stopped first, a reused one frozen for the copy (the no-follow walk is safe either way;
        this makes it a consistent snapshot)."""
        async with self._quiet(info, owned=owned):
            return await anyio.to_thread.run_sync(
                transfer.copy_out,
                Path(info.shared_dir),
                "outbox",
                Path(str(record.output_dir)),
                self._limits,
            )

    @asynccontextmanager
    async def _quiet(self, info: SandboxInfo, *, owned: bool) -> AsyncIterator[None]:
        if owned:
            await self._provider.stop(info.id)
            yield
            return
        frozen = await self._provider.freeze(info.id, True)
        try:
            yield
        finally:
            if frozen:
                with anyio.CancelScope(shield=True):
                    await self._provider.freeze(info.id, False)

    async def _record_transfer(
        self,
        record: TaskRecord,
        outcome: Outcome,
        inbox: TransferReport,
        outbox: TransferReport,
    ) -> None:
        """Say in the trace (and ``transfer.json``) what was copied and what was left out."""
        trace_dir = Path(str(record.trace_dir))
        async with TraceWriter(trace_dir) as trace:
            for folder, report in (("inbox", inbox), ("outbox", outbox)):
                if folder == "inbox" and not report.skipped_count:
                    continue  # the prompt already listed the inbox files
                await trace.record(
                    outcome.steps,
                    StepKind.TRANSFER,
                    tool=f"transfer.{folder}",
                    text=f"{folder}: {report.summary()}",
                    result=report.model_dump(mode="json"),
                    error=f"{report.skipped_count} left out" if report.skipped_count else None,
                )
        data = outbox.model_dump_json(indent=1).encode()
        await anyio.to_thread.run_sync(write_atomically, trace_dir / TRANSFER_FILE, data)

    async def _sandbox(self, request: TaskRequest) -> SandboxInfo:
        if request.sandbox_id is not None:
            return await self._provider.info(request.sandbox_id)
        return await create_owned(self._provider, request.sandbox_spec())

    async def _finish_sandbox(
        self, record: TaskRecord, request: TaskRequest, info: SandboxInfo, *, owned: bool
    ) -> None:
        """Record the box's connections in the trace; remove the box if this task made it
        (stopped first, so the log holds its last flows)."""
        if owned and info.spec.network == "nat":
            await self._provider.stop(info.id)  # already stopped if the outbox was collected
        await self.save_network_log(record, info)
        if not request.keep_sandbox and request.sandbox_id is None:
            await self._provider.destroy(info.id)

    async def save_network_log(self, record: TaskRecord, info: SandboxInfo) -> None:
        """Copy a ``nat`` box's connection log into the task's trace (``network.jsonl``)."""
        if info.spec.network != "nat" or record.trace_dir is None:
            return
        try:
            log = await self._provider.network_log(info.id)
        except SandboxNotFound:
            return  # removed under us: nothing left to copy
        rows = [c.model_dump(mode="json") for c in log]
        await anyio.to_thread.run_sync(write_network, Path(str(record.trace_dir)), rows)

    async def _run_loop(
        self,
        record: TaskRecord,
        request: TaskRequest,
        info: SandboxInfo,
        inbox: list[str],
        on_event: EventHandler | None,
        on_runner: Callable[[TaskRunner], None] | None,
        host_tools: list[HostTool],
        running: _Started,
    ) -> Outcome:
        send, receive = anyio.create_memory_object_stream[tuple[str, dict[str, Any]]](math.inf)
        runners: list[TaskRunner] = []
        early: list[tuple[GuestEvent, str]] = []  # faults before the runner existed

        def on_fault(event: GuestEvent, reason: str) -> None:
            if runners:
                runners[0].guest_event(event, reason)
            else:
                early.append((event, reason))

        link = GuestLink(self._provider, info.id, on_fault=on_fault, window_s=self._guest_window_s)
        async with link as guest, TraceWriter(Path(str(record.trace_dir))) as trace:
            runner = TaskRunner(
                description=request.description,
                guest=guest.call,
                llm=self._llm,
                trace=trace,
                settings=request.settings,
                screen=(info.spec.width, info.spec.height),
                network=_network_note(info.spec),
                inbox=inbox,
                on_event=lambda kind, data: send.send_nowait((kind, data)),
                host_tools=host_tools,
                ready=running.wait,
            )
            runners.append(runner)
            for event, reason in early:  # traced; a loss ends the run as soon as it starts
                runner.guest_event(event, reason)
            if on_runner is not None:
                on_runner(runner)

            async def run() -> Outcome:
                with send:  # its end ends the consumer
                    return await runner.run()

            # beside: the runner's errors stay typed (a task group would group them)
            return await beside(lambda: self._consume(record.id, receive, on_event, running), run)
        raise AssertionError("unreachable")  # pragma: no cover - the block always returns

    async def _consume(
        self,
        task_id: str,
        events: MemoryObjectReceiveStream[tuple[str, dict[str, Any]]],
        on_event: EventHandler | None,
        running: _Started,
    ) -> None:
        # No status the runner reports may overtake "running", nor be written when that was
        # refused (the task ended meanwhile; the runner stops at its first model request).
        ours = await running.written()
        async with events:
            async for kind, data in events:
                status = data.get("status") if kind == "status" else None
                if ours and status in ("paused", "waiting_for_user", "running"):
                    await self._store.update(
                        task_id, status=status, error=data.get("reason") or None
                    )
                if on_event is not None:
                    await on_event(kind, {"task_id": task_id, **data})

    async def _save(
        self,
        record: TaskRecord,
        outcome: Outcome,
        report: TransferReport,
        info: SandboxInfo,
        duration_s: float,
    ) -> TaskResult:
        usage = outcome.usage
        artifacts = report.copied
        saved = await self._store.update(
            record.id,
            status=outcome.status,
            success=outcome.success,
            summary=outcome.summary,
            error=outcome.error,
            steps=outcome.steps,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd,
            artifacts=artifacts,
            settings=record.settings.model_copy(update=outcome.limits),
        )
        return TaskResult(
            task_id=saved.id,
            status=outcome.status,
            success=outcome.success,
            summary=outcome.summary,
            steps=outcome.steps,
            artifacts=artifacts,
            output_dir=str(saved.output_dir),
            trace_dir=str(saved.trace_dir),
            sandbox_id=info.id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cost_usd=usage.cost_usd,
            duration_s=round(duration_s, 3),
            transfer=report,
        )


def _network_note(spec: SandboxSpec) -> str:
    """How the system prompt describes the network: a mode, or what an allowlist permits."""
    if spec.network == "nat" and spec.network_allow:
        return "outbound access to these destinations only: " + ", ".join(spec.network_allow)
    return spec.network


def _settings(request: TaskRequest) -> TaskSettings:
    s = request.settings
    return TaskSettings(
        max_steps=s.max_steps,
        timeout_s=s.timeout_s,
        network=request.network,
        network_allow=list(request.network_allow),
        disabled_tools=list(s.disabled_tools),
        tool_domains=list(s.tool_domains),
        max_cost_usd=s.max_cost_usd,
        max_tokens=s.max_tokens,
        approve_tools=list(s.approval_tools),
        inbox_writable=request.inbox_writable,
        desktop=request.desktop,
    )
