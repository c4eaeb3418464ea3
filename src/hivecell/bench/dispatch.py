"""Dispatch latency: ``POST /tasks`` -> the model's first request for that task, with a warm
sandbox waiting in the pool and, in the same run, with the pool off (a cold boot).

Tasks run one at a time, so the first model request after a POST is that task's. The model
server runs in this process: its arrival stamps (``perf_counter``) share the bench's clock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from hivecell.agent.llm.script import Reply
from hivecell.agent.llm.scripted import CHAT_PATH, ScriptedLLMServer
from hivecell.bench.server import BenchServerError, _hivecell_up, _Server, _write_provider
from hivecell.bench.stats import Stats

TARGET_WARM_MS = 50.0  # median, POST /tasks -> first model request
# The model says it is done, and the completion check reads the same text as its verdict.
DONE = Reply(text=json.dumps({"complete": True, "success": True, "summary": "done"}))
FINAL = {"completed", "failed", "cancelled", "timed_out", "interrupted", "guest_lost"}


class DispatchReport(BaseModel):
    warm: Stats
    cold: Stats
    warm_hits: int
    runs: int
    notes: list[str]


async def measure_dispatch(home: Path, *, runs: int = 10) -> DispatchReport:
    async with ScriptedLLMServer(default=DONE) as model:
        _write_provider(home, model.base_url)
        async with _hivecell_up(home) as server:
            await _pool_size(server, 1)
            warm, hits = await _dispatches(server, model, runs, warm=True)
            await _pool_size(server, 0)
            cold, _ = await _dispatches(server, model, runs, warm=False)
    return DispatchReport(
        warm=Stats.of(warm),
        cold=Stats.of(cold),
        warm_hits=hits,
        runs=runs,
        notes=[
            "dispatch: POST /tasks sent -> the scripted model has read the task's first "
            f"request (target: warm median <= {TARGET_WARM_MS:g} ms); warm: a sandbox of the "
            "task's shape was waiting in the pool; cold: pool off, the task boots its own",
        ],
    )


async def _pool_size(server: _Server, size: int) -> None:
    response = await server.http.put("/api/v1/settings", json={"pool": {"size": size}})
    if response.status_code >= 400:
        raise BenchServerError(f"PUT /settings: {response.status_code} {response.text}")


async def _dispatches(
    server: _Server, model: ScriptedLLMServer, runs: int, *, warm: bool
) -> tuple[list[float], int]:
    samples: list[float] = []
    for _ in range(runs):
        if warm:
            await _until_pool(server, lambda view: view["warm"] >= 1)
        seen = len(model.requests)
        sent = time.perf_counter()
        task = await server.post("/tasks", json={"description": "say done"})
        done = await _until_done(server, task["id"])
        first = next(r for r in model.requests[seen:] if r.path == CHAT_PATH)
        assert first.received_at is not None
        samples.append((first.received_at - sent) * 1000)
        assert done["sandbox_id"]
    view = await server.get("/pool")
    hits = sum(shape["taken"] for shape in view["shapes"])  # tasks that found a warm one
    return samples, hits


async def _until_pool(server: _Server, check: Any) -> dict[str, Any]:
    with anyio.fail_after(120):
        while True:  # the pool refills in the background: poll its view as a client does
            view = await server.get("/pool")
            if check(view):
                return dict(view)
            await anyio.sleep(0.05)


async def _until_done(server: _Server, task_id: str) -> dict[str, Any]:
    with anyio.fail_after(300):
        while True:
            task = await server.get(f"/tasks/{task_id}")
            if task["status"] in FINAL:
                if task["status"] != "completed":
                    raise BenchServerError(f"task {task_id} ended {task['status']}: {task}")
                return dict(task)
            await anyio.sleep(0.05)
