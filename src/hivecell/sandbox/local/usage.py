"""What one local sandbox uses right now: CPU time, memory, disk and processes.

A sampler calls this for every box every ~2 s, so it reads as little as it can:

- which processes: the box's cgroup lists them (``cgroup.procs``, one read) when the cgroup
  limits backend runs it; otherwise one scan of /proc finds its processes (``procs.box_processes``).
  The supervisor itself always counts (it is what the box costs beyond its own processes);
  its helpers outside the cgroup (the output copier, slirp4netns) are only found by the scan.
- CPU: a cgroup v2 ``cpu.stat`` (``usage_usec``, which keeps what exited processes used) plus
  the supervisor's own time; else each process's user + system ticks, with those of the
  children it has reaped (``cutime``/``cstime``) so a finished command's time is not lost.
- memory: RSS from each process's ``statm`` (cheap), PSS from its ``smaps_rollup``, which
  walks every page the process maps (~0.3-3 ms for a guest agent or Xvfb on this host, ten
  times what everything else costs). So PSS is read again only when a process is new, its RSS
  moved by more than ``PSS_DRIFT``, or the reading is older than ``PSS_MAX_AGE``; in between
  it is scaled by the RSS. The cgroup's ``memory.current`` is not used: it has no PSS, and
  counts page cache the box did not ask for.
- disk: the mounted image's used blocks (``statvfs``), or the folder's size in ``watch`` mode.

Sync code: the provider runs it in a worker thread.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from hivecell.sandbox.base import SandboxUsage
from hivecell.sandbox.local import disk, procs, state
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.state import SandboxMeta

MB = 1024 * 1024
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
PROC = Path("/proc")
PSS_MAX_AGE = 30.0  # seconds a process's PSS reading is reused (scaled by its RSS), +-50 %
PSS_DRIFT = 0.1  # an RSS change beyond this fraction reads PSS again at once
# A box that forks hundreds of fresh processes must not make one reading walk all their page
# tables (a round waits for every box): past this many, a process counts its RSS as its PSS
# (an upper bound) until a later reading gets to it.
PSS_READS_PER_CALL = 32


class PssReading:
    __slots__ = ("expires", "pss_kb", "rss_kb")

    def __init__(self, rss_kb: int, pss_kb: int, now: float) -> None:
        self.rss_kb, self.pss_kb = rss_kb, pss_kb
        # spread: boxes started together must not all walk their page tables in one round
        self.expires = now + PSS_MAX_AGE * random.uniform(0.5, 1.5)


class UsageReader:
    """Reads sandboxes' usage, keeping each process's last PSS reading (per sandbox, so
    what a destroyed box leaves is dropped with ``forget``). Thread-safe for different
    sandboxes at once, which is how the provider calls it."""

    def __init__(self) -> None:
        self._pss: dict[str, dict[int, PssReading]] = {}

    def forget(self, sandbox_id: str) -> None:
        self._pss.pop(sandbox_id, None)

    def read(self, layout: Layout, meta: SandboxMeta) -> SandboxUsage:
        disk_mb = disk_bytes(layout) / MB
        pid = meta.supervisor_pid
        if pid is None or not state.supervisor_alive(layout, pid):
            self.forget(layout.sandbox_id)
            return _usage(layout, disk_used_mb=disk_mb)
        cgroups = _cgroups(layout)
        pids = _cgroup_pids(cgroups)
        if pids is None:
            pids = procs.box_processes(pid)
        pids.add(pid)
        rss, pss = self._memory_kb(layout.sandbox_id, pids)
        cpu = _cgroup_cpu(cgroups)
        cpu = cpu + cpu_seconds([pid]) if cpu is not None else cpu_seconds(pids)
        return _usage(
            layout,
            disk_used_mb=disk_mb,
            cpu_seconds=cpu,
            memory_rss_mb=rss / 1024,
            memory_pss_mb=pss / 1024,
            processes=len(pids),
        )

    def _memory_kb(self, sandbox_id: str, pids: set[int]) -> tuple[int, int]:
        before = self._pss.get(sandbox_id, {})
        now = time.monotonic()
        kept: dict[int, PssReading] = {}
        total_rss = total_pss = 0
        budget = PSS_READS_PER_CALL
        for pid in pids:
            rss = rss_kb(pid)
            last = before.get(pid)
            stale = last is None or now > last.expires or _drifted(last.rss_kb, rss)
            if stale and budget > 0:
                budget -= 1
                rss, pss = memory_kb(pid)
                last = PssReading(rss, pss, now)
            elif last is None:
                pss = rss  # over the budget: an upper bound until a later reading
            elif last.rss_kb:
                pss = last.pss_kb * rss // last.rss_kb
            else:
                pss = 0
            if last is not None:
                kept[pid] = last
            total_rss, total_pss = total_rss + rss, total_pss + pss
        self._pss[sandbox_id] = kept  # exited processes drop out here
        return total_rss, total_pss


def _drifted(then: int, now: int) -> bool:
    return abs(now - then) > then * PSS_DRIFT


def _usage(layout: Layout, **fields: float) -> SandboxUsage:
    values = {"cpu_seconds": 0.0, "memory_rss_mb": 0.0, "memory_pss_mb": 0.0, "processes": 0}
    return SandboxUsage.model_validate(
        {"sandbox_id": layout.sandbox_id, "time": time.time(), **values, **fields}
    )


# --- which processes -------------------------------------------------------------------------
def _cgroups(layout: Layout) -> list[Path]:
    """The box's cgroups from its last plan (written at each start)."""
    try:
        plan = json.loads(layout.plan.read_bytes())
        return [Path(cg) for cg in plan["limits"]["cgroups"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _cgroup_pids(cgroups: list[Path]) -> set[int] | None:
    """The processes in the box's cgroup (every controller's cgroup lists the same ones)."""
    for cg in cgroups:
        try:
            return {int(line) for line in (cg / "cgroup.procs").read_text().split()}
        except OSError:
            continue  # removed meanwhile, or not this controller's: try the next
    return None


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    raw = _read_proc(int(pid), "stat")
    if not raw:
        return None  # exited meanwhile
    return raw[raw.rfind(b")") + 2 :].decode().split()


# --- what they use ---------------------------------------------------------------------------
def cpu_seconds(pids: set[int] | list[int]) -> float:
    """User + system time of ``pids`` and of the children each has reaped."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:  # utime stime cutime cstime are fields 14-17 of stat (11-14 here)
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / TICKS


def _cgroup_cpu(cgroups: list[Path]) -> float | None:
    """cgroup v2's cumulative CPU time; None on v1 (its cpu controller does not count)."""
    for cg in cgroups:
        try:
            text = (cg / "cpu.stat").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "usage_usec":
                return int(value) / 1_000_000
    return None


def rss_kb(pid: int) -> int:
    """Resident memory of one process from ``statm`` (0 once it is gone)."""
    raw = _read_proc(pid, "statm")
    return int(raw.split()[1]) * PAGE_KB if raw else 0


def _read_proc(pid: int, name: str) -> bytes:
    """One small /proc file in one read (b"" once the process is gone)."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY)
    except OSError:
        return b""
    try:
        return os.read(fd, 16384)
    except OSError:
        return b""
    finally:
        os.close(fd)


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB; (0, 0) for one gone or without memory (a zombie)."""
    raw = _read_proc(pid, "smaps_rollup")
    rss = pss = 0
    for line in raw.split(b"\n", 3)[1:3]:  # after the header: Rss, then Pss
        name, _, value = line.partition(b":")
        if name == b"Rss":
            rss = int(value.split()[0])
        elif name == b"Pss":
            pss = int(value.split()[0])
    return rss, pss


def disk_bytes(layout: Layout) -> int:
    """What home + /shared take: the image's used blocks, or the folder's files."""
    try:
        if layout.disk_image.exists():
            if layout.disk.stat().st_dev == layout.root.stat().st_dev:
                return 0  # not mounted (a host reboot); the next start mounts it again
            fs = os.statvfs(layout.disk)
            return (fs.f_blocks - fs.f_bfree) * fs.f_frsize
        return disk.usage(layout.disk)
    except OSError:
        return 0  # gone meanwhile, or a folder the box made unreadable (it is stopped for it)
