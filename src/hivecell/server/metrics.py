"""The server's Prometheus metrics: one registry per app (tests run many apps in one process).

Fed three ways:
- events: a task's steps and its end come off the events hub (``consume``), so the task
  manager needs no hooks; step and model durations as they happen, task duration, tokens
  and cost when a task ends;
- scrape time: tasks by status (the store), queue length and running tasks (the manager),
  sandboxes and their memory and CPU (the stats sampler's latest round);
- setters: ``set_pool_size`` for the warm pool.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from hivecell.store.records import TaskStatus

if TYPE_CHECKING:
    from hivecell.pool.metrics import Totals
    from hivecell.server.events import EventHub
    from hivecell.store import TaskStore

log = logging.getLogger(__name__)

MB = 1024 * 1024
# seconds: a step is a model call plus its actions, a task minutes to hours
STEP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TASK_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)
MODEL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = Gauge("hivecell_tasks", "Tasks in the store by status", ["status"], registry=r)
        self.queued = Gauge("hivecell_queue_length", "Tasks waiting for a slot", registry=r)
        self.running = Gauge("hivecell_running_tasks", "Tasks running now", registry=r)
        self.pool_size = Gauge("hivecell_pool_size", "Warm sandboxes ready", registry=r)
        self.sandboxes = Gauge("hivecell_sandboxes", "Running sandboxes (sampled)", registry=r)
        self.sandbox_pss = Gauge(
            "hivecell_sandbox_memory_pss_bytes", "PSS of all running sandboxes", registry=r
        )
        self.sandbox_rss = Gauge(
            "hivecell_sandbox_memory_rss_bytes", "RSS of all running sandboxes", registry=r
        )
        self.sandbox_cpu = Gauge(
            "hivecell_sandbox_cpu_percent", "CPU of all running sandboxes (100 = one core)",
            registry=r,
        )  # fmt: skip
        self.task_seconds = Histogram(
            "hivecell_task_duration_seconds", "Task run time, start to end, by final status",
            ["status"], buckets=TASK_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "hivecell_step_duration_seconds", "Time from one step of a task to its next",
            buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_seconds = Histogram(
            "hivecell_model_latency_seconds", "Duration of each model call that answered",
            buckets=MODEL_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "hivecell_tokens", "Model tokens of finished tasks", ["kind"], registry=r
        )
        self.cost = Counter("hivecell_cost_usd", "Model cost of finished tasks (USD)", registry=r)
        self._last_step: dict[str, tuple[int, float]] = {}  # task -> (step, first seen)

    # --- from events -----------------------------------------------------------------------
    async def consume(self, hub: EventHub) -> None:
        """Follow the hub until cancelled (subscribing again if it ever drops us)."""
        while True:
            with hub.subscribe() as subscriber:
                async for event in subscriber.receive:
                    self.observe(event)
            log.warning("metrics fell behind the events hub; some events were not counted")

    def observe(self, event: dict[str, Any]) -> None:
        data = event["data"]
        if event["type"] == "task.step":
            self._step(data, event["time"])
        elif event["type"] == "task.finished":
            self._finished(data["task"])

    def _step(self, data: dict[str, Any], now: float) -> None:
        latency = data.get("llm_latency_ms")
        if data.get("kind") == "llm" and isinstance(latency, int | float):
            self.model_seconds.observe(latency / 1000)
        task_id, step = data.get("task_id"), data.get("step")
        if not isinstance(task_id, str) or not isinstance(step, int):
            return
        last = self._last_step.get(task_id)
        if last is None or step > last[0]:
            if last is not None:
                self.step_seconds.observe(max(0.0, now - last[1]))
            self._last_step[task_id] = (step, now)

    def _finished(self, task: dict[str, Any]) -> None:
        self._last_step.pop(task["id"], None)
        started, finished = task.get("started_at"), task.get("finished_at")
        if started and finished:
            seconds = (_time(finished) - _time(started)).total_seconds()
            self.task_seconds.labels(status=task["status"]).observe(max(0.0, seconds))
        self.tokens.labels(kind="prompt").inc(task.get("prompt_tokens") or 0)
        self.tokens.labels(kind="completion").inc(task.get("completion_tokens") or 0)
        self.cost.inc(task.get("cost_usd") or 0.0)

    # --- set from outside ------------------------------------------------------------------
    def set_pool_size(self, size: int) -> None:
        self.pool_size.set(size)

    def set_sandboxes(self, totals: Totals) -> None:
        self.sandboxes.set(totals.sandboxes)
        self.sandbox_pss.set(totals.memory_pss_mb * MB)
        self.sandbox_rss.set(totals.memory_rss_mb * MB)
        self.sandbox_cpu.set(totals.cpu_percent)

    # --- scrape ----------------------------------------------------------------------------
    async def render(self, store: TaskStore, counts: dict[str, int], totals: Totals) -> bytes:
        for status in TaskStatus:
            self.tasks.labels(status=status.value).set(await store.count(status=status))
        self.queued.set(counts["queued"])
        self.running.set(counts["running"])
        self.set_sandboxes(totals)
        return generate_latest(self.registry)


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)
