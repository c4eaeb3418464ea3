"""At most N sandboxes booting at once on this host: a counting semaphore made of file locks.

Why: a box's boot is CPU-bound (Xvfb, openbox, the guest agent's imports). A hundred boxes
started at once share the cores fairly, so every one of them takes ~100x longer and all of
them miss the boot timeout together: 100 requested, 0 up. Booting a few at a time keeps
each boot short; the rest wait in line, and their boot timeout starts when they leave it.

How: ``N`` slot files in one folder; a booting creator holds an exclusive ``flock`` on one of
them. The kernel drops the lock when the holder's fd closes, so a creator killed mid-boot
(even by SIGKILL) frees its slot; nothing needs cleaning up. Every process that creates
boxes (CLI, SDK, server) opens the same folder, so the bound holds across processes:
``/run/hivecell/boot`` as root (host-wide: the cores are shared by every home; /run is
emptied at reboot), ``<home>/boot`` otherwise (an ordinary user cannot write /run).

Waiting: one waiter at a time is at the head of the line (it holds ``queue.lock``, taken with
a blocking flock in a thread); the others sleep in the kernel on that lock. The head keeps
the slot files open and sleeps on inotify until one of them is closed (a release, or a
holder's death), then tries them again: no busy poll. Without inotify it blocks on the slot
taken longest ago. A cancelled wait ends at once for its caller; the thread it leaves
behind gives back whatever it gets.

Creators with different ``N`` sharing a folder use slots ``0..N-1`` each: the largest ``N``
among them bounds the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
from anyio import to_thread

from hivecell.errors import ConfigError

HOST_LOCK_DIR = Path("/run/hivecell/boot")
QUEUE = "queue.lock"
IN_CLOSE = 0x00000008 | 0x00000010  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC

SlotHook = Callable[[int, bool], None]  # (slot, taken): called once it is taken / before release


def default_slots() -> int:
    """Boots at once for this host: two per usable core (a boot also waits on disk and
    sockets, so one per core leaves the cores idle part of the time)."""
    return max(2, 2 * len(os.sched_getaffinity(0)))


def default_lock_dir(home: Path) -> Path:
    return HOST_LOCK_DIR if os.geteuid() == 0 else Path(home) / "boot"


class BootThrottle:
    """``async with throttle.slot(label):`` runs its body while holding one of ``slots``."""

    def __init__(
        self, lock_dir: Path, slots: int | None = None, *, on_slot: SlotHook | None = None
    ) -> None:
        if slots is not None and slots < 1:
            raise ValueError(f"a boot throttle needs at least one slot, not {slots}")
        self.lock_dir = Path(lock_dir)
        self.slots = slots if slots is not None else default_slots()
        self.on_slot = on_slot
        self.waiting = 0  # creators of this object now waiting in line (for tests and stats)

    @contextlib.asynccontextmanager
    async def slot(self, label: str) -> AsyncIterator[int]:
        """Wait in line (cancellable), then hold a slot for the body; yields its number."""
        ticket = _Ticket()
        self.waiting += 1
        try:
            await to_thread.run_sync(
                self._acquire,
                ticket,
                label,
                abandon_on_cancel=True,
                limiter=anyio.CapacityLimiter(1),  # not the shared pool: a long line would fill it
            )
        except OSError as exc:
            ticket.cancel()
            raise ConfigError(
                f"cannot wait in line to boot in {self.lock_dir}: {exc}; give the provider "
                "a boot_lock_dir this user can write",
                op="create",
                context={"boot_lock_dir": str(self.lock_dir)},
            ) from exc
        except BaseException:
            ticket.cancel()  # the thread gives back a slot it gets from now on
            raise
        finally:
            self.waiting -= 1
        index, fd = ticket.taken()
        try:
            if self.on_slot is not None:
                self.on_slot(index, True)
            yield index
        finally:
            if self.on_slot is not None:
                self.on_slot(index, False)
            os.close(fd)  # releases the flock; the head of the line wakes on the close

    # --- in a worker thread ------------------------------------------------------------
    def _acquire(self, ticket: _Ticket, label: str) -> None:
        got = None
        try:
            self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            queue = os.open(self.lock_dir / QUEUE, OPEN_FLAGS, 0o600)
            try:
                fcntl.flock(queue, fcntl.LOCK_EX)  # sleep until we are the head of the line
                got = self._take_slot(ticket)
                if got is not None:
                    _write_label(got[1], label)
            finally:
                os.close(queue)  # the next in line becomes the head
        finally:
            ticket.give(got)

    def _take_slot(self, ticket: _Ticket) -> tuple[int, int] | None:
        fds = [os.open(self._slot_path(i), OPEN_FLAGS, 0o600) for i in range(self.slots)]
        # A free slot first: closing an inotify instance waits for an RCU grace period
        # (~15 ms here), a price only a creator that has to wait should pay.
        taken = _try_any(fds)
        try:
            if taken is None:
                with _CloseWatch(self.lock_dir) as watch:
                    while taken is None and not ticket.cancelled:
                        taken = _try_any(fds)  # again: one may have ended before the watch
                        if taken is None:
                            self._wait_for_release(watch, fds, ticket)
        finally:
            for fd in fds:
                if taken is None or fd != taken[1]:
                    os.close(fd)
        return taken

    def _wait_for_release(self, watch: _CloseWatch, fds: list[int], ticket: _Ticket) -> None:
        if watch.fd is not None:
            ready = select.select([watch.fd, ticket.wake_r], [], [])[0]
            if watch.fd in ready:
                watch.drain()
            return
        oldest = min(range(len(fds)), key=lambda i: _label_time(fds[i]))
        fcntl.flock(fds[oldest], fcntl.LOCK_EX)  # no inotify: sleep on the likeliest to end
        fcntl.flock(fds[oldest], fcntl.LOCK_UN)  # _try_any takes it (or another) properly

    def _slot_path(self, index: int) -> Path:
        return self.lock_dir / f"slot-{index}"


def holders(lock_dir: Path) -> dict[int, str]:
    """Slots held right now, with the label their holder wrote (``pid label start``; empty
    for a moment after the slot was taken, before its holder wrote it)."""
    held = {}
    for path in sorted(Path(lock_dir).glob("slot-*")):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held[int(path.name.removeprefix("slot-"))] = os.pread(fd, 512, 0).decode(
                errors="replace"
            )
        finally:
            os.close(fd)
    return held


class _Ticket:
    """Hands a slot from the waiting thread to its caller, or back if the caller left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slot: tuple[int, int] | None = None
        self.cancelled = False
        self.wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)

    def give(self, slot: tuple[int, int] | None) -> None:
        """The waiting thread's last word: the slot it took, or None."""
        with self._lock:
            if self.cancelled and slot is not None:
                os.close(slot[1])
            else:
                self._slot = slot
            self._close_pipe()

    def taken(self) -> tuple[int, int]:
        with self._lock:
            assert self._slot is not None, "the waiting thread ended without a slot"
            return self._slot

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._slot is not None:
                os.close(self._slot[1])
                self._slot = None
            if self._wake_w >= 0:
                os.write(self._wake_w, b"x")  # wakes the head out of select()

    def _close_pipe(self) -> None:
        if self._wake_w >= 0:
            os.close(self._wake_w)
            os.close(self.wake_r)
            self._wake_w = self.wake_r = -1


class _CloseWatch:
    """inotify on the lock folder: an event each time a file in it is closed (None if the
    host gives us no inotify instance; the caller then blocks on one slot instead)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.fd: int | None = None

    def __enter__(self) -> _CloseWatch:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            return self  # e.g. fs.inotify.max_user_instances reached
        if libc.inotify_add_watch(fd, os.fsencode(self.folder), IN_CLOSE) < 0:
            os.close(fd)
            return self
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def drain(self) -> None:
        assert self.fd is not None
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass


def _try_any(fds: list[int]) -> tuple[int, int] | None:
    for index, fd in enumerate(fds):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        return index, fd
    return None


def _write_label(fd: int, label: str) -> None:
    """Overwrite, then cut: a reader never sees the file empty (only, briefly, a longer
    previous label's tail)."""
    data = f"{os.getpid()} {label} {time.time():.3f}".encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _label_time(fd: int) -> float:
    try:
        return float(os.pread(fd, 512, 0).split()[-1])
    except (OSError, ValueError, IndexError):
        return 0.0  # unreadable: as old as can be
