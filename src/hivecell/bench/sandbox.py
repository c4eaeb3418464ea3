"""``hivecell bench sandbox``: our sandbox's speed and footprint, optionally beside Cua's."""

from __future__ import annotations

import base64
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from pydantic import BaseModel, Field

from hivecell.bench.stats import Stats, timed
from hivecell.sandbox.base import SandboxProvider, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local import procs as box_procs
from hivecell.sandbox.local.zygote.client import TITLE as ZYGOTE_TITLE
from hivecell.sandbox.local.zygote.supervisors import TITLE as SUPERVISORS_TITLE

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


class HerdFailure(BaseModel):
    """Creates of a herd that failed the same way: how many, and the first one's message."""

    reason: str  # error type and code, e.g. "SandboxError[sandbox_error] create"
    count: int
    first_message: str


class HerdReport(BaseModel):
    """``count`` sandboxes requested at once (they boot in turn: see the boot throttle)."""

    tried: int
    started: int  # created and answered ping
    seconds_until_all_answered: float
    rss_mb: float  # summed over every process of every box that came up
    pss_mb: float
    mem_available_before_mb: float
    mem_available_after_mb: float  # with all of them up, before they are destroyed
    stopped_low_memory: int  # creates not begun because MemAvailable fell below the floor
    failures: list[HerdFailure]


class SandboxReport(BaseModel):
    cold_start: Stats
    warm_start: Stats | None = Field(
        None,
        description="VMs: a create from the template's warm state (RAM + disk saved after "
        "its first boot), measured after one untimed create made that state",
    )
    screenshot: Stats = Field(description="a screen that changed since the last screenshot")
    screenshot_unchanged: Stats = Field(
        description="the same screen again: the guest hands its last encoding out"
    )
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
    zygote_pss_mb: float = Field(
        default=0.0,
        description="PSS (MB) of the guest zygote and the supervisor server, read with the "
        "idle sandboxes up: paid once per host, not per sandbox (their pages are shared with "
        "every box's boot, agent and supervisor, whose PSS carries their part); 0 when "
        "boxes start without them",
    )
    parallel_started: int
    parallel_tried: int
    parallel: HerdReport


async def measure_sandbox(
    provider: SandboxProvider,
    *,
    runs: int = 20,
    cold_runs: int = 10,
    parallel: int = 24,
    idle_boxes: int = IDLE_BOXES,
    spec: SandboxSpec | None = None,
    booting: SandboxProvider | None = None,
    warm_runs: int = 0,
) -> SandboxReport:
    """``spec``: what every measured sandbox is (default: a bare ``SandboxSpec()``);
    ``booting``: where cold starts are timed, if ``provider`` starts sandboxes from a warm
    state (VMs), whose starts are then timed ``warm_runs`` times."""
    spec = spec or SandboxSpec()
    cold = await _cold_starts(booting or provider, cold_runs, spec)
    warm = None
    if warm_runs:
        await provider.destroy((await provider.create(spec)).id)  # makes the warm state
        warm = await _cold_starts(provider, warm_runs, spec)
    ids: list[str] = []
    try:
        ids.append((await provider.create(spec)).id)
        async with await provider.connect(ids[0]) as guest:
            ops = await _operations(guest, runs)
        rss, pss, zygote = await _idle_memory(provider, ids, idle_boxes, spec)
    finally:
        with anyio.CancelScope(shield=True):
            for sandbox_id in ids:
                await provider.destroy(sandbox_id)
    herd = await _parallel(provider, parallel, spec)
    return SandboxReport(
        cold_start=cold,
        warm_start=warm,
        idle_rss_mb=round(rss, 1),
        idle_pss_mb=round(pss, 1),
        idle_boxes=len(ids),
        zygote_pss_mb=round(zygote, 1),
        parallel_started=herd.started,
        parallel_tried=parallel,
        parallel=herd,
        **ops,
    )


async def _idle_memory(
    provider: SandboxProvider, ids: list[str], boxes: int, spec: SandboxSpec | None = None
) -> tuple[float, float, float]:
    """Median per-sandbox (RSS, PSS) with ``boxes`` sandboxes up, ``ids[0]`` already used,
    and the zygotes' PSS.

    The others get one of each operation first, so every agent has loaded what a task loads
    (the screenshot path, the X input path) before it idles.
    """
    while len(ids) < boxes:
        ids.append((await provider.create(spec or SandboxSpec())).id)
    for sandbox_id in ids[1:]:
        async with await provider.connect(sandbox_id) as guest:
            await _operations(guest, 1)
    await anyio.sleep(1.0)  # let start-up allocations settle before reading memory
    readings = [await anyio.to_thread.run_sync(sandbox_memory_mb, i) for i in ids]
    return (
        statistics.median(rss for rss, _ in readings),
        statistics.median(pss for _, pss in readings),
        await anyio.to_thread.run_sync(zygote_pss_mb, ids),
    )


