"""Every intervention (who, when, what) is in the task's trace and its exports.

Real server, real sandboxes, the scripted model over HTTP. Each action is performed through
the API on a real task; the trace read back through ``GET /tasks/{id}/trace`` must hold an
``intervention`` record naming the action, the client and its address, with a timestamp.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call
from tests.server.helpers import TOKEN, Running, events, next_event, serve, write_provider
from tests.server.test_tasks import slow_waits

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

RM = "rm -rf /shared/workspace/junk"


async def interventions(running: Running, task_id: str) -> list[dict[str, Any]]:
    trace = (await running.get(f"/tasks/{task_id}/trace")).json()
    return [s for s in trace["steps"] if s["kind"] == "intervention"]


def actions(records: list[dict[str, Any]]) -> list[str]:
    return [r["action"] for r in records]


async def wait_status(running: Running, task_id: str, status: str) -> dict[str, Any]:
    return await running.wait_for(task_id, lambda t: t["status"] == status)


async def test_each_action_on_a_running_task_is_recorded_with_who_and_what(home: Path) -> None:
    steps = [
        act(call("ask_user", question="Which folder?")),
        act(call("run_shell", command=RM)),  # asks for approval: approved
        act(call("run_shell", command=RM)),  # asks again: denied
    ]
    async with ScriptedLLMServer(steps, default=slow_waits(1)[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            task_id = (await running.post("/tasks", json={"description": "tidy"})).json()["id"]
            base = f"/tasks/{task_id}"
            await next_event(ws, "task.question", task_id)
            assert (await running.post(f"{base}/answer", json={"answer": "junk"})).is_success
            await next_event(ws, "task.approval", task_id)
            assert (await running.post(f"{base}/approve")).is_success
            await next_event(ws, "task.approval", task_id)
            assert (await running.post(f"{base}/deny", json={"reason": "enough"})).is_success
            await wait_status(running, task_id, "running")
            assert (await running.post(f"{base}/pause")).is_success
            await wait_status(running, task_id, "paused")
            assert (await running.post(f"{base}/resume", json={"text": "go on"})).is_success
            assert (await running.post(f"{base}/takeover")).is_success
            await _as_dashboard(running, f"{base}/instruct", {"text": "from the browser"})
            assert (await running.post(f"{base}/handback")).is_success
            refused = await running.post(f"{base}/approve")  # nothing to approve: not recorded
            assert refused.status_code == 409
            assert (await running.post(f"{base}/cancel")).is_success
            await next_event(ws, "task.finished", task_id)
            records = await interventions(running, task_id)
            await _check_exports(running, task_id)
    assert actions(records) == [
        "answer",
        "approve",
        "deny",
        "pause",
        "resume",
        "takeover",
        "instruct",
        "handback",
        "cancel",
    ]
    by_action = {r["action"]: r for r in records}
    assert by_action["answer"]["arguments"] == {"answer": "junk", "tool": "ask_user"}
    assert by_action["approve"]["arguments"] == {"tool": "run_shell"}
    assert by_action["deny"]["arguments"] == {"reason": "enough", "tool": "run_shell"}
    assert by_action["resume"]["arguments"] == {"text": "go on"}
    assert by_action["instruct"]["by"] == {"kind": "dashboard", "address": "127.0.0.1"}
    others = [r for r in records if r["action"] != "instruct"]
    assert all(r["by"] == {"kind": "api", "address": "127.0.0.1"} for r in others)
    times = [datetime.fromisoformat(r["ts"]) for r in records]
    assert times == sorted(times)


async def _as_dashboard(running: Running, path: str, body: dict[str, Any]) -> None:
    """A browser: the login cookie, no bearer header, an Origin as fetch() sends."""
    async with httpx2.AsyncClient(
        base_url=running.base_url,
        cookies={"hivecell_token": TOKEN},
        headers={"Origin": running.base_url},
    ) as browser:
        response = await browser.post("/api/v1" + path, json=body)
        assert response.is_success, response.text


async def _check_exports(running: Running, task_id: str) -> None:
    exported = await running.get(f"/tasks/{task_id}/export", params={"format": "json"})
    kinds = [(s["kind"], s.get("action")) for s in exported.json()["steps"]]
    assert ("intervention", "takeover") in kinds
    md = await running.get(f"/tasks/{task_id}/export", params={"format": "md"})
    assert "intervention · takeover by api (127.0.0.1)" in md.text
    assert "intervention · instruct by dashboard (127.0.0.1)" in md.text


async def test_queued_tasks_stop_all_and_retry_are_recorded(home: Path) -> None:
    async with ScriptedLLMServer([], default=slow_waits(1)[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home, max_concurrent=1) as running:
            first, second, third = [
                (await running.post("/tasks", json={"description": f"task {n}"})).json()["id"]
                for n in range(3)
            ]
            await wait_status(running, first, "running")
            # Queued: kept until the runner exists, then written first in its trace.
            await running.post(f"/tasks/{second}/instruct", json={"text": "early word"})
            assert (await running.post(f"/tasks/{third}/pause")).is_success
            assert (await running.post(f"/tasks/{third}/cancel")).is_success  # never runs
            assert (await running.post(f"/tasks/{first}/cancel")).is_success
            await wait_status(running, second, "running")
            stopped = (await running.post("/stop-all")).json()["stopped"]
            assert stopped == [second]
            await wait_status(running, second, "cancelled")
            retried = await running.post(f"/tasks/{first}/retry")
            assert retried.status_code == 201
            again = retried.json()["id"]
            await running.post("/stop-all")
            await wait_status(running, again, "cancelled")
            first_records = await interventions(running, first)
            second_records = await interventions(running, second)
            third_records = await interventions(running, third)
    assert actions(first_records) == ["cancel", "retry"]
    assert first_records[1]["arguments"] == {"task_id": again}
    assert actions(second_records) == ["instruct", "stop_all"]
    assert second_records[0]["arguments"] == {"text": "early word"}
    assert actions(third_records) == ["pause", "cancel"]


async def test_an_approval_denied_at_its_timeout_is_recorded_as_the_systems(home: Path) -> None:
    steps = [act(call("run_shell", command=RM))]
    async with ScriptedLLMServer(steps, default=slow_waits(1)[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            put = await running.client.put("/api/v1/settings", json={"approval": {"timeout_s": 1}})
            assert put.status_code == 200, put.text
            task_id = (await running.post("/tasks", json={"description": "tidy"})).json()["id"]
            await next_event(ws, "task.approval", task_id)
            await wait_status(running, task_id, "running")  # nobody answered: denied
            await running.post(f"/tasks/{task_id}/cancel")
            await next_event(ws, "task.finished", task_id)
            records = await interventions(running, task_id)
    assert actions(records) == ["deny", "cancel"]
    assert records[0]["by"] == {"kind": "system"}
    assert records[0]["arguments"] == {"tool": "run_shell", "timeout_s": 1.0}
