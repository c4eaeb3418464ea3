"""``hivecell bench agent``: what the agent runtime itself adds to a task.

Two numbers, both with a real sandbox, the real TaskRunner/TaskService, a real trace and store,
and the real LLMClient talking HTTP to an in-process ScriptedLLMServer:

- orchestration overhead per step: a step's wall time minus the parts that belong to someone
  else (see ``EXCLUDED``). What is left is the runner's own work: building the request and
  history, dispatching tool calls, base64 of the screenshot, waiting for the trace to reach
  the disk before the next request, events. A cheap tool (``wait`` 0 s) keeps the
  subtraction honest.
- warm dispatch: with the sandbox already running, the time from ``TaskService.run`` to the
  first model request arriving at the server. It includes the first screenshot, which the
  model needs before it can be asked anything.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, Field, SecretStr

from hivecell.agent.llm import LLMClient, ProviderConfig
from hivecell.agent.llm.script import Reply, ScriptedToolCall
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.agent.service import TaskRequest, TaskService
from hivecell.bench.adapters import AdapterReport, measure_adapters
from hivecell.bench.stats import Stats
from hivecell.bench.steps import timed_steps
from hivecell.sandbox.base import SandboxInfo, SandboxProvider, SandboxSpec
from hivecell.store import TaskStore, default_database_url

TARGETS_MS = {"overhead_per_step": 2.0, "warm_dispatch": 50.0}
EXCLUDED = [
    "model latency as measured by the LLM client (the HTTP exchange, including the SDK "
    "encoding the request and parsing the response)",
    "tool time (argument validation and the guest call, as recorded in the trace)",
    "screenshot capture (the guest's screenshot call at the end of each step)",
    "the first step (connection set-up and first-use initialisation)",
]
NOTES = [
    "trace records and screenshot files are written on a worker thread while the tool runs "
    "and the screenshot is captured, flushed before the next model request and fsync'd "
    "while the model thinks; what is still waited for (mostly writing the step's "
    "screenshot record) counts as overhead; trace_write is the writer's own wall time per "
    "step, mostly overlapped",
    "warm dispatch includes the first screenshot (the model is never asked without one); "
    "one warm-up run, which opens the HTTP connection, is left out",
]
WAIT = Reply(tool_calls=[ScriptedToolCall(name="wait", arguments={"seconds": 0})])


class AgentReport(BaseModel):
    steps: int
    overhead_per_step: Stats
    step_wall: Stats
    llm_latency: Stats
    tool_latency: Stats
    screenshot: Stats
    trace_write: Stats
    warm_dispatch: Stats
    adapters: dict[str, AdapterReport] = Field(
        default_factory=dict,
        description="per model adapter (openai-chat, anthropic, openai-responses): the "
        "runner's overhead and the whole model call against an instant scripted server",
    )
    excluded: list[str]
    notes: list[str]


async def measure_agent(
    provider: SandboxProvider, workdir: Path, *, steps: int = 50, dispatch_runs: int = 15
) -> AgentReport:
    """``workdir``: a scratch folder for the traces and the task store (removed afterwards)."""
    info = await provider.create(SandboxSpec())
    try:
        parts = await _step_parts(provider, info, workdir / "trace", steps)
        dispatch = await _warm_dispatch(provider, info, workdir, dispatch_runs)
        adapters = await measure_adapters(provider, info, workdir / "adapters", steps=steps)
    finally:
        with anyio.CancelScope(shield=True):
            await provider.destroy(info.id)
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(workdir, ignore_errors=True))
    parts.pop("model_call")
    return AgentReport(
        steps=steps,
        warm_dispatch=dispatch,
        adapters=adapters,
        excluded=EXCLUDED,
        notes=NOTES,
        **parts,
    )


def targets_met(report: AgentReport) -> dict[str, bool]:
    return {name: getattr(report, name).median_ms <= limit for name, limit in TARGETS_MS.items()}


# --- orchestration overhead --------------------------------------------------------------
async def _step_parts(
    provider: SandboxProvider, info: SandboxInfo, trace_dir: Path, steps: int
) -> dict[str, Stats]:
    async with _model(default=WAIT) as (llm, _):
        return await timed_steps(
            provider,
            info,
            llm,
            trace_dir,
            steps=steps,
            description="benchmark: wait, again and again",
        )


# --- warm dispatch -----------------------------------------------------------------------
def _done_at_once(request: dict[str, Any]) -> Reply:
    if request.get("response_format"):
        return Reply(text='{"complete": true, "success": true, "summary": "nothing to do"}')
    return Reply(text="nothing to do")


async def _warm_dispatch(
    provider: SandboxProvider, info: SandboxInfo, workdir: Path, runs: int
) -> Stats:
    samples = []
    async with (
        _model(default=_done_at_once) as (llm, server),
        TaskStore(default_database_url(workdir)) as store,
    ):
        service = TaskService(home=workdir, provider=provider, store=store, llm=llm)
        for _ in range(runs + 1):
            samples.append(await _dispatch_once(service, server, info.id))
    return Stats.of(samples[1:])  # the first run opens the HTTP connection


async def _dispatch_once(service: TaskService, server: ScriptedLLMServer, sandbox_id: str) -> float:
    request = TaskRequest(description="benchmark: nothing to do", sandbox_id=sandbox_id)
    record = await service.create(request)
    seen = len(server.requests)
    started = time.perf_counter()
    await service.run(record, request)
    arrived = server.requests[seen].received_at
    assert arrived is not None
    return (arrived - started) * 1000


# --- the model ---------------------------------------------------------------------------
@asynccontextmanager
async def _model(*, default: Any) -> AsyncIterator[tuple[LLMClient, ScriptedLLMServer]]:
    async with ScriptedLLMServer(default=default) as server:
        config = ProviderConfig(
            name="bench", base_url=server.base_url, api_key=SecretStr("bench"), model="scripted"
        )
        async with LLMClient(config) as client:
            yield client, server
