"""Which host processes belong to a running box. Stdlib only (the supervisor's imports).

A box's processes are its supervisor's descendants (bwrap, the box's init, what runs under
them) and everything in the box's PID namespace. The two differ by the boot process a
zygote forked into the box (zygote/) and what boot starts: they are in the box, but below
the zygote, not the supervisor.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = "/proc"


def parents() -> dict[int, int]:
    """pid -> parent pid, in one pass over /proc."""
    found = {}
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # exited while we looked
            found[int(entry.name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return found


def descendants(root: int, table: dict[int, int] | None = None) -> set[int]:
    """Every process below ``root`` (``table``: from ``parents``, to reuse one pass)."""
    children: dict[int, list[int]] = {}
    for pid, parent in (parents() if table is None else table).items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def namespace_members(pids: set[int], table: dict[int, int] | None = None) -> set[int]:
    """Every process in a PID namespace one of ``pids`` is in, other than our own."""
    ours = _pid_namespace(os.getpid())
    wanted = {_pid_namespace(pid) for pid in pids} - {ours, None}
    if not wanted:
        return set()
    candidates = parents() if table is None else table
    return {pid for pid in candidates if _pid_namespace(pid) in wanted}


def box_processes(supervisor: int) -> set[int]:
    """The box's processes (the supervisor itself not included)."""
    table = parents()
    below = descendants(supervisor, table)
    return below | namespace_members(below, table)


def _pid_namespace(pid: int) -> str | None:
    try:
        return str(Path(PROC, str(pid), "ns", "pid").readlink())
    except OSError:
        return None
