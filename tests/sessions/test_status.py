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


def test_a_flood_of_output_is_drawn_from_its_tail() -> None:
    """Megabytes of output (a build log, `yes`) then a question: the screen shows the
    question, drawn from the tail only (pyte is too slow to draw it all)."""
    from hivecell.sessions.status import RENDER_TAIL

    watch = ScreenWatch(80, 24, BUILTINS["shell"].screen)
    line = b"\x1b[1;32mcompiling\x1b[0m module " + b"x" * 40 + b"\r\n"
    for _ in range(20 * RENDER_TAIL // len(line)):
        watch.feed(line)
    watch.feed(b"\x1b[31mOverwrite? [y/N] \x1b[0m")
    watch.last_output = 0.0
    assert watch.status(running=True) == "waiting"
    assert watch.text().splitlines()[-2].startswith("compiling module xxx")
    # Drawn once: asking again renders nothing new and says the same.
    assert watch.status(running=True) == "waiting"
    watch.feed(b"n\r\n$ ")
    watch.last_output = 0.0
    assert watch.status(running=True) == "idle"
