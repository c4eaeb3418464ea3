"""Runs one crew: plan, N agents taking TODOs in their own desktops, one summary.

Every change goes through ``_changed``: it saves the crew (one writer: this runner) and tells
the listeners, then wakes agents waiting for a TODO whose dependencies are done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.hosttools import HostTool, TaskEnds
from hivecell.agent.runner import ChatModel, RunSettings
from hivecell.crew import folder, planner, whiteboard
from hivecell.crew.desk import Desk, TodoRun
from hivecell.crew.models import Crew, Member, Note, Todo, now
from hivecell.errors import HivecellError
from hivecell.sandbox.base import SandboxInfo
from hivecell.sandbox.transfer import TransferLimits
from hivecell.store import TaskStore

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], object]
AGENT_NAMES = ("ada", "bo", "cy", "dee", "eli", "fay", "gus", "hal")

TODO_PROMPT = """\
You are {name}, one of {agents} agents of a crew working towards one goal; you do one TODO \
of it now, in your own desktop.

Crew goal: {goal}

Your TODO ({todo_id}): {title}
{detail}

Files: /shared/inbox holds the crew's input files. /shared/crew is the crew's shared folder: \
it holds what other agents left there, and what you leave there is passed on when you finish. \
Put your results for the person in /shared/outbox.

The whiteboard now (whiteboard_read shows it again later):
{board}

