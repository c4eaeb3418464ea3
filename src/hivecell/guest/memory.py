"""Give the memory a burst of work freed back to the host once the agent is idle.

glibc keeps what a request freed (a 4 MB screen grab, the PNG encoder's buffers, a large
command output) in its heap for reuse; in an agent that then idles for minutes that is ~11
MB per sandbox the host never gets back. The box's environment caps malloc at one arena
(``bwrap.MALLOC_TUNABLES``), and ``malloc_trim`` returns the free pages of that heap, its
middle included. It runs once the agent has been quiet for ``quiet`` seconds after some
work, never while a request runs, so a burst of calls keeps its buffers for reuse.

Before it, ``release`` lets go of what is not heap: the screen grabber's shared-memory
segment (a full frame, 4 MB at 1280x800, counted half to the agent and half to Xvfb) is
made again by the next screenshot in a few ms.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator

import anyio
import anyio.to_thread

log = logging.getLogger("hivecell.guest.memory")
QUIET_S = 1.0


class IdleTrim:
    def __init__(
        self,
        quiet: float = QUIET_S,
        trim: Callable[[], bool] | None = None,
        release: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.quiet = quiet
        self._trim = trim or malloc_trim
        self._release = release
        self._busy = 0
        self._changed = anyio.Event()
        self.trims = 0

    @contextlib.contextmanager
    def activity(self) -> Iterator[None]:
        """Around each request: its end starts the quiet period again."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._changed.set()

    async def run(self) -> None:
        """Until cancelled: trim after each quiet period that follows work (only the end of a
        request wakes this; one still running makes it wait for that one's end)."""
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            await self._until_quiet()
            if self._busy:
                continue
            if self._release is not None:
                await self._release()
            if self._busy == 0 and await anyio.to_thread.run_sync(self._trim):
                self.trims += 1

    async def _until_quiet(self) -> None:
        while True:
            with anyio.move_on_after(self.quiet) as scope:
                await self._changed.wait()
            if scope.cancelled_caught:
                return
            self._changed = anyio.Event()


def malloc_trim() -> bool:
    """True when the C library has ``malloc_trim`` (glibc) and ran it."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes  # on the first trim: boot does not need it

    try:
        fn: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        log.info("no malloc_trim in this C library; idle memory is not trimmed")
        return None
    return fn
