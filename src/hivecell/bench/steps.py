"""One agent step split into the model's, the tools', the screenshot's and the runner's time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hivecell.agent.runner import ChatModel, RunSettings, TaskRunner
from hivecell.bench.stats import Stats
from hivecell.sandbox.base import SandboxInfo, SandboxProvider
from hivecell.trace import TraceWriter


class StepClock:
    """Splits each step's wall time into model, tool, screenshot and the runner's own time.

    A step runs from one model call's start to the next one's: everything the runner does
    per step (recording, acting, observing, building the next request) lies in between.
    """

    def __init__(self, llm: ChatModel, guest_call: Any, trace: TraceWriter) -> None:
        self._llm = llm
        self._call = guest_call
        self._trace = trace
        self.trace_ms: dict[int, float] = {}  # written behind the step: reported, not counted
        self.started: list[float] = [0.0]  # index = step (steps count from 1)
        self.llm_ms: list[float] = [0.0]  # as the model client measured its exchange
        self.call_ms: list[float] = [0.0]  # the whole complete() call, adapter work included
        self.shot_ms: list[float] = []  # index = step: the screenshot that ends it
        self.tool_ms: dict[int, float] = {}

    async def complete(self, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        started = time.perf_counter()
        self.started.append(started)
        response = await self._llm.complete(messages, **kwargs)
        self.call_ms.append((time.perf_counter() - started) * 1000)
        self.llm_ms.append(response.latency_ms)
        return response

    async def guest(self, method: str, params: dict[str, Any]) -> Any:
        started = time.perf_counter()
        result = await self._call(method, params)
        if method == "screenshot":
            self.shot_ms.append((time.perf_counter() - started) * 1000)
        return result

    async def record(self, step: int, kind: str, **fields: Any) -> Any:
        started = time.perf_counter()
        result = await self._trace.record(step, kind, **fields)
        self._add_trace_time(step, started)
        return result

    async def save_screenshot(self, step: int, png: bytes) -> str:
        started = time.perf_counter()
        name = await self._trace.save_screenshot(step, png)
        self._add_trace_time(step, started)
        return name

    async def write_conversation(self, messages: list[dict[str, Any]]) -> None:
        await self._trace.write_conversation(messages)

    async def sync(self) -> None:
        await self._trace.sync()

    def _add_trace_time(self, step: int, started: float) -> None:
        spent = (time.perf_counter() - started) * 1000
        self.trace_ms[step] = self.trace_ms.get(step, 0.0) + spent

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "step" and data["kind"] == "tool":
            step = data["step"]
            self.tool_ms[step] = self.tool_ms.get(step, 0.0) + data["tool_latency_ms"]

    def parts(self, step: int) -> tuple[float, float]:
        """(wall, overhead) of one step in milliseconds."""
        wall = (self.started[step + 1] - self.started[step]) * 1000
        other = self.llm_ms[step] + self.tool_ms[step] + self.shot_ms[step]
        return wall, wall - other


def summarise(clock: StepClock, measured: range) -> dict[str, Stats]:
    walls, overheads = zip(*(clock.parts(step) for step in measured), strict=True)
    return {
        "overhead_per_step": Stats.of(list(overheads)),
        "step_wall": Stats.of(list(walls)),
        "llm_latency": Stats.of([clock.llm_ms[s] for s in measured]),
        "model_call": Stats.of([clock.call_ms[s] for s in measured]),
        "tool_latency": Stats.of([clock.tool_ms[s] for s in measured]),
        "screenshot": Stats.of([clock.shot_ms[s] for s in measured]),
        "trace_write": Stats.of([clock.trace_ms[s] for s in measured]),
    }


async def timed_steps(
    provider: SandboxProvider,
    info: SandboxInfo,
    model: ChatModel,
    trace_dir: Path,
    *,
    steps: int,
    description: str,
) -> dict[str, Stats]:
    """``steps`` agent steps of ``model`` on the running sandbox, split into their parts
    (the first step, which warms up, and the last, which ends the run, are left out)."""
    async with await provider.connect(info.id) as guest, TraceWriter(trace_dir) as trace:
        clock = StepClock(model, guest.call, trace)
        runner = TaskRunner(
            description=description,
            guest=clock.guest,
            llm=clock,
            trace=clock,
            settings=RunSettings(max_steps=steps + 2),
            screen=(info.spec.width, info.spec.height),
            on_event=clock.on_event,
        )
        await runner.run()
    return summarise(clock, range(2, steps + 2))
