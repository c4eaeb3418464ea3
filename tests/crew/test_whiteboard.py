"""The TODO list's rules: what runs next, what can never run, what a person may change."""

from __future__ import annotations

import pytest

from hivecell.crew import whiteboard
from hivecell.crew.models import Crew, Note, Todo
from hivecell.crew.whiteboard import TodoEdit
from hivecell.errors import InvalidParams


def crew(*todos: Todo) -> Crew:
    return Crew(goal="g", agents=2, todos=list(todos))


def todo(todo_id: str, *deps: str, status: str = "pending") -> Todo:
    return Todo.model_validate(
        {"id": todo_id, "title": todo_id, "depends_on": list(deps), "status": status}
    )


def test_the_next_todo_is_the_first_whose_dependencies_are_done() -> None:
    board = crew(todo("a", status="running"), todo("b", "a"), todo("c"))
    assert whiteboard.next_ready(board) == board.todo("c")
    board.todo("a").status = "done"
    assert whiteboard.next_ready(board) == board.todo("b")


@pytest.mark.parametrize(
    ("todos", "fault"),
    [
        ([todo("a", "b"), todo("b", "a")], "cycle: a -> b -> a"),
        ([todo("a", "a")], "cycle: a -> a"),
        ([todo("a", "ghost")], r"unknown TODO\(s\) ghost"),
        ([todo("a"), todo("a")], "ids repeat"),
        ([todo(f"t{n}") for n in range(51)], "at most 50"),
    ],
)
def test_a_plan_that_cannot_run_is_refused_with_its_fault(todos: list[Todo], fault: str) -> None:
    with pytest.raises(InvalidParams, match=fault):
        whiteboard.check_plan(todos)


def test_what_depends_on_a_failed_todo_is_cancelled_transitively() -> None:
    board = crew(todo("a", status="failed"), todo("b", "a"), todo("c", "b"), todo("d"))
    cancelled = whiteboard.cancel_blocked(board)
    assert [t.id for t in cancelled] == ["b", "c"]
    assert board.todo("c").result == "not run: b cancelled, and this TODO depends on it"
    assert board.todo("d").status == "pending"


def test_edits_change_pending_todos_only_and_keep_the_plan_sound() -> None:
    board = crew(todo("a", status="running"), todo("b"), todo("c"))
    whiteboard.edit(board, "c", TodoEdit(title="first now", position=0))
    assert [t.id for t in board.todos] == ["c", "a", "b"] and board.todo("c").title == "first now"
    with pytest.raises(InvalidParams, match="only pending TODOs"):
        whiteboard.edit(board, "a", TodoEdit(title="x"))
    with pytest.raises(InvalidParams, match="cycle"):
        whiteboard.edit(board, "b", TodoEdit(depends_on=["b"]))
    with pytest.raises(InvalidParams, match="no TODO 'zz' in this crew; TODOs: c, a, b"):
        whiteboard.edit(board, "zz", TodoEdit(cancel=True))
    assert [t.id for t in board.todos] == ["c", "a", "b"]  # refused edits changed nothing


def test_an_added_todo_is_new_and_fits_the_plan() -> None:
    board = crew(todo("a"))
    whiteboard.add(board, todo("b", "a"))
    with pytest.raises(InvalidParams, match="only id, title, detail"):
        whiteboard.add(board, todo("c", status="done"))
    with pytest.raises(InvalidParams, match="unknown TODO"):
        whiteboard.add(board, todo("d", "nope"))
    assert [t.id for t in board.todos] == ["a", "b"]


def test_the_rendered_board_shows_status_owner_results_and_notes() -> None:
    board = crew(todo("a", status="done"), todo("b", "a"))
    board.todo("a").agent, board.todo("a").result = "ada", "found 3 vendors"
    board.notes.append(Note(by="ada", text="prices are in /shared/crew/prices.csv"))
    text = whiteboard.render(board)
    assert "- [done, ada] a: a" in text and "result: found 3 vendors" in text
    assert "- [pending] b: b (after a)" in text
    assert "- ada: prices are in /shared/crew/prices.csv" in text


def test_notes_are_capped_oldest_first() -> None:
    board = crew(todo("a"))
    for n in range(whiteboard.MAX_NOTES + 30):
        whiteboard.add_note(board, Note(by="ada", text=f"note {n}"))
    assert len(board.notes) == whiteboard.MAX_NOTES
    assert (
        board.notes[0].text == "note 30"
        and board.notes[-1].text == f"note {whiteboard.MAX_NOTES + 29}"
    )
