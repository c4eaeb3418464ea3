"""Status from the rendered screen (pyte) and the process state."""

from __future__ import annotations

import pytest

from hivecell.sessions.plugins import BUILTINS, Screen
from hivecell.sessions.status import ScreenWatch


def test_exited_wins_over_anything_on_screen() -> None:
    watch = ScreenWatch(80, 24, Screen(waiting=[r"\(y/n\)"]))
    watch.feed(b"Proceed? (y/n) ")
    assert watch.status(running=False) == "exited"


def test_a_question_at_the_cursor_is_waiting_and_an_answered_one_is_not() -> None:
    watch = ScreenWatch(80, 24, BUILTINS["shell"].screen)
    watch.feed(b"$ rm -i x\r\nremove x? [y/N] ")
    assert watch.status(running=True) == "waiting"
    watch.feed(b"y\r\n$ ")
    watch.last_output = 0.0  # as if it had been quiet since
    assert watch.status(running=True) == "idle"


def test_recent_output_or_a_working_pattern_is_working() -> None:
    watch = ScreenWatch(80, 24, Screen(working=[r"esc to interrupt"]))
    watch.feed(b"compiling...")
    assert watch.status(running=True) == "working"
    watch.last_output = 0.0
    assert watch.status(running=True) == "idle"
    watch.feed(b"\x1b[2J\x1b[H* Thinking (esc to interrupt)")
    watch.last_output = 0.0
    assert watch.status(running=True) == "working"


def test_the_screen_is_rendered_not_grepped() -> None:
    """Colour codes and cursor moves do not hide a prompt; text erased from the screen no
    longer counts."""
    watch = ScreenWatch(80, 24, Screen(waiting=[r"Do you want to proceed\?"]))
    watch.feed(b"\x1b[1;31mDo you \x1b[0mwant to\x1b[1C")
    watch.feed(b"proceed?")  # the gap is a cursor move, not a space written
    assert watch.status(running=True) == "waiting"
    watch.feed(b"\r\x1b[2K")  # the TUI cleared the line
    watch.last_output = 0.0
    assert watch.status(running=True) == "idle"


@pytest.mark.parametrize("cols,rows", [(40, 10), (200, 60)])
def test_resize_keeps_working(cols: int, rows: int) -> None:
    watch = ScreenWatch(80, 24, Screen(waiting=[r"\?\s*$"]))
    watch.resize(cols, rows)
    watch.feed(b"ok?")
    assert watch.status(running=True) == "waiting"
