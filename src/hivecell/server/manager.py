"""``TaskManager``: the server's task runs, one sandbox each, at most N at once, FIFO beyond.

Runs live in a task group that lives as long as the app (see ``app.lifespan``). The live
``TaskRunner`` of each running task is kept for the control routes. Control calls only flip
state (``Control`` is synchronous), so pause/takeover answer at once and the runner stops at
its next checkpoint.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from hivecell.agent.control import Extension
from hivecell.agent.hosttools import HostTool
from hivecell.agent.llm import Model
from hivecell.agent.runner import FINAL, TaskRunner
from hivecell.agent.service import TaskRequest, TaskService
from hivecell.errors import HivecellError, InvalidParams
from hivecell.pool.capacity import Capacity, CapacityExceeded
from hivecell.pool.warm import NAME_PREFIX as POOL_PREFIX
from hivecell.pool.warm import WarmPool
from hivecell.sandbox.base import SandboxInfo, SandboxProvider, SandboxSpec, create_owned
from hivecell.server.errors import Conflict
from hivecell.server.events import EventHub
from hivecell.server.interventions import Note, arguments_of, write_notes
from hivecell.server.settings import Preferences
from hivecell.store import ACTIVE_STATUSES, InvalidTransition, TaskRecord, TaskStore
from hivecell.trace import Actor

log = logging.getLogger(__name__)

SANDBOX_PREFIX = "task-"  # task sandboxes are named task-<task id>: restarts find their owner
CONTROL_ACTIONS = (
    "pause",
    "resume",
    "cancel",
    "instruct",
    "answer",
    "approve",
    "deny",
    "takeover",
    "handback",
)


@dataclass
class Job:
    record: TaskRecord
    request: TaskRequest
    service: TaskService
    client: Model
    runner: TaskRunner | None = None
    sandbox_id: str | None = None
    owns_sandbox: bool = True  # False: it runs in a sandbox a person chose, which stays
    waiting_for: str | None = None  # why it has a slot but no sandbox yet (capacity)
    wait_scope: anyio.CancelScope | None = None  # cancelled by a cancel while it waits
    cancelled: bool = False
    paused: bool = False
    taken_over: bool = False
    instructions: list[str] = field(default_factory=list)
    # Interventions before the runner exists: it writes them first (see ``interventions``).
    notes: list[Note] = field(default_factory=list)
    host_tools: list[HostTool] = field(default_factory=list)  # a crew agent's extra tools
    announced: object = None  # the pending question or approval last published

    @property
    def id(self) -> str:
        return self.record.id


class TaskManager:
    def __init__(
        self,
        *,
        provider: SandboxProvider,
        store: TaskStore,
        hub: EventHub,
        prefs: Callable[[], Preferences],
        capacity: Capacity,
        pool: WarmPool,
    ) -> None:
        self.provider = provider
        self.store = store
        self.hub = hub
        self.capacity = capacity
        self.pool = pool
        self._prefs = prefs
        self._queue: OrderedDict[str, Job] = OrderedDict()
        self._running: dict[str, Job] = {}
        self._changed = anyio.Event()
        self._ended: dict[str, anyio.Event] = {}  # tasks someone waits on (a crew's)

    # --- lifetime ------------------------------------------------------------------------
    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Dispatch queued jobs until cancelled (the app's lifespan owns this task)."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            await self._dispatch(tg)

    async def _dispatch(self, tg: TaskGroup) -> None:
        while True:
            self._changed = anyio.Event()
            while len(self._running) < self._prefs().max_concurrent:
                job = self._next_ready()
                if job is None:
                    break
                self._running[job.id] = job
                tg.start_soon(self._run_job, job, name=f"task {job.id}")
            await self._changed.wait()

    def _next_ready(self) -> Job | None:
        """The first queued job that can start: one that waits for a sandbox a person chose
        stays in line while another task runs there."""
        for task_id, job in self._queue.items():
            chosen = job.request.sandbox_id
            if chosen is not None and self.task_of_sandbox(chosen) is not None:
                continue
            del self._queue[task_id]
            if chosen is not None:
                job.sandbox_id, job.owns_sandbox = chosen, False
            return job
        return None

    def poke(self) -> None:
        """Something changed (a slot freed, a job queued, the limit raised): dispatch again."""
        self._changed.set()

    async def interrupt_queued(self) -> None:
        """At shutdown: queued tasks will not run in this process; say so in their records."""
        with anyio.CancelScope(shield=True):
            for task_id, job in list(self._queue.items()):
                await job.client.aclose()
                await _try_update(
                    self.store,
                    task_id,
                    status="interrupted",
                    error="the server stopped before the task started",
                )

    # --- creating ------------------------------------------------------------------------
    def enqueue(
        self,
        record: TaskRecord,
        request: TaskRequest,
        service: TaskService,
        client: Model,
        host_tools: list[HostTool] | None = None,
    ) -> None:
        self._queue[record.id] = Job(record, request, service, client, host_tools=host_tools or [])
        self.hub.publish("task.created", {"task_id": record.id, "task": _public(record)})
        self.poke()

    def counts(self) -> dict[str, int]:
        return {
            "running": len(self._running),
            "queued": len(self._queue),
            "max_concurrent": self._prefs().max_concurrent,
        }

    def position(self, task_id: str) -> int | None:
        for index, queued in enumerate(self._queue, 1):
            if queued == task_id:
                return index
        return None

    # --- one run -------------------------------------------------------------------------
    async def _run_job(self, job: Job) -> None:
        try:
            await self._run_in_sandbox(job)
        except Exception as exc:  # the service recorded it as failed; the server goes on
            await _try_update(
                self.store, job.id, status="failed", success=False, summary=str(exc), error=str(exc)
            )
        finally:
            with anyio.CancelScope(shield=True):
                del self._running[job.id]
                await job.client.aclose()
                await write_notes(job.record, job.notes)
                await self._finished(job.id)
                self.poke()

    async def _run_in_sandbox(self, job: Job) -> None:
        info = await self._sandbox_for(job)
        if info is None:  # cancelled while it waited for room
            await self._end_cancelled(job)
            return
        try:
            if job.cancelled:
                await self._end_cancelled(job)
                return
            await self._run_service(job, info)
        finally:
            if job.owns_sandbox:
                with anyio.CancelScope(shield=True):
                    await self._record_network(job, info)
                    await self.destroy_sandbox(info.id)

    async def _end_cancelled(self, job: Job) -> None:
        await self.store.update(
            job.id, status="cancelled", success=False, summary="cancelled by the person"
        )

    async def _sandbox_for(self, job: Job) -> SandboxInfo | None:
        """A person's chosen sandbox, a warm one of the task's shape, or a new one once
        capacity admits it (None: cancelled while waiting for room)."""
        if not job.owns_sandbox:
            return await self._chosen_sandbox(job)
        spec = spec_for(self._prefs(), job.request)
        info = await self.pool.take(spec)
        if info is None:
            named = spec.model_copy(update={"name": SANDBOX_PREFIX + job.id})
            info = await self._new_sandbox(job, named)
            if info is None:
                return None
            # Recorded at once: a restart during a long run finds its owner. A warm one is
            # recorded by the service as it starts (and a restart removes pool sandboxes).
            with anyio.CancelScope(shield=True):
                await self.store.update(job.id, sandbox_id=info.id)
        job.sandbox_id = info.id
        self.hub.publish("sandbox.created", {"sandbox_id": info.id, "task_id": job.id})
        return info

    async def _chosen_sandbox(self, job: Job) -> SandboxInfo:
        assert job.sandbox_id is not None
        info = await self.provider.info(job.sandbox_id)
        if info.status != "running":
            raise Conflict(
                f"sandbox {info.id} is {info.status}: start it, or run the task without sandbox_id",
                op="create_task",
                context={"sandbox_id": info.id, "status": info.status},
            )
        return info

    async def _new_sandbox(self, job: Job, spec: SandboxSpec) -> SandboxInfo | None:
        info: SandboxInfo | None = None

        def waiting(why: CapacityExceeded | None) -> None:
            job.waiting_for = str(why) if why else None
            self.hub.publish("task.waiting", {"task_id": job.id, "reason": job.waiting_for})

        with anyio.CancelScope() as job.wait_scope:
            if job.cancelled:
                return None
            async with self.capacity.admitted(
                spec, wait=True, make_room=self.pool.evict_one, on_wait=waiting
            ):
                # Shielded: a cancel during boot must not leave a half-made sandbox behind.
                with anyio.CancelScope(shield=True):
                    info = await create_owned(self.provider, spec)
        job.wait_scope = None
        return info

    async def _record_network(self, job: Job, info: SandboxInfo) -> None:  # its own box
        """The final connection log into the trace: stopped first, the supervisor writes
        the last counts when it stops."""
        if info.spec.network != "nat":
            return
        try:
            await self.provider.stop(info.id)
            await job.service.save_network_log(job.record, info)
        except HivecellError as exc:  # the task's result stands; only the log is missing
            log.warning("task %s: cannot record its network log: %s", job.id, exc)

    async def _run_service(self, job: Job, info: SandboxInfo) -> None:
        # Its own sandbox is stopped before the outbox is collected; a chosen one frozen.
        update = {"sandbox_id": info.id, "owns_sandbox": job.owns_sandbox}
        request = job.request.model_copy(update=update)
        await job.service.run(
            job.record,
            request,
            on_event=lambda kind, data: self._on_event(job, kind, data),
            on_runner=lambda runner: self._attach(job, runner),
            host_tools=job.host_tools,
        )

    def _attach(self, job: Job, runner: TaskRunner) -> None:
        """Apply what people asked for while the sandbox was still booting."""
        job.runner = runner
        for note in job.notes:
            runner.intervened(note.action, note.by, note.arguments, ts=note.ts)
        job.notes.clear()
        for text in job.instructions:
            runner.control.instruct(text)
        if job.paused:
            runner.control.pause()
        if job.cancelled:
            runner.control.cancel()

    async def _on_event(self, job: Job, kind: str, data: dict[str, Any]) -> None:
        if kind == "step":
            self.hub.publish("task.step", data)
        elif kind == "status" and data["status"] not in FINAL:
            self.hub.publish("task.status", data)
            self._publish_pending(job)

    def _publish_pending(self, job: Job) -> None:
        """Once per question or approval: status events are consumed after the fact, so a
        late one would otherwise announce the pending request again (and a client answering
        the repeat would answer nothing, or the next request)."""
        pending = job.runner.control.pending if job.runner else None
        if pending is not None and pending is not job.announced:
            job.announced = pending
            kind = "task.approval" if pending.kind == "approval" else "task.question"
            self.hub.publish(kind, {"task_id": job.id, "pending": pending.as_dict()})

    async def _finished(self, task_id: str) -> None:
        record = await self.store.get(task_id)
        if record.status in ACTIVE_STATUSES:
            # The run ended without a final status (the server is shutting down).
            record = await self.store.update(
                task_id, status="interrupted", error="the server stopped before the task ended"
            )
        data = {"task_id": task_id, "status": str(record.status), "reason": record.summary or ""}
        self.hub.publish("task.status", data)
        self.hub.publish("task.finished", {"task_id": task_id, "task": _public(record)})
        if (ended := self._ended.pop(task_id, None)) is not None:
            ended.set()

    async def wait_ended(self, task_id: str) -> TaskRecord:
        """Wait until a task this manager runs or queues has ended; its final record."""
        if task_id in self._queue or task_id in self._running:
            await self._ended.setdefault(task_id, anyio.Event()).wait()
        return await self.store.get(task_id)

    # --- control -------------------------------------------------------------------------
    async def control(
        self,
        task_id: str,
        action: str,
        text: str = "",
        extension: Extension | None = None,
        by: Actor | None = None,
    ) -> TaskRecord:
        """Apply ``action``; once it is accepted, the trace records it as done ``by`` whom."""
        record = await self.store.get(task_id)  # unknown ids: 404
        note = Note(action, by or Actor(kind="api"), arguments_of(action, text, extension))
        if task_id in self._queue:
            job = self._queue[task_id]
            job.notes.append(note)  # first: a cancel writes the notes of a job that never ran
            try:
                await self._control_queued(job, action, text)
            except HivecellError:
                job.notes.remove(note)
                raise
        elif task_id in self._running:
            job = self._running[task_id]
            pending = job.runner.control.pending if job.runner else None
            _control_running(job, action, text, extension)
            if pending is not None and action in ("answer", "approve", "deny"):
                note.arguments["tool"] = pending.tool  # which request this answered
            _noted(job, note)
        else:
            raise Conflict(
                f"task {task_id} is {record.status}: it cannot be controlled now",
                op=action,
                context={"id": task_id, "status": str(record.status)},
            )
        return await self.store.get(task_id)

    async def _control_queued(self, job: Job, action: str, text: str) -> None:
        if action == "cancel":
            del self._queue[job.id]  # before any await: the dispatcher must not start it
            await self._end_unstarted(job)
            return
        _control_before_runner(job, action, text)

    async def _end_unstarted(self, job: Job) -> None:
        with anyio.CancelScope(shield=True):  # a dropped request must not leave it half-ended
            await job.client.aclose()
            await self.store.update(
                job.id, status="cancelled", success=False, summary="cancelled before it started"
            )
            await write_notes(job.record, job.notes)
            await self._finished(job.id)

    async def note_ended(self, record: TaskRecord, note: Note) -> None:
        """An intervention on a task that already ended (a retry): no runner writes for it."""
        await write_notes(record, [note], step=record.steps)

    def pending(self, task_id: str) -> dict[str, Any] | None:
        job = self._running.get(task_id)
        if job is None or job.runner is None or job.runner.control.pending is None:
            return None
        return job.runner.control.pending.as_dict()

    def live(self, task_id: str) -> dict[str, Any]:
        """What only the running process knows: pending question, take-over, queue place,
        and the step and token counts so far (the record gets them when the task ends)."""
        job = self._running.get(task_id) or self._queue.get(task_id)
        view: dict[str, Any] = {
            "pending": self.pending(task_id),
            "taken_over": bool(job and job.taken_over),
            "queue_position": self.position(task_id),
            "waiting_for": job.waiting_for if job else None,
            "pause_reason": None,
            "limit": None,
            "fault": None,
        }
        if job is not None and job.runner is not None:
            usage = job.runner.usage
            control = job.runner.control
            view |= {
                "pause_reason": control.pause_reason or None,
                "limit": control.limit,
                "fault": control.fault,
                "steps": job.runner.steps,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost_usd": usage.cost_usd,
                # Budgets as they stand now: a resume with more raises them.
                "budget": {
                    "max_cost_usd": job.runner.settings.max_cost_usd,
                    "max_tokens": job.runner.settings.max_tokens,
                },
            }
        return view

    async def stop_all(self, by: Actor | None = None) -> list[str]:
        """Cancel every task not yet ended; returns their ids (none the second time).

        Everything is taken and signalled before the first await, so a task finishing or a
        slot freeing meanwhile can neither start a queued task nor make us miss one.
        """
        note = Note("stop_all", by or Actor(kind="api"))
        queued = [self._queue.pop(task_id) for task_id in list(self._queue)]
        stopped = [job.id for job in queued]
        for job in queued:
            job.notes.append(note)
        for job in list(self._running.values()):
            if job.cancelled or (job.runner and job.runner.status in FINAL):
                continue
            _control_running(job, "cancel", "")
            _noted(job, note)
            stopped.append(job.id)
        for job in queued:
            await self._end_unstarted(job)
        return stopped

    # --- sandboxes -----------------------------------------------------------------------
    def task_of_sandbox(self, sandbox_id: str) -> str | None:
        for job in self._running.values():
            if job.sandbox_id == sandbox_id:
                return job.id
        return None

    def may_drive(self, sandbox_id: str) -> bool:
        """Whether VNC input may reach this sandbox now: a running task's desktop only while
        a person has taken the task over; a sandbox without a task always."""
        task_id = self.task_of_sandbox(sandbox_id)
        if task_id is None:
            return not self.pool.is_warm(sandbox_id)  # a warm desktop must stay untouched
        return self._running[task_id].taken_over

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        if not await self.pool.release(sandbox_id):
            await self.provider.destroy(sandbox_id)
        self.capacity.changed()
        self.poke()
        self.hub.publish("sandbox.destroyed", {"sandbox_id": sandbox_id})

    async def recover(self) -> dict[str, list[str]]:
        """At start-up: interrupt the tasks of dead processes and remove their sandboxes.

        Sandboxes made for a task (named ``task-<id>`` or recorded on the task) are removed
        unless that task is still active in another live process, and so are the warm pool's
        (named ``pool-<n>``); sandboxes people created themselves are kept (they show up in
        ``GET /sandboxes`` again).
        """
        interrupted = await self.store.mark_interrupted()
        live = {r.id: r for r in await self.store.list(status=ACTIVE_STATUSES, limit=10_000)}
        by_sandbox = {r.sandbox_id: r.id for r in live.values() if r.sandbox_id}
        owned = {await _sandbox_of(self.store, task_id) for task_id in interrupted}
        removed = []
        for info in await self.provider.list():
            task_id = _task_of(info) or by_sandbox.get(info.id)
            leftover = info.id in owned and info.id not in by_sandbox
            warm = (info.spec.name or "").startswith(POOL_PREFIX) and info.id not in by_sandbox
            if (task_id and task_id not in live) or leftover or warm:
                await self.provider.destroy(info.id)
                removed.append(info.id)
        return {"interrupted": interrupted, "sandboxes_removed": removed}


def _noted(job: Job, note: Note) -> None:
    """Into the trace through the runner (in order with its steps), or kept until it exists."""
    if job.runner is not None:
        job.runner.intervened(note.action, note.by, note.arguments, ts=note.ts)
    else:
        job.notes.append(note)


def _control_running(job: Job, action: str, text: str, extension: Extension | None = None) -> None:
    runner = job.runner
    if runner is None:
        _control_before_runner(job, action, text)
        return
    if runner.status in FINAL:
        raise Conflict(
            f"task {job.id} already ended ({runner.status})",
            op=action,
            context={"id": job.id, "status": runner.status},
        )
    _apply(job, runner, action, text, extension)


# What a resume must add for each limit a task can pause at (the first field is the hint).
EXTENSION_FOR_LIMIT = {
    "timed_out": ("extra_time_s",),
    "max_steps_reached": ("extra_steps",),
    "budget_exceeded": ("extra_cost_usd", "extra_tokens"),
}


def _check_extension(job: Job, limit: str | None, extension: Extension | None) -> None:
    """A task paused at a limit resumes only with more of what it ran out of: resuming
    without would pause it again at once."""
    if limit is None:
        return
    given = extension.model_dump(exclude_none=True) if extension else {}
    needed = _needed_extension(job, limit, given)
    if needed:
        raise InvalidParams(
            f"task {job.id} is paused at its limit ({limit}): resume it with "
            f"{needed} in the body, or cancel it",
            op="resume",
            context={"id": job.id, "limit": limit, "field": needed.split()[0]},
        )


def _needed_extension(job: Job, limit: str, given: dict[str, Any]) -> str:
    """What the body lacks ("" when nothing): more of every budget used up, or one field."""
    spent = job.runner.exceeded_budgets() if job.runner and limit == "budget_exceeded" else ()
    if spent:
        return " and ".join(name for name in spent if not given.get(name))
    fields = EXTENSION_FOR_LIMIT.get(limit, ())
    if fields and not any(given.get(name) for name in fields):
        return " or ".join(fields)
    return ""


def _apply(
    job: Job, runner: TaskRunner, action: str, text: str, extension: Extension | None = None
) -> None:
    control = runner.control
    if action in ("answer", "approve", "deny") and control.pending is None:
        raise Conflict(f"task {job.id} is not waiting for an answer or an approval", op=action)
    if action in ("pause", "takeover"):
        job.taken_over = job.taken_over or action == "takeover"
        control.pause()
    elif action in ("resume", "handback"):
        _check_extension(job, control.limit, extension)
        job.taken_over = False
        control.resume(text or None, extension)
    elif action == "cancel":
        job.cancelled = True
        control.cancel()
    else:
        _reply(control, action, text)


def _reply(control: Any, action: str, text: str) -> None:
    if action == "instruct":
        control.instruct(text)
    elif action == "answer":
        control.answer(text)
    elif action == "approve":
        control.approve()
    else:
        control.deny(text)


def _control_before_runner(job: Job, action: str, text: str) -> None:
    """Queued or still booting: remember the wish and apply it when the runner exists."""
    if action in ("pause", "takeover"):
        job.paused = True
        job.taken_over = job.taken_over or action == "takeover"
    elif action in ("resume", "handback"):
        job.paused = job.taken_over = False
    elif action == "cancel":
        job.cancelled = True
        if job.wait_scope is not None:  # waiting for room: stop waiting now
            job.wait_scope.cancel()
    elif action == "instruct" and text.strip():
        job.instructions.append(text)
    else:
        raise Conflict(f"task {job.id} has not started: nothing to {action}", op=action)


def spec_for(prefs: Preferences, request: TaskRequest, name: str | None = None) -> SandboxSpec:
    """The sandbox a task runs in (also the warm pool's default shape)."""
    defaults = prefs.sandbox
    return request.sandbox_spec(
        memory_mb=defaults.memory_mb, cpus=defaults.cpus, disk_mb=defaults.disk_mb, name=name
    )


def default_spec(prefs: Preferences) -> SandboxSpec:
    """What a task gets when it asks for nothing special: the shape the pool keeps warm."""
    request = TaskRequest(
        description="-",
        network=prefs.sandbox.network,
        resolution=(prefs.sandbox.width, prefs.sandbox.height),
        desktop=prefs.sandbox.desktop,
    )
    return spec_for(prefs, request)


def _task_of(info: SandboxInfo) -> str | None:
    name = info.spec.name or ""
    return name[len(SANDBOX_PREFIX) :] if name.startswith(SANDBOX_PREFIX) else None


async def _sandbox_of(store: TaskStore, task_id: str) -> str | None:
    return (await store.get(task_id)).sandbox_id


async def _try_update(store: TaskStore, task_id: str, **fields: Any) -> None:
    with suppress(InvalidTransition, HivecellError):  # already final: the service said why
        await store.update(task_id, **fields)


def _public(record: TaskRecord) -> dict[str, Any]:
    return record.model_dump(mode="json", exclude={"owner"})


def public_record(record: TaskRecord, live: Mapping[str, Any]) -> dict[str, Any]:
    """The record as the API shows it, with what the running process knows on top.
    ``budget`` is the task's cost and token limits (null: none)."""
    budget = {
        "max_cost_usd": record.settings.max_cost_usd,
        "max_tokens": record.settings.max_tokens,
    }
    return _public(record) | {"budget": budget} | dict(live)
