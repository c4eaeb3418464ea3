"""Pausing every process of a running box (SIGSTOP) and resuming them (SIGCONT).

The task service freezes a sandbox it keeps running (a reused one) while it copies the outbox,
so the copy is one consistent snapshot; the no-follow copy in ``transfer.py`` is safe either
way. The box's processes are those of ``procs.box_processes`` (its supervisor's descendants
and its PID namespace's members: the zygote's boot process is the one not below the
supervisor). Signalling them
one by one races with fork, so passes repeat until one finds nothing new; a stopped process
cannot fork, so this ends. Stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from hivecell.sandbox.local import procs

MAX_PASSES = 100
STOP_WAIT = 2.0  # a process in uninterruptible sleep stops when its I/O is done
_STOPPED = ("T", "t", "Z", "X")


def stop(supervisor: int) -> None:
    signalled: set[int] = set()
    for _ in range(MAX_PASSES):
        todo = procs.box_processes(supervisor) - signalled
        if not todo:
            return
        for pid in todo:
            _signal(pid, signal.SIGSTOP)
        signalled |= todo
        _wait_stopped(todo)


def resume(supervisor: int) -> None:
    for pid in procs.box_processes(supervisor):
        _signal(pid, signal.SIGCONT)


def state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat, None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()  # comm may hold spaces and ")"


def _wait_stopped(pids: set[int]) -> None:
    deadline = time.monotonic() + STOP_WAIT
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        waiting = {pid for pid in waiting if state(pid) not in (*_STOPPED, None)}
        if waiting:
            time.sleep(0.001)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
