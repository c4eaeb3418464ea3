"""The crew's TODO list: which TODO an idle agent takes next, and the edits a person makes.

Pure functions over ``Crew`` (no I/O): the crew runner calls them under its own lock and
saves the crew after each change.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from hivecell.crew.models import MAX_TODOS, TODO_ENDED, Crew, Note, Todo
from hivecell.errors import InvalidParams

BLOCKED = "not run: {dep} {status}, and this TODO depends on it"
MAX_NOTES = 200  # kept on the whiteboard: a model cannot grow the crew record without end


class TodoEdit(BaseModel):
    """A person's change to one TODO (only ``pending`` ones change; ``cancel`` also stops a
    running one)."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, min_length=1, max_length=300)
    detail: str | None = Field(None, max_length=4000)
    depends_on: list[str] | None = None
    position: int | None = Field(None, ge=0, description="new place in the list (0: first)")
    cancel: bool = False


def check_plan(todos: list[Todo]) -> None:
    """Ids unique, dependencies known, no cycle; raises ``InvalidParams`` naming the fault."""
    if len(todos) > MAX_TODOS:
        raise InvalidParams(f"{len(todos)} TODOs; at most {MAX_TODOS}", op="crew.plan")
    ids = [todo.id for todo in todos]
    if len(set(ids)) != len(ids):
        raise InvalidParams(f"TODO ids repeat: {ids}", op="crew.plan")
    graph = {todo.id: todo.depends_on for todo in todos}
    for todo in todos:
        unknown = sorted(set(todo.depends_on) - set(ids))
        if unknown:
            raise InvalidParams(
                f"TODO {todo.id} depends on unknown TODO(s) {', '.join(unknown)}", op="crew.plan"
            )
    if cycle := _cycle(graph):
        raise InvalidParams(f"TODO dependencies form a cycle: {' -> '.join(cycle)}", op="crew.plan")


def _cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        if state.get(node) == 1:
            return [*path[path.index(node) :], node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for dep in graph[node]:
            if found := visit(dep, [*path, node]):
                return found
        state[node] = 2
        return None

    for node in graph:
        if found := visit(node, []):
            return found
    return None


def next_ready(crew: Crew) -> Todo | None:
    """The first pending TODO whose dependencies are all done."""
    done = {todo.id for todo in crew.todos if todo.status == "done"}
    for todo in crew.todos:
        if todo.status == "pending" and set(todo.depends_on) <= done:
            return todo
    return None


def cancel_blocked(crew: Crew) -> list[Todo]:
    """Cancel pending TODOs that can never run (a dependency failed or was cancelled),
    transitively; returns them."""
    cancelled: list[Todo] = []
    changed = True
    while changed:
        changed = False
        ended_badly = {t.id: t.status for t in crew.todos if t.status in ("failed", "cancelled")}
        for todo in crew.todos:
            bad = [dep for dep in todo.depends_on if dep in ended_badly]
            if todo.status == "pending" and bad:
                todo.status = "cancelled"
                todo.result = BLOCKED.format(dep=bad[0], status=ended_badly[bad[0]])
                cancelled.append(todo)
                changed = True
    return cancelled


def add_note(crew: Crew, note: Note) -> None:
    """Add ``note``; past ``MAX_NOTES`` the oldest go (the board shows the last 50)."""
    crew.notes.append(note)
    del crew.notes[:-MAX_NOTES]


def all_ended(crew: Crew) -> bool:
    return all(todo.status in TODO_ENDED for todo in crew.todos)


def add(crew: Crew, todo: Todo) -> Todo:
    if todo.status != "pending" or todo.agent or todo.task_id or todo.result:
        raise InvalidParams("a new TODO has only id, title, detail and depends_on", op="crew.add")
    check_plan([*crew.todos, todo])
    crew.todos.append(todo)
    return todo


def edit(crew: Crew, todo_id: str, change: TodoEdit) -> Todo:
    todo = _find(crew, todo_id)
    if change.cancel:
        if todo.status in TODO_ENDED:
            raise InvalidParams(f"TODO {todo_id} already ended {todo.status}", op="crew.edit")
        return todo  # the runner cancels it (and stops its task if it runs)
    if todo.status != "pending":
        raise InvalidParams(
            f"TODO {todo_id} is {todo.status}; only pending TODOs can be edited", op="crew.edit"
        )
    updated = todo.model_copy(
        update={
            k: v
            for k, v in change.model_dump(exclude={"position", "cancel"}).items()
            if v is not None
        }
    )
    others = [t for t in crew.todos if t.id != todo_id]
    position = crew.todos.index(todo) if change.position is None else change.position
    candidate = [*others[:position], updated, *others[position:]]
    check_plan(candidate)
    crew.todos[:] = candidate
    return updated


def _find(crew: Crew, todo_id: str) -> Todo:
    try:
        return crew.todo(todo_id)
    except KeyError:
        known = ", ".join(t.id for t in crew.todos) or "none"
        raise InvalidParams(
            f"no TODO {todo_id!r} in this crew; TODOs: {known}", op="crew.edit"
        ) from None


def render(crew: Crew) -> str:
    """The whiteboard as text for an agent's prompt and ``whiteboard_read``."""
    lines = [f"Crew goal: {crew.goal}", "", "TODOs:"]
    for todo in crew.todos:
        who = f", {todo.agent}" if todo.agent else ""
        deps = f" (after {', '.join(todo.depends_on)})" if todo.depends_on else ""
        lines.append(f"- [{todo.status}{who}] {todo.id}: {todo.title}{deps}")
        if todo.result:
            lines.append(f"    result: {todo.result}")
    if crew.notes:
        lines += ["", "Notes:", *(f"- {n.by}: {n.text}" for n in crew.notes[-50:])]
    return "\n".join(lines)
