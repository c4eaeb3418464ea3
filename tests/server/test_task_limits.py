"""Server limits: a task at its limit pauses and resumes with more, or ends if limits are final."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish
from tests.server.helpers import events, next_event, serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def at_limit(task: dict[str, Any]) -> bool:
    return task["status"] == "paused" and task["limit"] == "max_steps_reached"


async def test_max_steps_pauses_and_resumes_with_more_steps(home: Path) -> None:
    steps = [act(call("wait", seconds=0)), *finish("done")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            body = {"description": "wait once", "max_steps": 1, "timeout_s": 4}
            task_id = (await running.post("/tasks", json=body)).json()["id"]
            paused = await running.wait_for(task_id, at_limit)
            assert "max_steps" in paused["pause_reason"]
            # The time limit counts work only: a task paused longer than its timeout stays
            # paused at max_steps (waiting longer than timeout_s is the point of this check).
            await anyio.sleep(5)
            still = await running.task(task_id)
            assert at_limit(still), still
            bare = await running.post(f"/tasks/{task_id}/resume")
            assert bare.status_code == 422, bare.text
            assert bare.json()["error"]["context"]["field"] == "extra_steps"
            wrong = await running.post(f"/tasks/{task_id}/resume", json={"extra_time_s": 60})
            assert wrong.status_code == 422
            junk = await running.post(f"/tasks/{task_id}/resume", json={"extra_steps": 0})
            assert junk.status_code == 422
            more = await running.post(f"/tasks/{task_id}/resume", json={"extra_steps": 2})
            assert more.status_code == 200, more.text
            finished = await next_event(ws, "task.finished", task_id)
            assert finished["data"]["task"]["status"] == "completed"
            done = await running.task(task_id)
            assert done["limit"] is None and done["pause_reason"] is None


async def test_cancel_ends_a_task_paused_at_its_limit(home: Path) -> None:
    async with ScriptedLLMServer([act(call("wait", seconds=0))]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            body = {"description": "wait once", "max_steps": 1}
            task_id = (await running.post("/tasks", json=body)).json()["id"]
            await running.wait_for(task_id, at_limit)
            assert (await running.post(f"/tasks/{task_id}/cancel")).status_code == 200
            await running.wait_for(task_id, lambda t: t["status"] == "cancelled")


async def test_limits_final_ends_the_task_at_its_limit(home: Path) -> None:
    async with ScriptedLLMServer([act(call("wait", seconds=0))]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            final = {"task": {"limits_final": True}}
            put = await running.client.put("/api/v1/settings", json=final)
            assert put.status_code == 200 and put.json()["task"]["limits_final"] is True
            body = {"description": "wait once", "max_steps": 1}
            task_id = (await running.post("/tasks", json=body)).json()["id"]
            ended = await running.wait_for(task_id, lambda t: t["status"] == "max_steps_reached")
            assert ended["success"] is False
