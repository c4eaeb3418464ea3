"""``hivecell bench server --tasks N --concurrent C``: task throughput, and what it leaks.

A real ``hivecell up`` (``--max-concurrent C``) with real sandboxes runs N tasks, C at a
time, against the scripted model (``throughput_model``, its own process). Each task runs a
shell command and takes a screenshot, then finishes; one in ten fails (the model says so)
and one in ten is cancelled through the API once it has taken two steps, so the failure
paths are covered for leaks too; one in four runs with network ``nat`` (slirp4netns and the
nftables filter) when the host has them.

Leaks are attributed to this run only (other people's sandboxes share the host; see
``leaks``): the server's fds are compared while it still runs (after a warm-up task, so
long-lived fds it opens lazily are in both counts, and once the run's sandboxes are gone);
everything else after the server has exited on SIGTERM (a warm pool lives until then).
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import websockets
from pydantic import BaseModel, ConfigDict

from hivecell.bench import leaks
from hivecell.bench.server import (
    BenchServerError,
    _hivecell_up,
    _logged_process,
    _Server,
    _write_provider,
)
from hivecell.bench.stats import percentile

EXPECTED = {"ok": "completed", "fail": "failed", "cancel": "cancelled"}
ENDED = {"completed", "failed", "cancelled", "timed_out", "max_steps_reached", "budget_exceeded"}
ENDED |= {"interrupted", "guest_lost"}
TASK_DEADLINE_S = 900.0  # one task, queue included: far beyond any healthy run
FALLBACK_POLL_S = 10.0  # events are the signal; a poll this often covers a missed one
STOP_GRACE_S = 180.0  # SIGTERM -> exited: it removes in-flight tasks' sandboxes meanwhile
SAMPLE_S = 1.0  # host memory and the run's processes
NFT_EVERY = 3  # samples between nftables listings (each runs `nft`)
# SQLAlchemy's QueuePool keeps up to pool_size (default 5; store/engine.py keeps the
# default) connections open once used
DB_POOL_IDLE = 5
SETTLE_S = 60.0  # deadline for the run's sandboxes to go and the server's fds to settle
# uvicorn closes a connection idle for 5 s: a request sent on it as it does fails with a
# ReadError (the 200-task run lost one so), so the client drops idle ones sooner
KEEPALIVE = httpx2.Limits(keepalive_expiry=2.0)


class Memory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    baseline_used_mb: float  # MemTotal - MemAvailable before the server started
    peak_used_mb: float
    peak_over_baseline_mb: float
    run_processes_peak_rss_mb: float  # server + its sandboxes' processes, RSS summed


class Dispatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float


class ThroughputReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: int
    concurrent: int
    duration_s: float
    tasks_per_minute: float
    statuses: dict[str, int]
    unexpected: list[str]  # tasks that did not end as planned (or not at all)
    dispatch: Dispatch
    memory: Memory
    sandboxes: int  # made by the run
    fds_before: int
    fds_after: int
    server_exit_code: int | None
    server_exited_cleanly: bool  # on SIGTERM, without being killed
    leaks: leaks.Leaks
    leaks_total: int
    notes: list[str]


def plan(tasks: int) -> list[str]:
    """The kind of each task: one in ten fails, one in ten is cancelled."""
    return ["cancel" if n % 10 == 3 else "fail" if n % 10 == 7 else "ok" for n in range(tasks)]


async def measure_throughput(home: Path, *, tasks: int, concurrent: int) -> ThroughputReport:
    tracker = leaks.RunTracker(home)
    nat = await anyio.to_thread.run_sync(leaks.nft_available)
    async with _model_process(home) as model:
        _write_provider(home, model.url)
        baseline = await anyio.to_thread.run_sync(_used_bytes)
        async with anyio.create_task_group() as sampling:
            peak = _Peak(baseline)
            sampling.start_soon(_sample, tracker, peak)
            run = await _run_server(home, tracker, tasks, concurrent, nat)
            sampling.cancel_scope.cancel()
        firsts = await model.firsts()
    found = await anyio.to_thread.run_sync(
        lambda: leaks.find_leaks(
            home, tracker.sandbox_ids, seen=tracker.seen, nft_gids=tracker.nft_gids
        )
    )
    found.fds = run.fd_leaks
    return _report(run, tasks, firsts, peak, tracker, found, concurrent, nat)


# --- the model process ----------------------------------------------------------------------
@dataclass
class _Model:
    url: str
    log: Path

    async def firsts(self) -> dict[int, float]:
        """Task number -> when its first model request had been read (perf_counter)."""
        found = {}
        for line in (await anyio.Path(self.log).read_text()).splitlines():
            if line.startswith("first "):
                _, number, at = line.split()
                found[int(number)] = float(at)
        return found


@asynccontextmanager
async def _model_process(home: Path) -> AsyncIterator[_Model]:
    await anyio.Path(home).mkdir(parents=True, exist_ok=True)
    log = home / "bench-model.log"
    argv = [sys.executable, "-m", "hivecell.bench.throughput_model"]
    async with _logged_process(argv, log) as started:
        yield _Model(await started.line("http://", "the scripted model server"), log)


# --- sampling -------------------------------------------------------------------------------
@dataclass
class _Peak:
    baseline: int
    used: int = 0


def _used_bytes() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        info[name] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


async def _sample(tracker: leaks.RunTracker, peak: _Peak) -> None:
    for count in _forever():
        peak.used = max(peak.used, await anyio.to_thread.run_sync(_used_bytes))
        await anyio.to_thread.run_sync(tracker.sample)
        if count % NFT_EVERY == 0:
            await anyio.to_thread.run_sync(tracker.sample_nft)
        await anyio.sleep(SAMPLE_S)


def _forever() -> Iterator[int]:
    count = 0
    while True:
        yield count
        count += 1


# --- the server run -------------------------------------------------------------------------
@dataclass
class _Run:
    outcomes: dict[int, tuple[str, str]] = field(default_factory=dict)  # n -> (kind, status)
    posted: dict[int, float] = field(default_factory=dict)
    duration_s: float = 0.0
    fds_before: int = 0
    fds_after: int = 0
    fd_leaks: list[str] = field(default_factory=list)
    exit_code: int | None = None
    settled: bool = True


async def _run_server(
    home: Path, tracker: leaks.RunTracker, tasks: int, concurrent: int, nat: bool
) -> _Run:
    run = _Run()
    # A kill would leave the sandboxes it was removing: the leak check needs a clean exit.
    slots = ["--max-concurrent", str(concurrent)]
    async with _hivecell_up(home, slots, stop_grace_s=STOP_GRACE_S) as server:
        assert server.process is not None
        tracker.server_pid = server.process.pid
        async with _Board.listening(server, tracker) as board:
            # Warm-up, as many tasks in flight as the run will have: what the server opens
            # lazily and keeps (database connections up to its pool's size, log files) is
            # open in both fd counts.
            warm_up = [_Job(-1 - n, "ok", nat and n % 4 == 1) for n in range(concurrent)]
            await _all_tasks(server, board, warm_up, concurrent, run)
            run.settled = await _settled(server)
            before = await anyio.to_thread.run_sync(_server_fds, server)
            started = time.perf_counter()
            jobs = [_Job(n, kind, nat and n % 4 == 1) for n, kind in enumerate(plan(tasks))]
            await _all_tasks(server, board, jobs, concurrent, run)
            run.duration_s = time.perf_counter() - started
            settled = await _settled(server)
            run.settled = run.settled and settled
            database = str(home / "hivecell.db")
            after, run.fd_leaks = await _fd_growth(server, before, database)
            run.fds_before, run.fds_after = len(before), len(after)
    run.exit_code = server.process.returncode
    for number in range(-concurrent, 0):  # the warm-up: checked, not timed
        run.posted.pop(number, None)
    return run


@dataclass
class _Job:
    number: int
    kind: str
    nat: bool

    def body(self) -> dict[str, Any]:
        from hivecell.bench.throughput_model import marker

        return {
            "description": f"{marker(self.kind, self.number)} Run a command, look, finish.",
            "max_steps": 500 if self.kind == "cancel" else 20,
            "timeout_s": TASK_DEADLINE_S,
            "approve_tools": [],
            "network": "nat" if self.nat else "offline",
        }


async def _all_tasks(
    server: _Server, board: _Board, jobs: list[_Job], concurrent: int, run: _Run
) -> None:
    queue = iter(jobs)
    # Its own client, closed before the fds are counted again: its pooled connections
    # are fds of the server too.
    async with (
        httpx2.AsyncClient(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=60,
            limits=KEEPALIVE,
        ) as http,
        anyio.create_task_group() as tg,
    ):
        # Workers join one at a time, each once the last one's first task has taken a step
        # (its sandbox is up): a steady state, not C boots at once, which is a herd of its
        # own (`hivecell bench sandbox --parallel`).
        for _ in range(concurrent):
            await tg.start(_worker, http, board, queue, run)


async def _worker(
    http: httpx2.AsyncClient,
    board: _Board,
    jobs: Iterator[_Job],
    run: _Run,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    joined: Callable[[], None] = task_status.started
    for job in jobs:  # shared: each worker takes the next job when its task has ended
        await _one_task(http, board, job, run, joined)
        joined = _nothing
    joined()


def _nothing() -> None:
    return None


async def _one_task(
    http: httpx2.AsyncClient, board: _Board, job: _Job, run: _Run, joined: Callable[[], None]
) -> None:
    run.posted[job.number] = time.perf_counter()
    try:
        task_id = str((await _call(http, "POST", "/tasks", json=job.body()))["id"])
    except BenchServerError as exc:  # reported with the task, the run goes on
        run.outcomes[job.number] = (job.kind, f"not created ({str(exc)[:200]})")
        joined()
        return
    await board.stepped(http, task_id, 1)
    joined()
    if job.kind == "cancel" and await board.stepped(http, task_id, 2):
        try:
            await _call(http, "POST", f"/tasks/{task_id}/cancel")
        except BenchServerError as exc:
            run.outcomes[job.number] = (job.kind, f"cancel refused ({str(exc)[:200]})")
            await board.ended(http, task_id)
            return
    run.outcomes[job.number] = (job.kind, await board.ended(http, task_id))


async def _call(http: httpx2.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = await http.request(method, f"/api/v1{path}", **kwargs)
    except httpx2.TransportError as exc:  # the server dropped the connection: say so
        raise BenchServerError(f"{method} {path}: {exc!r}") from exc
    if response.status_code >= 400:
        raise BenchServerError(f"{method} {path}: {response.status_code} {response.text}")
    return response.json()


@dataclass
class _Board:
    """What the events stream said about each task: steps taken, how it ended."""

    steps: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ends: dict[str, str] = field(default_factory=dict)
    changed: dict[str, anyio.Event] = field(default_factory=dict)

    @classmethod
    @asynccontextmanager
    async def listening(cls, server: _Server, tracker: leaks.RunTracker) -> AsyncIterator[_Board]:
        board = cls()
        async with (
            websockets.connect(server.ws("/events"), max_size=None, proxy=None) as ws,
            anyio.create_task_group() as tg,
        ):
            await ws.recv()  # hello: subscribed from here on
            tg.start_soon(board._listen, ws, tracker)
            yield board
            tg.cancel_scope.cancel()

    async def _listen(self, ws: Any, tracker: leaks.RunTracker) -> None:
        async for raw in ws:
            event = json.loads(raw)
            data = event.get("data", {})
            if event.get("type") == "sandbox.created":
                tracker.sandbox_ids.add(str(data["sandbox_id"]))
            elif event.get("type") == "task.step":
                self.steps[data["task_id"]] += 1
                self._wake(data["task_id"])
            elif event.get("type") == "task.finished":
                self.ends[data["task_id"]] = str(data["task"]["status"])
                self._wake(data["task_id"])

    def _wake(self, task_id: str) -> None:
        self.changed.pop(task_id, anyio.Event()).set()

    async def _until(self, http: httpx2.AsyncClient, task_id: str, done: Any) -> dict[str, Any]:
        """Waits for an event about the task until ``done(record)``; polls if one is missed."""
        with anyio.fail_after(TASK_DEADLINE_S):
            while True:
                record = {"status": self.ends.get(task_id), "steps": self.steps[task_id]}
                if done(record):
                    return record
                with anyio.move_on_after(FALLBACK_POLL_S) as quiet:
                    await self.changed.setdefault(task_id, anyio.Event()).wait()
                if quiet.cancelled_caught:
                    polled = await _call(http, "GET", f"/tasks/{task_id}")
                    if polled["status"] in ENDED:
                        self.ends[task_id] = str(polled["status"])
                    self.steps[task_id] = max(self.steps[task_id], int(polled.get("steps", 0)))

    async def stepped(self, http: httpx2.AsyncClient, task_id: str, steps: int) -> bool:
        """Whether the task took ``steps`` steps (False: it ended before)."""
        record = await self._until(
            http, task_id, lambda r: r["steps"] >= steps or r["status"] is not None
        )
        return record["status"] is None

    async def ended(self, http: httpx2.AsyncClient, task_id: str) -> str:
        return str((await self._until(http, task_id, lambda r: r["status"] is not None))["status"])


async def _settled(server: _Server) -> bool:
    """Until no task sandbox is left (pool sandboxes stay: they are the server's own);
    False if some still are at the deadline (the leak check after exit names them)."""
    with anyio.move_on_after(SETTLE_S):
        while True:
            listed = (await server.get("/sandboxes"))["items"]
            if not [item for item in listed if not item.get("pool")]:
                return True
            await anyio.sleep(0.2)
    return False


def _server_fds(server: _Server) -> dict[int, str]:
    """The server's fds, but for the bench's own live connections to it."""
    assert server.process is not None
    port = int(server.base_url.rsplit(":", 1)[1])
    return leaks.open_fds(server.process.pid, ignore=leaks.serving(port))


async def _fd_growth(
    server: _Server, before: dict[int, str], database: str
) -> tuple[dict[int, str], list[str]]:
    """The server's fds now, and those beyond the warm-up count; connections that just
    ended may take a moment to be closed, so growth must persist until the deadline."""
    with anyio.move_on_after(SETTLE_S):
        while True:
            after = await anyio.to_thread.run_sync(_server_fds, server)
            if not leaks.fd_growth_pooled(before, after, database, DB_POOL_IDLE):
                return after, []
            await anyio.sleep(0.5)
    after = await anyio.to_thread.run_sync(_server_fds, server)
    return after, leaks.fd_growth_pooled(before, after, database, DB_POOL_IDLE)


# --- the report -----------------------------------------------------------------------------
def _report(
    run: _Run,
    tasks: int,
    firsts: dict[int, float],
    peak: _Peak,
    tracker: leaks.RunTracker,
    found: leaks.Leaks,
    concurrent: int,
    nat: bool,
) -> ThroughputReport:
    statuses: dict[str, int] = defaultdict(int)
    unexpected = []
    for n in range(tasks):
        kind, status = run.outcomes.get(n, (plan(tasks)[n], "never ended"))
        statuses[status.split(" (")[0]] += 1
        if status != EXPECTED[kind]:
            unexpected.append(f"task {n} ({kind}): {status}, expected {EXPECTED[kind]}")
    for n in range(-concurrent, 0):
        kind, status = run.outcomes.get(n, ("ok", "never ended"))
        if status != EXPECTED[kind]:
            unexpected.append(f"warm-up task {-n}: {status}, expected {EXPECTED[kind]}")
    if not run.settled:
        unexpected.append(f"task sandboxes still listed {SETTLE_S:g} s after the last task")
    waits = [(firsts[n] - run.posted[n]) * 1000 for n in range(tasks) if n in firsts]
    mb = 1024 * 1024
    return ThroughputReport(
        tasks=tasks,
        concurrent=concurrent,
        duration_s=round(run.duration_s, 1),
        tasks_per_minute=round(tasks / run.duration_s * 60, 1) if run.duration_s else 0.0,
        statuses=dict(statuses),
        unexpected=unexpected,
        dispatch=_dispatch(waits),
        memory=Memory(
            baseline_used_mb=round(peak.baseline / mb, 1),
            peak_used_mb=round(peak.used / mb, 1),
            peak_over_baseline_mb=round((peak.used - peak.baseline) / mb, 1),
            run_processes_peak_rss_mb=round(tracker.peak_rss_bytes / mb, 1),
        ),
        sandboxes=len(tracker.sandbox_ids),
        fds_before=run.fds_before,
        fds_after=run.fds_after,
        server_exit_code=run.exit_code,
        # uvicorn re-raises the SIGTERM it caught once it has shut down gracefully
        server_exited_cleanly=run.exit_code in (0, -signal.SIGTERM),
        leaks=found,
        leaks_total=found.total,
        notes=_notes(nat),
    )


def _dispatch(waits: list[float]) -> Dispatch:
    if not waits:
        return Dispatch(n=0, p50_ms=0.0, p99_ms=0.0, max_ms=0.0)
    ordered = sorted(waits)
    p99 = percentile(ordered, 0.99)
    return Dispatch(
        n=len(ordered),
        p50_ms=round(statistics.median(ordered), 1),
        p99_ms=round(p99, 1),
        max_ms=round(ordered[-1], 1),
    )


def _notes(nat: bool) -> list[str]:
    notes = [
        "each worker keeps one task in flight (a new POST /tasks when its last one ended), "
        "so the queue never holds more than the slots free up",
        "dispatch: POST /tasks sent -> the scripted model has read the task's first request "
        "(same monotonic clock, two processes); includes creating the task's sandbox",
        "memory: host MemTotal-MemAvailable sampled every second (other work on the host "
        "counts too); the run's processes' RSS is summed (shared pages count once per process)",
        "leaks: the server's fds compared after a warm-up round of as many tasks as slots, "
        "while it runs (its live connections from the bench left out); the rest after it "
        "exited on SIGTERM",
    ]
    if not nat:
        notes.append("no nft or slirp4netns on this host: every task ran offline")
    return notes
