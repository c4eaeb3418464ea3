"""When to try a model request again: full-jitter exponential backoff, Retry-After honored."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime

# 408 is the server's own request timeout, which the brief's "timeouts" covers.
RETRYABLE_STATUS = frozenset({408, 429})


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_s: float = 1.0
    max_s: float = 60.0
    retry_after_max_s: float = 120.0
    # Injected so tests can check the bounds; each call draws independently (no shared state
    # beyond the module RNG, which is safe across tasks on one event loop).
    uniform: Callable[[float, float], float] = field(default=random.uniform)

    def delay(self, failures: int, retry_after: float | None) -> float:
        """Seconds to wait after ``failures`` consecutive failures (1 for the first)."""
        if retry_after is not None:
            # The server knows its own rate window: honor it, but a huge or hostile value
            # must not park a task for hours.
            return min(max(retry_after, 0.0), self.retry_after_max_s)
        ceiling = min(self.max_s, self.base_s * 2 ** (failures - 1))
        return self.uniform(0.0, ceiling)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``Retry-After`` as
    delta-seconds or an HTTP date. None when absent or unreadable."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = _number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _number(value)
    return seconds if seconds is not None else _seconds_until(value, now)


def _number(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def _seconds_until(http_date: str, now: float | None) -> float | None:
    try:
        when = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are GMT anyway
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)
