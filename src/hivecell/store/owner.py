"""Which process owns a task, and whether that process still exists.

A server and a CLI may share one database; at startup each must interrupt only the tasks whose
owner died, never the ones another live process is running. A pid alone is not enough because
pids are reused, so the token also carries the process start time from /proc.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path


def process_token() -> str:
    return _token(os.getpid())


@functools.cache
def _token(pid: int) -> str:
    # Keyed by pid so a forked child gets its own token rather than its parent's.
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def owner_alive(owner: str | None) -> bool | None:
    """True or False for owners on this host; None when the owner is another host's process."""
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid, ticks = parts
    if host != socket.gethostname():
        return None
    return ticks != "" and _start_ticks(int(pid)) == ticks


def _start_ticks(pid: int) -> str:
    """Field 22 of /proc/PID/stat, the start time in clock ticks since boot; "" if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may contain spaces and parentheses; split after its last ')'.
    return stat.rpartition(")")[2].split()[19]
