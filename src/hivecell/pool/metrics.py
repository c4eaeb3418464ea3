"""What every running sandbox costs, sampled every few seconds: CPU %, memory, disk,
processes and how long its guest agent takes to answer.

``StatsSampler.run`` lists the provider's running sandboxes each round, reads their usage
concurrently (at most ``concurrency`` at once), pings their guests, and keeps the latest
``SandboxStats`` per sandbox; listeners get each round's list (the server publishes it as a
``sandbox.stats`` event). CPU % comes from two consecutive readings, so a sandbox's first
sample shows 0. One sandbox failing is logged and left out of that round; the loop goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

from hivecell.errors import HivecellError, SandboxNotFound
from hivecell.sandbox.base import SandboxProvider, SandboxUsage

log = logging.getLogger(__name__)

Listener = Callable[[list["SandboxStats"]], None]


class SandboxStats(SandboxUsage):
    """One sample: the provider's usage figures, plus what the sampler derives."""

    model_config = ConfigDict(extra="forbid")

    cpu_percent: float = Field(ge=0, description="since the previous sample; 100 = one core")
    guest_rtt_ms: float | None = Field(
        description="a ping to the guest agent and back; null when it did not answer in time"
    )


class Totals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sandboxes: int
    cpu_percent: float
    memory_pss_mb: float
    memory_rss_mb: float


class StatsSampler:
    def __init__(
        self,
        provider: SandboxProvider,
        *,
        interval: float = 2.0,
        ping_timeout: float = 1.0,
        concurrency: int = 16,
    ) -> None:
        self.provider = provider
        self.interval = interval
        self.ping_timeout = ping_timeout
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._latest: dict[str, SandboxStats] = {}
        self._listeners: list[Listener] = []
        self._published_some = False

    # --- what callers read ---------------------------------------------------------------
    def latest(self, sandbox_id: str) -> SandboxStats | None:
        return self._latest.get(sandbox_id)

    def all(self) -> dict[str, SandboxStats]:
        return dict(self._latest)

    def totals(self) -> Totals:
        stats = list(self._latest.values())
        return Totals(
            sandboxes=len(stats),
            cpu_percent=sum(s.cpu_percent for s in stats),
            memory_pss_mb=sum(s.memory_pss_mb for s in stats),
            memory_rss_mb=sum(s.memory_rss_mb for s in stats),
        )

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with every round's samples (from the sampler's task: no waiting)."""
        self._listeners.append(listener)

    # --- sampling ------------------------------------------------------------------------
    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        task_status.started()
        while True:
            started = anyio.current_time()
            await self.sample_round()
            await anyio.sleep(max(0.0, self.interval - (anyio.current_time() - started)))

    async def sample_round(self) -> list[SandboxStats]:
        """One round over every running sandbox; those gone or stopped drop out."""
        try:
            running = [info.id for info in await self.provider.list() if info.status == "running"]
        except (HivecellError, OSError) as exc:
            log.warning("stats: cannot list sandboxes: %s", exc)
            return list(self._latest.values())
        fresh: dict[str, SandboxStats] = {}
        async with anyio.create_task_group() as tg:
            for sandbox_id in running:
                tg.start_soon(self._sample_into, sandbox_id, fresh)
        self._latest = fresh
        self._publish([fresh[i] for i in running if i in fresh])
        return list(fresh.values())

    async def sample_now(self, sandbox_id: str) -> SandboxStats:
        """One sandbox at once (raises SandboxNotFound); kept as its latest sample."""
        stats = await self._sample(sandbox_id)
        self._latest[sandbox_id] = stats
        return stats

    async def _sample_into(self, sandbox_id: str, fresh: dict[str, SandboxStats]) -> None:
        async with self._limiter:
            try:
                stats = await self._sample(sandbox_id)
            except SandboxNotFound:
                return  # destroyed since the list: it drops out
            except Exception as exc:  # one box must never stop the others' figures
                log.warning("stats: cannot sample sandbox %s: %s", sandbox_id, exc)
                return
        if stats.processes:  # none: stopped (or being destroyed) since the list
            fresh[sandbox_id] = stats

    async def _sample(self, sandbox_id: str) -> SandboxStats:
        usage = await self.provider.usage(sandbox_id)
        rtt = await self._rtt(sandbox_id) if usage.processes else None
        return SandboxStats(
            **usage.model_dump(),
            cpu_percent=_cpu_percent(self._latest.get(sandbox_id), usage),
            guest_rtt_ms=rtt,
        )

    async def _rtt(self, sandbox_id: str) -> float | None:
        with anyio.move_on_after(self.ping_timeout):
            try:
                async with await self.provider.connect(sandbox_id) as guest:
                    started = time.perf_counter()
                    await guest.call("ping", timeout=self.ping_timeout)
                    return (time.perf_counter() - started) * 1000
            except HivecellError:
                return None  # stopped meanwhile, or its guest is gone or stuck
        return None

    def _publish(self, stats: list[SandboxStats]) -> None:
        if not stats and not self._published_some:
            return  # nothing runs, and listeners already know: no empty event every round
        self._published_some = bool(stats)
        for listener in self._listeners:
            try:
                listener(stats)
            except Exception:  # a broken listener must not stop the sampling
                log.exception("stats: a listener failed")


def _cpu_percent(previous: SandboxUsage | None, now: SandboxUsage) -> float:
    if previous is None or now.time <= previous.time:
        return 0.0
    used = now.cpu_seconds - previous.cpu_seconds
    # Negative when the box restarted (its counters begin again): no figure this round.
    return max(0.0, used / (now.time - previous.time) * 100)
