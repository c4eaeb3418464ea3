"""Per-sandbox stats and Prometheus metrics through a real server, on real sandboxes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish
from tests.server.helpers import Running, events, next_event, serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

METRIC_NAMES = {
    "hivecell_tasks",
    "hivecell_queue_length",
    "hivecell_running_tasks",
    "hivecell_pool_size",
    "hivecell_sandboxes",
    "hivecell_sandbox_memory_pss_bytes",
    "hivecell_sandbox_memory_rss_bytes",
    "hivecell_sandbox_cpu_percent",
    "hivecell_task_duration_seconds",
    "hivecell_step_duration_seconds",
    "hivecell_model_latency_seconds",
    "hivecell_tokens",
    "hivecell_cost_usd",
}


async def test_stats_of_a_sandbox_by_route_and_by_event(home: Path) -> None:
    async with serve(home, stats_interval=0.2) as running, events(running) as ws:
        box = (await running.post("/sandboxes", json={"width": 640, "height": 480})).json()
        with anyio.fail_after(60):
            # The route gives the latest sample; a round taken while the box booted (its
            # supervisor alone up) may still be it on a loaded host: wait for a newer one.
            while True:
                stats = await running.get(f"/sandboxes/{box['id']}/stats")
                assert stats.status_code == 200, stats.text
                figures = stats.json()
                if figures["processes"] >= 2:
                    break
                await next_event(ws, "sandbox.stats")
        assert figures["sandbox_id"] == box["id"] and figures["memory_pss_mb"] > 0
        assert 0 < figures["memory_pss_mb"] <= figures["memory_rss_mb"]
        assert set(figures) >= {"cpu_percent", "guest_rtt_ms", "disk_used_mb", "cpu_seconds"}
        with anyio.fail_after(60):
            # A round while it booted saw no guest yet (rtt null): wait for one that has it.
            sample = await _next_sample(ws, box["id"], lambda s: s["guest_rtt_ms"] is not None)
        assert sample["guest_rtt_ms"] > 0 and sample["memory_pss_mb"] > 0
        assert (await running.get("/sandboxes/sb-00000000/stats")).status_code == 404
        assert (await running.get("/sandboxes/..%2F..%2Fetc/stats")).status_code == 404
        async with httpx2.AsyncClient(base_url=running.base_url) as anonymous:
            refused = await anonymous.get(f"/api/v1/sandboxes/{box['id']}/stats")
        assert refused.status_code == 401
        await running.client.delete(f"/api/v1/sandboxes/{box['id']}")
        while True:  # once it is gone, the next round leaves it out
            event = await next_event(ws, "sandbox.stats")
            if box["id"] not in [item["sandbox_id"] for item in event["data"]["items"]]:
                break
        assert (await running.get(f"/sandboxes/{box['id']}/stats")).status_code == 404


async def test_metrics_need_the_token_and_count_a_finished_task(home: Path) -> None:
    steps = [act(call("run_shell", command="echo hi")), *finish("said hi")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home, stats_interval=0.2) as running, events(running) as ws:
            task_id = (await running.post("/tasks", json={"description": "hi"})).json()["id"]
            await next_event(ws, "task.finished", task_id)
            task = await running.task(task_id)
            async with httpx2.AsyncClient(base_url=running.base_url) as anonymous:
                assert (await anonymous.get("/metrics")).status_code == 401
                wrong = {"Authorization": "Bearer not-the-token"}
                assert (await anonymous.get("/metrics", headers=wrong)).status_code == 401
            samples = await _scrape(running)
    assert task["status"] == "completed"
    assert samples[("hivecell_tasks", (("status", "completed"),))] == 1
    assert samples[("hivecell_tasks", (("status", "failed"),))] == 0
    assert samples[("hivecell_task_duration_seconds_count", (("status", "completed"),))] == 1
    assert samples[("hivecell_model_latency_seconds_count", ())] == len(llm.chat_requests)
    assert samples[("hivecell_step_duration_seconds_count", ())] >= 1
    assert samples[("hivecell_tokens_total", (("kind", "prompt"),))] == task["prompt_tokens"] > 0
    assert (
        samples[("hivecell_tokens_total", (("kind", "completion"),))] == (task["completion_tokens"])
    )
    assert samples[("hivecell_cost_usd_total", ())] == pytest.approx(task["cost_usd"])
    assert samples[("hivecell_queue_length", ())] == 0
    assert samples[("hivecell_running_tasks", ())] == 0


async def _next_sample(
    ws: Any, sandbox_id: str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    while True:
        event = await next_event(ws, "sandbox.stats")
        items = {item["sandbox_id"]: item for item in event["data"]["items"]}
        if sandbox_id in items and ready(items[sandbox_id]):
            return items[sandbox_id]


async def _scrape(running: Running) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await running.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = list(text_string_to_metric_families(response.text))
    assert {family.name for family in families} >= METRIC_NAMES
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }
