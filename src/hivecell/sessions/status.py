"""Which agent needs me: the screen as a person sees it (rendered by ``pyte``) plus whether
the process runs and when it last wrote.

``exited`` when the agent's process is gone; ``waiting`` when the screen shows one of the
agent's waiting patterns (a confirmation, a question); ``working`` when it shows a working
pattern or the agent wrote within ``QUIET_SECONDS``; ``idle`` otherwise.
"""

from __future__ import annotations

import re
import time
from typing import Literal

import pyte

from hivecell.sessions.plugins import AutoAnswer, Screen

Status = Literal["working", "waiting", "idle", "exited"]
QUIET_SECONDS = 1.5
# Rendering with pyte is slow (about half a megabyte a second): output is kept raw and drawn
# only when someone asks what the screen shows. Of a burst longer than this, only the tail is
# drawn, on a fresh screen: far more than a screen's worth, and the terminal's throughput no
# longer depends on pyte's.
RENDER_TAIL = 64 * 1024


class ScreenWatch:
    def __init__(self, cols: int, rows: int, patterns: Screen) -> None:
        self._screen = pyte.Screen(cols, rows)
        self._stream = pyte.ByteStream(self._screen)
        self._waiting = [re.compile(p, re.MULTILINE) for p in patterns.waiting]
        self._working = [re.compile(p, re.MULTILINE) for p in patterns.working]
        self._auto = [(re.compile(a.pattern, re.MULTILINE), a) for a in patterns.auto_answer]
        self._pending = bytearray()
        self._overflowed = False
        self.last_output = 0.0

    def feed(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) > 2 * RENDER_TAIL:
            del self._pending[:-RENDER_TAIL]
            self._overflowed = True
        self.last_output = time.monotonic()

    def _render(self) -> None:
        if self._overflowed:
            # Start on a line boundary, not inside an escape sequence cut in two.
            cut = self._pending.find(b"\n")
            del self._pending[: cut + 1]
            self._screen.reset()
            self._stream = pyte.ByteStream(self._screen)  # no half-parsed sequence left over
            self._overflowed = False
        if self._pending:
            self._stream.feed(bytes(self._pending))
            self._pending.clear()

    def resize(self, cols: int, rows: int) -> None:
        self._render()  # what came before was drawn at the old size
        self._screen.resize(rows, cols)

    def text(self) -> str:
        self._render()
        return "\n".join(line.rstrip() for line in self._screen.display)

    def _near_cursor(self) -> str:
        """The cursor's line and what is drawn below it (a TUI's option box): a question
        answered earlier, now above the cursor, no longer counts as waiting."""
        self._render()
        y = self._screen.cursor.y
        return "\n".join(line.rstrip() for line in self._screen.display[y:])

    def confirmation(self) -> tuple[AutoAnswer, str] | None:
        """The routine confirmation the screen asks at its cursor, if any, and the line that
        asks it."""
        near = self._near_cursor()
        for pattern, answer in self._auto:
            found = pattern.search(near)
            if found:
                start = near.rfind("\n", 0, found.start()) + 1
                end = near.find("\n", found.end())
                return answer, near[start : end if end >= 0 else len(near)]
        return None

    def status(self, running: bool) -> Status:
        if not running:
            return "exited"
        if any(p.search(self._near_cursor()) for p in self._waiting):
            return "waiting"
        recent = time.monotonic() - self.last_output < QUIET_SECONDS
        if recent or any(p.search(self.text()) for p in self._working):
            return "working"
        return "idle"
