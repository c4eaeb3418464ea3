"""``hivecell bench agent --json``: one object with the measures, targets and what is excluded."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from hivecell.sandbox.local.provider import LocalProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_bench_agent_reports_medians_against_targets(
    home: Path, provider: LocalProvider
) -> None:
    args = ["bench", "agent", "--json", "--steps", "5", "--runs", "3", "--home", str(home)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVECELL_")}
    with anyio.fail_after(120):
        done = await anyio.run_process([sys.executable, "-m", "hivecell.cli.main", *args], env=env)
    result = json.loads(done.stdout)
    report = result["agent"]
    assert result["targets_ms"] == {"overhead_per_step": 2.0, "warm_dispatch": 50.0}
    assert set(result["targets_met"]) == {"overhead_per_step", "warm_dispatch"}
    assert report["overhead_per_step"]["n"] == 5 and report["warm_dispatch"]["n"] == 3
    parts = ("llm_latency", "tool_latency", "screenshot")
    assert all(report[part]["median_ms"] > 0 for part in (*parts, "warm_dispatch"))
    # The overhead is what is left of a step once the excluded parts are taken out.
    assert 0 < report["overhead_per_step"]["min_ms"] < report["step_wall"]["min_ms"]
    assert any("model latency" in text for text in report["excluded"])
    # every adapter drove the same loop through its vendor's scripted server
    assert set(report["adapters"]) == {"openai-chat", "anthropic", "openai-responses"}
    for adapter in report["adapters"].values():
        assert adapter["model_round_trip"]["n"] == 5 and adapter["model_round_trip"]["min_ms"] > 0
        assert adapter["overhead_per_step"]["n"] == 5
    assert await provider.list() == []
    left = [p async for p in anyio.Path(home / "bench").iterdir()]
    assert left == []  # its scratch traces and store are gone
