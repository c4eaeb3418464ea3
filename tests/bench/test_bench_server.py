"""`hivecell bench server` end to end, with small counts: a real `hivecell up` process."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.bench.server import measure_server, targets_met

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


async def test_fanout_and_takeover_are_measured(short_home: Path) -> None:
    report = await measure_server(short_home, clients=4, steps=3, takeovers=2)
    assert report.events_per_client > 3  # created, status changes, steps, finished
    assert report.deliveries == 4 * report.events_per_client
    assert report.fanout_latency.n == report.deliveries
    assert report.takeover_control.n == 2 and report.takeover_control.median_ms > 0
    assert report.takeover_paused.n == 2 and report.takeover_paused.median_ms > 0
    assert set(targets_met(report)) == {"takeover"}
    assert not list((short_home / "sandboxes").glob("*"))  # tasks' sandboxes are gone
