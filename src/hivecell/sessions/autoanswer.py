"""Auto-answer: accept an agent's routine confirmations for the person (claude-squad's
"auto-yes"), each one recorded in the audit log.

The screen is judged once output has been quiet for ``SETTLE_SECONDS``, never in the middle
of a redraw. A prompt is answered once: the same screen still showing it afterwards means the
agent did not take the keys, and typing them again would only loop. ``MAX_PER_MINUTE`` caps a
program that asks forever (say, a script printing ``[y/n]`` in a loop); past it the answers
stop and the person is asked as usual, which the audit log says once.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

from hivecell.sessions.recorders import SessionRecorder
from hivecell.sessions.status import ScreenWatch

SETTLE_SECONDS = 0.3
MAX_PER_MINUTE = 20


class AutoAnswerer:
    def __init__(
        self, watch: ScreenWatch, audit: SessionRecorder, type_keys: Callable[[bytes], None]
    ) -> None:
        self.watch = watch
        self.audit = audit
        self.type_keys = type_keys
        self._timer: asyncio.TimerHandle | None = None
        self._answered: str | None = None  # the screen of the last prompt answered
        self._recent: collections.deque[float] = collections.deque()
        self._paused = False

    def output(self) -> None:
        """The agent wrote: look again once it is quiet."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(SETTLE_SECONDS, self._settled)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _settled(self) -> None:
        self._timer = None
        found = self.watch.confirmation()
        if found is None:
            return
        screen = self.watch.text()
        if screen == self._answered:
            return
        answer, line = found
        if not self._allowed():
            return
        self._answered = screen
        self._recent.append(time.monotonic())
        self.type_keys(answer.keys.encode())
        self.audit.event(
            "permission_change",
            target=line.strip(),
            detail={"auto_answer": True, "keys": answer.keys, "pattern": answer.pattern},
        )

    def _allowed(self) -> bool:
        now = time.monotonic()
        while self._recent and now - self._recent[0] > 60:
            self._recent.popleft()
        if len(self._recent) < MAX_PER_MINUTE:
            self._paused = False
            return True
        if not self._paused:
            self._paused = True
            self.audit.event(
                "permission_change",
                detail={"auto_answer": False, "reason": f"more than {MAX_PER_MINUTE} a minute"},
                outcome="blocked",
            )
        return False
