"""``hivecell bench sandbox``: our sandbox's speed and footprint, optionally beside Cua's."""

from __future__ import annotations

import base64
import os
import statistics
import time
from pathlib import Path

import anyio
from pydantic import BaseModel, Field

from hivecell.bench.stats import Stats, timed
from hivecell.sandbox.base import SandboxProvider, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient

TARGETS_MS = {
    "cold_start": 250.0,
    "screenshot": 20.0,
    "click": 3.0,
    "exec_true": 4.0,
    "settle_static": 100.0,
}
TARGET_IDLE_MB = 50.0  # PSS per sandbox: what one more sandbox costs the host
TARGET_PARALLEL = 24
IDLE_BOXES = 8  # how many sandboxes idle together while their memory is read


class SandboxReport(BaseModel):
    cold_start: Stats
    screenshot: Stats
    click: Stats
    move: Stats
    exec_true: Stats
    type_text: Stats
    settle_static: Stats
    idle_rss_mb: float = Field(
        description="median per-sandbox RSS (MB) of idle_boxes used, then idle sandboxes: "
        "every process of each (supervisor, log copier, bwrap, boot, Xvfb, openbox, guest "
        "agent); counts shared libraries once per process, so it overstates the cost"
    )
    idle_pss_mb: float = Field(
        description="median per-sandbox PSS (MB) over the same sandboxes: shared pages split "
        "between the processes that map them, so this is what one more sandbox costs. Read "
        "with several sandboxes up, as in use: PSS of shared pages falls as sandboxes are "
        "added (until 2026-11-30 it was read with one sandbox up)"
    )
    idle_boxes: int = Field(description="sandboxes up while idle memory was read")
    parallel_started: int
    parallel_tried: int


async def measure_sandbox(
    provider: SandboxProvider,
    *,
    runs: int = 20,
    cold_runs: int = 10,
    parallel: int = 24,
    idle_boxes: int = IDLE_BOXES,
) -> SandboxReport:
    cold = await _cold_starts(provider, cold_runs)
    ids: list[str] = []
    try:
        ids.append((await provider.create(SandboxSpec())).id)
        async with await provider.connect(ids[0]) as guest:
            ops = await _operations(guest, runs)
        rss, pss = await _idle_memory(provider, ids, idle_boxes)
    finally:
        with anyio.CancelScope(shield=True):
            for sandbox_id in ids:
                await provider.destroy(sandbox_id)
    started = await _parallel(provider, parallel)
    return SandboxReport(
        cold_start=cold,
        idle_rss_mb=round(rss, 1),
        idle_pss_mb=round(pss, 1),
        idle_boxes=len(ids),
        parallel_started=started,
        parallel_tried=parallel,
        **ops,
    )


async def _idle_memory(
    provider: SandboxProvider, ids: list[str], boxes: int
) -> tuple[float, float]:
    """Median per-sandbox (RSS, PSS) with ``boxes`` sandboxes up, ``ids[0]`` already used.

    The others get one of each operation first, so every agent has loaded what a task loads
    (the screenshot path, the X input path) before it idles.
    """
    while len(ids) < boxes:
        ids.append((await provider.create(SandboxSpec())).id)
    for sandbox_id in ids[1:]:
        async with await provider.connect(sandbox_id) as guest:
            await _operations(guest, 1)
    await anyio.sleep(1.0)  # let start-up allocations settle before reading memory
    readings = [await anyio.to_thread.run_sync(sandbox_memory_mb, i) for i in ids]
    return (
        statistics.median(rss for rss, _ in readings),
        statistics.median(pss for _, pss in readings),
    )


async def _cold_starts(provider: SandboxProvider, runs: int) -> Stats:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        info = await provider.create(SandboxSpec())  # returns once ping answers, desktop up
        samples.append((time.perf_counter() - start) * 1000)
        await provider.destroy(info.id)
    return Stats.of(samples)


async def _operations(guest: GuestClient, runs: int) -> dict[str, Stats]:
    async def screenshot() -> None:
        raw = await guest.call("screenshot", {"format": "png"})
        base64.b64decode(raw["data"])  # delivered means decoded on the host

    def call(method: str, params: dict[str, object]):  # type: ignore[no-untyped-def]
        return lambda: guest.call(method, params)

    return {
        "screenshot": await timed(screenshot, runs),
        "click": await timed(call("mouse_click", {"x": 5, "y": 5}), runs),
        "move": await timed(call("mouse_move", {"x": 640, "y": 400}), runs),
        "exec_true": await timed(call("exec_command", {"argv": ["true"]}), runs),
        "type_text": await timed(call("keyboard_type", {"text": "hello"}), runs),
        "settle_static": await timed(call("wait_for_settle", {}), runs),
    }


async def _parallel(provider: SandboxProvider, count: int) -> int:
    """Start ``count`` sandboxes at once; how many came up and answered ping."""
    ids: list[str] = []

    async def one() -> None:
        try:
            info = await provider.create(SandboxSpec())
        except Exception:
            return  # counted as a failure below
        ids.append(info.id)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(one)
        return await _count_alive(provider, ids)
    finally:
        with anyio.CancelScope(shield=True):
            for sandbox_id in ids:
                await provider.destroy(sandbox_id)


async def _count_alive(provider: SandboxProvider, ids: list[str]) -> int:
    alive = 0
    for sandbox_id in ids:
        async with await provider.connect(sandbox_id) as guest:
            alive += bool((await guest.call("ping"))["pong"])
    return alive


def sandbox_memory_mb(sandbox_id: str) -> tuple[float, float]:
    """(RSS, PSS) summed over every process of the sandbox.

    That is its supervisor (the only one whose command line names the sandbox) and all its
    descendants: bwrap, Xvfb, openbox, the guest agent, slirp4netns. RSS counts shared
    libraries once per process; PSS splits them, so it is what the sandbox really adds.
    """
    procs = _process_table()
    roots = [pid for pid, (_, cmd) in procs.items() if sandbox_id.encode() in cmd]
    members = _descendants(procs, roots)
    rss = sum(_status_kb(pid, "VmRSS:") for pid in members)
    pss = sum(_pss_kb(pid) for pid in members)
    return rss / 1024, pss / 1024


def _process_table() -> dict[int, tuple[int, bytes]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (ppid, cmd)
    return table


def _descendants(procs: dict[int, tuple[int, bytes]], roots: list[int]) -> set[int]:
    found = set(roots)
    grew = True
    while grew:
        new = {pid for pid, (ppid, _) in procs.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return found


def _status_kb(pid: int, field: str, name: str = "status") -> int:
    try:
        with open(f"/proc/{pid}/{name}") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    return _status_kb(pid, "Pss:", "smaps_rollup")


def targets_met(report: SandboxReport) -> dict[str, bool]:
    met = {name: getattr(report, name).median_ms <= limit for name, limit in TARGETS_MS.items()}
    met["idle_memory"] = report.idle_pss_mb <= TARGET_IDLE_MB
    met["parallel"] = report.parallel_started >= TARGET_PARALLEL
    return met


def machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "kernel": os.uname().release}
