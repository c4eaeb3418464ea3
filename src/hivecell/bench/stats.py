"""Timing helpers for benchmarks: medians and percentiles of repeated runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable

from pydantic import BaseModel


class Stats(BaseModel):
    """Milliseconds over ``n`` runs."""

    n: int
    median_ms: float
    p90_ms: float
    min_ms: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Stats:
        ordered = sorted(samples_ms)
        p90 = percentile(ordered, 0.9)
        return cls(
            n=len(ordered),
            median_ms=round(statistics.median(ordered), 3),
            p90_ms=round(p90, 3),
            min_ms=round(ordered[0], 3),
        )


async def timed(fn: Callable[[], Awaitable[object]], runs: int, warmup: int = 2) -> Stats:
    """Run ``fn`` warmup + runs times; return stats of the measured runs."""
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return Stats.of(samples)


def percentile(ordered: list[float], q: float) -> float:
    """The sample at fraction ``q`` of sorted, non-empty ``ordered`` (nearest rank)."""
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