async def _cold_starts(provider: SandboxProvider, runs: int, spec: SandboxSpec) -> Stats:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        info = await provider.create(spec)  # returns once ping answers, desktop up
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
        "screenshot": await _changed_screenshots(guest, screenshot, runs),
        "screenshot_unchanged": await timed(screenshot, runs),
        "click": await timed(call("mouse_click", {"x": 5, "y": 5}), runs),
        "move": await timed(call("mouse_move", {"x": 640, "y": 400}), runs),
        "exec_true": await timed(call("exec_command", {"argv": ["true"]}), runs),
        "type_text": await timed(call("keyboard_type", {"text": "hello"}), runs),
        "settle_static": await timed(call("wait_for_settle", {}), runs),
    }


async def _changed_screenshots(
    guest: GuestClient, screenshot: Callable[[], Awaitable[None]], runs: int
) -> Stats:
    """Screenshots of a screen that changed since the last one (a key typed into an xterm,
    untimed), so each is captured and encoded afresh, as a peer without a cache does; the
    guest hands an unchanged screen's last encoding out again (``screenshot_unchanged``)."""
    await guest.call("open_app", {"name": "xterm", "window_timeout": 30})
    samples = []
    for run in range(runs + 2):  # two warm-ups, as timed() does
        await guest.call("keyboard_type", {"text": "x"})
        await guest.call("wait_for_settle", {"quiet_ms": 60, "timeout": 5})
        start = time.perf_counter()
        await screenshot()
        if run >= 2:
            samples.append((time.perf_counter() - start) * 1000)
    await guest.call("run_shell", {"command": "pkill -x xterm; true"})
    return Stats.of(samples)


async def _parallel(provider: SandboxProvider, count: int, spec: SandboxSpec) -> HerdReport:
    """Request ``count`` sandboxes at once; how many came up, how fast, what they cost.

    Every failure is kept with its reason. If the host runs low on memory (MemAvailable
    under ``_memory_floor_mb``) the creates still waiting in line are called off, so the
    herd stops at what fits instead of pushing the host into the OOM killer.
    """
    herd = _Herd()
    before = _mem_available_mb()
    start = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(herd.watch_memory, _memory_floor_mb(), tg.cancel_scope)
            async with anyio.create_task_group() as creates:
                for _ in range(count):
                    creates.start_soon(herd.create_one, provider, spec)
            tg.cancel_scope.cancel()  # all creates done: stop watching memory
        if herd.low_memory:
            herd.stopped_low_memory = count - len(herd.ids) - len(herd.errors)
        await herd.ping_all(provider)
        elapsed = time.perf_counter() - start
        rss, pss = await anyio.to_thread.run_sync(herd_memory_mb, list(herd.ids))
        after = _mem_available_mb()
    finally:
        with anyio.CancelScope(shield=True):
            await herd.destroy_all(provider)
    return HerdReport(
        tried=count,
        started=len(herd.ids),
        seconds_until_all_answered=round(elapsed, 2),
        rss_mb=round(rss, 1),
        pss_mb=round(pss, 1),
        mem_available_before_mb=round(before),
        mem_available_after_mb=round(after),
        stopped_low_memory=herd.stopped_low_memory,
        failures=herd.failures(),
    )


