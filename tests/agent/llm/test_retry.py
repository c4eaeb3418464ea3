"""Backoff bounds and Retry-After parsing."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from hivecell.agent.llm import RetryPolicy
from hivecell.agent.llm.retry import parse_retry_after

NOW = 1_800_000_000.0


def test_full_jitter_ceiling_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(base_s=0.5, max_s=3.0, uniform=lambda low, high: high)
    assert [policy.delay(n, None) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    low = RetryPolicy(uniform=lambda low, high: low)
    assert low.delay(4, None) == 0.0


def test_retry_after_is_honored_and_capped() -> None:
    policy = RetryPolicy(retry_after_max_s=30.0)
    assert policy.delay(1, 7.0) == 7.0
    assert policy.delay(1, 9999.0) == 30.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"Retry-After": formatdate(NOW + 12, usegmt=True)}, 12.0),
        ({"Retry-After": formatdate(NOW - 60, usegmt=True)}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-4"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected
