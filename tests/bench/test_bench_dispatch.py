"""`hivecell bench server`'s dispatch figures, with small counts: a real `hivecell up`."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.bench.dispatch import measure_dispatch

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


async def test_warm_and_cold_dispatch_are_measured(short_home: Path) -> None:
    report = await measure_dispatch(short_home, runs=2)
    # Every warm run found its sandbox in the pool: the figure is what it claims to be.
    assert report.warm_hits == 2
    assert report.warm.n == 2 and report.cold.n == 2
    assert report.warm.min_ms > 0 and report.cold.min_ms > 0
    assert not list((short_home / "sandboxes").glob("*"))  # pool and task sandboxes are gone