class _Herd:
    """The sandboxes of one ``_parallel`` run and what went wrong with the others."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.left_for_inspection: list[str] = []  # boxes that failed to boot (kept by create)
        self.errors: list[tuple[str, str]] = []  # (reason, message)
        self.low_memory = False
        self.stopped_low_memory = 0

    async def create_one(self, provider: SandboxProvider, spec: SandboxSpec) -> None:
        try:
            info = await provider.create(spec)
        except Exception as exc:  # every failure is reported with its reason
            self.errors.append(_reason(exc, "create"))
            failed = getattr(exc, "context", {}).get("id")
            if failed:
                self.left_for_inspection.append(failed)  # its log is in the message already
            return
        self.ids.append(info.id)

    async def watch_memory(self, floor_mb: float, scope: anyio.CancelScope) -> None:
        """Call off the creates still waiting once MemAvailable drops under ``floor_mb``."""
        while await anyio.to_thread.run_sync(_mem_available_mb) >= floor_mb:  # noqa: ASYNC110 - sampled
            await anyio.sleep(0.5)
        self.low_memory = True
        scope.cancel()  # creates in line leave nothing behind; half-booted ones are removed

    async def ping_all(self, provider: SandboxProvider) -> None:
        answered = []
        for sandbox_id in self.ids:
            try:
                async with await provider.connect(sandbox_id) as guest:
                    if (await guest.call("ping", timeout=30))["pong"]:
                        answered.append(sandbox_id)
                        continue
            except Exception as exc:
                self.errors.append(_reason(exc, "ping after create"))
                continue
            self.errors.append(("ping after create", "ping did not answer pong"))
        self.left_for_inspection += [i for i in self.ids if i not in answered]
        self.ids = answered

    async def destroy_all(self, provider: SandboxProvider) -> None:
        async def destroy(sandbox_id: str) -> None:
            try:
                await provider.destroy(sandbox_id)
            except Exception as exc:
                self.errors.append(_reason(exc, "destroy"))

        async with anyio.create_task_group() as tg:  # in parallel: a box takes ~0.1-5 s
            for sandbox_id in [*self.ids, *self.left_for_inspection]:
                tg.start_soon(destroy, sandbox_id)

    def failures(self) -> list[HerdFailure]:
        grouped: dict[str, HerdFailure] = {}
        for reason, message in self.errors:
            if reason in grouped:
                grouped[reason].count += 1
            else:
                grouped[reason] = HerdFailure(reason=reason, count=1, first_message=message)
        return sorted(grouped.values(), key=lambda f: -f.count)


def _reason(exc: BaseException, stage: str) -> tuple[str, str]:
    code = getattr(exc, "code", None)
    kind = f"{type(exc).__name__}[{code}]" if code else type(exc).__name__
    message = str(exc) or repr(exc)  # a bare TimeoutError has no message of its own
    return f"{stage}: {kind}", message[:4000]


def _memory_floor_mb() -> float:
    """Below this MemAvailable no more boxes are started: 5% of RAM, at least 1 GiB."""
    return max(1024.0, _meminfo_kb("MemTotal:") / 1024 * 0.05)


def _mem_available_mb() -> float:
    return _meminfo_kb("MemAvailable:") / 1024


def _meminfo_kb(field: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def herd_memory_mb(sandbox_ids: list[str]) -> tuple[float, float]:
    """(RSS, PSS) summed over every process of all ``sandbox_ids`` (one /proc walk)."""
    procs = _process_table()
    wanted = [sandbox_id.encode() for sandbox_id in sandbox_ids]
    roots = [pid for pid, (_, cmd) in procs.items() if any(w in cmd for w in wanted)]
    members = _descendants(procs, roots)
    rss = sum(_status_kb(pid, "VmRSS:") for pid in members)
    pss = sum(_pss_kb(pid) for pid in members)
    return rss / 1024, pss / 1024


def zygote_pss_mb(sandbox_ids: list[str]) -> float:
    """Summed PSS of the guest zygote and supervisor server that started these sandboxes'
    processes (their parents, known by their titles; older ones idling on the host aside)."""
    titles = tuple(title.encode() + b"\0" for title in (ZYGOTE_TITLE, SUPERVISORS_TITLE))
    procs = _process_table()
    wanted = [sandbox_id.encode() for sandbox_id in sandbox_ids]
    roots = [pid for pid, (_, cmd) in procs.items() if any(w in cmd for w in wanted)]
    parents = {procs[pid][0] for pid in _descendants(procs, roots) if pid in procs}
    servers = {pid for pid in parents if pid in procs and procs[pid][1].startswith(titles)}
    return sum(_pss_kb(pid) for pid in servers) / 1024


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
    """``roots``, their descendants and their boxes' PID namespaces (a zygote's boot
    process and what it starts are in the box, but not below its supervisor)."""
    found = set(roots)
    grew = True
    while grew:
        new = {pid for pid, (ppid, _) in procs.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    parents = {pid: ppid for pid, (ppid, _) in procs.items()}
    return found | box_procs.namespace_members(found, parents)


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
