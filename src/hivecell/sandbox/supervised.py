"""What every provider that runs its sandboxes under a detached supervisor shares.

A supervisor (``python -m MODULE FOLDER PIDFD``) forks away from its launcher and reports
its pid on a pipe, so sandboxes outlive the process that created them. A pid alone is not
trusted (pids get reused): the process's command line must name the module and the folder.
Sync code: providers call it from worker threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from hivecell.errors import GuestUnavailable, SandboxError, Timeout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hivecell.sandbox.base import SandboxInfo
    from hivecell.sandbox.guest_client import GuestClient


def start(module: str, root: Path, log: Path, env: dict[str, str] | None = None) -> int:
    """Run ``module``'s supervisor for ``root`` detached; returns its pid."""
    pid_r, pid_w = os.pipe()
    try:
        with open(log, "ab") as out:
            out.write(f"--- start {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            launcher = subprocess.Popen(
                [sys.executable, "-I", "-m", module, str(root), str(pid_w)],
                pass_fds=(pid_w,),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # no terminal signals from the CLI's session
                env=env,
            )
        os.close(pid_w)
        pid_w = -1
        reported = os.read(pid_r, 32)
    finally:
        os.close(pid_r)
        if pid_w >= 0:
            os.close(pid_w)
    launcher.wait()
    if not reported:
        raise SandboxError(f"the supervisor did not start; see {log}", op="start")
    return int(reported)


def client(info: SandboxInfo) -> GuestClient:
    """A client to a running sandbox's guest agent (the caller opens and closes it)."""
    from hivecell.sandbox.guest_client import GuestClient

    if info.status != "running":
        raise SandboxError(
            f"sandbox {info.id} is {info.status}; start it first",
            op="connect",
            context={"id": info.id, "status": info.status, "detail": info.detail},
        )
    return GuestClient(info.endpoint)


def alive(module: str, root: Path, pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # A zombie has an empty command line, so it counts as gone.
    return module.encode() in argv and str(root).encode() in argv


def find(module: str, root: Path) -> int | None:
    """The supervisor of a sandbox whose pid was never recorded (a crash while creating)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(module, root, int(entry.name)):
            return int(entry.name)
    return None


def wait_gone(module: str, root: Path, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(module, root, pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def descendants(pid: int) -> set[tuple[int, int]]:
    """``(pid, start time)`` of every process below ``pid`` (the start time tells a reused
    pid from the same process)."""
    found: set[tuple[int, int]] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            start = _start_time(child)
            if start is not None:
                found.add((child, start))
                todo.append(child)
    return found


def wait_all_gone(procs: set[tuple[int, int]], timeout: float) -> bool:
    """Until none of ``procs`` runs (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while any(_start_time(pid) == start for pid, start in procs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _start_time(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def read_exit(path: Path) -> dict[str, object]:
    """How the last run ended (the supervisor's exit.json); empty if unknown."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


async def pings(socket: Path, timeout: float = 5.0) -> bool:
    """Whether the guest answers within ``timeout`` seconds (a socket the host listens on
    holds the ping in its backlog until the agent serves)."""
    from hivecell.sandbox.guest_client import GuestClient  # anyio: not for sync callers

    try:
        async with GuestClient(f"unix:{socket}", connect_timeout=min(2.0, timeout)) as guest:
            await guest.call("ping", timeout=timeout)
    except (GuestUnavailable, Timeout, TimeoutError):
        # Not up yet, or too busy booting to answer (TimeoutError: even to accept within
        # connect_timeout, on a loaded host): keep polling until the boot timeout.
        return False
    return True