Use whiteboard_note to tell the other agents something they need. When your TODO is done, \
call todo_done with a short summary of the result; if it cannot be done, call todo_failed \
with the reason."""


READ_DOC = "Read the crew's whiteboard: the TODOs, who does what, results and notes."
NOTE_DOC = "Leave a note on the whiteboard that every agent of the crew sees."
DONE_DOC = "Your TODO is done: end it with a short summary of the result."
FAILED_DOC = "Your TODO cannot be done: end it with the reason."


class _NoteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


class _DoneArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    summary: str = Field(min_length=1, max_length=4000)


class _FailedArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=4000)


class _NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CrewRunner:
    def __init__(
        self,
        crew: Crew,
        *,
        settings: RunSettings,
        desk: Desk,
        llm: ChatModel,
        store: TaskStore,
        on_event: EventSink | None = None,
        limits: TransferLimits | None = None,
        review_plan: bool = False,
    ) -> None:
        """``review_plan``: after planning, wait for ``start()`` (a person edits the TODOs
        first)."""
        self.crew = crew
        self._settings = settings
        self._desk = desk
        self._llm = llm
        self._store = store
        self._on_event = on_event or (lambda kind, data: None)
        self._limits = limits or TransferLimits()
        self._wake = anyio.Event()
        self._folder_lock = anyio.Lock()
        self._cancel = anyio.CancelScope()
        self._cancelled_todos: set[str] = set()
        self._go = anyio.Event()
        if not review_plan:
            self._go.set()
        self.cancelled = False

    # --- the whole run -------------------------------------------------------------------
    async def run(self) -> Crew:
        try:
            with self._cancel:
                await self._plan()
                await self._go.wait()
                self.crew.status = "running"
                await self._changed("crew.started", {})
                await self._work()
                await self._summarize()
        except HivecellError as exc:  # planning failed, no desktop, the model is gone
            self.crew.error = str(exc)
            log.warning("crew %s: %s", self.crew.id, exc)
        finally:
            with anyio.CancelScope(shield=True):
                await self._end()
        return self.crew

    def cancel(self) -> None:
        self.cancelled = True
        self._cancel.cancel()

    def interrupt(self, reason: str) -> None:
        """Stop the crew for a reason other than a person's cancel (the server stops)."""
        self.crew.error = self.crew.error or reason
        self._cancel.cancel()

    def start(self) -> None:
        """Let agents take TODOs (a crew made with ``review_plan``)."""
        self._go.set()

    @property
    def waiting_to_start(self) -> bool:
        return not self._go.is_set()

    async def _plan(self) -> None:
        spent: list[Any] = []
        try:
            self.crew.todos = await planner.plan(self._llm, self.crew, spent)
        finally:
            self._account(spent)
        await self._changed("crew.planned", {"todos": self._todos()})

    async def _work(self) -> None:
        self.crew.members = [Member(name=n) for n in AGENT_NAMES[: self.crew.agents]]
        async with anyio.create_task_group() as tg:
            for member in self.crew.members:
                tg.start_soon(self._agent, member, name=f"crew {self.crew.id} {member.name}")

    async def _summarize(self) -> None:
        spent: list[Any] = []
        try:
            self.crew.summary = await planner.summarize(self._llm, self.crew, spent)
        finally:
            self._account(spent)

    async def _end(self) -> None:
        for todo in self.crew.todos:  # what never ran, never will
            if todo.status in ("pending", "running"):
                todo.status = "cancelled"
                todo.result = todo.result or self._why_stopped()
        self.crew.status = self._final_status()
        self.crew.finished_at = now()
        if not self.crew.summary:  # no summary call ran: say where it stopped
            self.crew.summary = f"{self._why_stopped()}.\n\n{whiteboard.render(self.crew)}"
        await self._changed("crew.completed", {"status": self.crew.status})

    def _final_status(self) -> Any:
        if self.cancelled:
            return "cancelled"
        done = sum(todo.status == "done" for todo in self.crew.todos)
        if self.crew.error is None and done and done == len(self.crew.todos):
            return "completed"
        return "partially_completed" if done else "failed"

    def _why_stopped(self) -> str:
        if self.cancelled:
            return "not finished: the crew was cancelled"
        return f"not finished: {self.crew.error or 'the crew stopped'}"

    # --- one agent -----------------------------------------------------------------------
    async def _agent(self, member: Member) -> None:
        try:
            info = await self._desk.open_desktop(member.name)
        except HivecellError as exc:  # the others carry on; with no desktop at all, it fails
            await self.note("crew", f"{member.name} got no desktop: {exc}")
            if self.crew.error is None:
                self.crew.error = f"{member.name} got no desktop: {exc}"
            return
        member.sandbox_id, member.desktop_open = info.id, True
        await self._changed("crew.agent_ready", {"agent": member.name, "sandbox_id": info.id})
        try:
            while (todo := await self._take(member)) is not None:
                await self._run(member, info, todo)
        finally:
            with anyio.CancelScope(shield=True):
                member.desktop_open = False
                try:
                    await self._changed(
                        "crew.agent_done", {"agent": member.name, "sandbox_id": info.id}
                    )
                finally:
                    await self._desk.close_desktop(info.id)

    async def _take(self, member: Member) -> Todo | None:
        """The next TODO this agent may run; waits while the rest depend on running ones."""
        while True:
            await self._block_unreachable()
            todo = whiteboard.next_ready(self.crew)
            if todo is not None:
                todo.status, todo.agent, member.todo = "running", member.name, todo.id
                await self._changed("crew.todo_assigned", self._about(todo))
                return todo
            if not any(t.status == "pending" for t in self.crew.todos):
                return None
            wake = self._wake
            await wake.wait()

    async def _block_unreachable(self) -> None:
        for todo in whiteboard.cancel_blocked(self.crew):
            await self._changed("crew.todo_cancelled", self._about(todo))

    async def _run(self, member: Member, info: SandboxInfo, todo: Todo) -> None:
        await self._sync(folder.push, self.crew.shared_dir, Path(info.shared_dir), info.host_uid)
        try:
            run = await self._desk.run_todo(
                info,
                self._prompt(member, todo),
                self._todo_settings(),
                self._tools(member),
                on_task=lambda task_id: self._started(member, todo, task_id),
            )
        except HivecellError as exc:  # its task could not even start: the TODO failed
            run = TodoRun.failed(todo.task_id or "", f"its task could not run: {exc}")
        finally:
            with anyio.CancelScope(shield=True):
                await self._sync(folder.pull, Path(info.shared_dir), self.crew.shared_dir)
        await self._ended(member, todo, run)

    async def _started(self, member: Member, todo: Todo, task_id: str) -> None:
        # Saved at once: a crash mid-TODO must still say which task ran it.
        todo.task_id = task_id
        member.task_ids.append(task_id)
        await self._changed("crew.todo_started", self._about(todo))

    async def _ended(self, member: Member, todo: Todo, run: TodoRun) -> None:
        member.todo = None
        member.cost_usd += run.cost_usd
        self.crew.cost_usd += run.cost_usd
        if todo.id in self._cancelled_todos:
            todo.status, todo.result = "cancelled", "cancelled by the person"
        else:
            todo.status = "done" if run.success else "failed"
            todo.result = run.summary or run.status
        if run.output_dir:
            target = self.crew.outputs_dir / member.name / todo.id
            await anyio.to_thread.run_sync(folder.gather, Path(run.output_dir), target)
        await self._changed(f"crew.todo_{todo.status}", self._about(todo))
        if self._over_budget():
            self.crew.error = (
                f"the crew spent ${self.crew.cost_usd:.4f}, over its max_cost_usd "
                f"${self.crew.max_cost_usd}; raise it to let a crew do more"
            )
            self._cancel.cancel()

    async def _sync(self, copy: Callable[..., Any], *args: Any) -> None:
        """A crew folder copy; a desktop that broke it costs that copy, not the crew."""
        async with self._folder_lock:
            try:
                await anyio.to_thread.run_sync(lambda: copy(*args, self._limits))
            except (OSError, HivecellError) as exc:
                await self.note("crew", f"the crew folder copy failed: {exc}")

    # --- the agent's prompt and tools ----------------------------------------------------
    def _prompt(self, member: Member, todo: Todo) -> str:
        return TODO_PROMPT.format(
            name=member.name,
            agents=self.crew.agents,
            goal=self.crew.goal,
            todo_id=todo.id,
            title=todo.title,
            detail=todo.detail,
            board=whiteboard.render(self.crew),
        )

    def _todo_settings(self) -> RunSettings:
        """The agents' settings, the task budget capped at what is left of the crew's."""
        if self.crew.max_cost_usd is None:
            return self._settings
        left = max(self.crew.max_cost_usd - self.crew.cost_usd, 1e-6)
        mine = self._settings.max_cost_usd
        return self._settings.model_copy(update={"max_cost_usd": min(left, mine or left)})

    def _over_budget(self) -> bool:
        limit = self.crew.max_cost_usd
        return limit is not None and self.crew.cost_usd >= limit

    def _tools(self, member: Member) -> list[HostTool]:
        async def read(_: _NoArgs) -> str:
            return whiteboard.render(self.crew)

        async def note(args: _NoteArgs) -> dict[str, str]:
            await self.note(member.name, args.text)
            return {"noted": "every agent of the crew sees it now"}

        async def done(args: _DoneArgs) -> None:
            raise TaskEnds(True, args.summary)

        async def failed(args: _FailedArgs) -> None:
            raise TaskEnds(False, args.reason)

        return [
            HostTool("whiteboard_read", READ_DOC, _NoArgs, read),
            HostTool("whiteboard_note", NOTE_DOC, _NoteArgs, note),
            HostTool("todo_done", DONE_DOC, _DoneArgs, done),
            HostTool("todo_failed", FAILED_DOC, _FailedArgs, failed),
        ]

    async def note(self, by: str, text: str) -> None:
        whiteboard.add_note(self.crew, Note(by=by, text=text))
        await self._changed("crew.note", {"by": by, "text": text})

    # --- a person's edits ------------------------------------------------------------------
    async def add_todo(self, todo: Todo) -> Todo:
        added = whiteboard.add(self.crew, todo)
        await self._changed("crew.todos_changed", {"todos": self._todos()})
        return added

    async def edit_todo(self, todo_id: str, change: whiteboard.TodoEdit) -> Todo:
        todo = whiteboard.edit(self.crew, todo_id, change)
        if change.cancel:
            await self._cancel_todo(todo)
        await self._changed("crew.todos_changed", {"todos": self._todos()})
        return todo

    async def _cancel_todo(self, todo: Todo) -> None:
        self._cancelled_todos.add(todo.id)
        if todo.status == "pending":
            todo.status, todo.result = "cancelled", "cancelled by the person"
        elif todo.task_id is not None:
            await self._desk.cancel_task(todo.task_id)

    # --- bookkeeping -----------------------------------------------------------------------
    async def _changed(self, kind: str, data: dict[str, Any]) -> None:
        doc = self.crew.model_dump(mode="json")
        await self._store.save_crew(self.crew.id, self.crew.status, doc)
        self._on_event(kind, {"crew_id": self.crew.id, **data})
        self._wake.set()
        self._wake = anyio.Event()

    def _account(self, responses: list[Any]) -> None:
        for response in responses:
            self.crew.cost_usd += getattr(response, "cost_usd", None) or 0.0

    def _todos(self) -> list[dict[str, Any]]:
        return [todo.model_dump(mode="json") for todo in self.crew.todos]

    def _about(self, todo: Todo) -> dict[str, Any]:
        return {"crew_id": self.crew.id, "todo_id": todo.id, "todo": todo.model_dump(mode="json")}
