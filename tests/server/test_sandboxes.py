"""Sandboxes and approvals through the API, on real sandboxes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import act, call, finish, tool_results
from tests.server.helpers import events, next_event, serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_create_list_screenshot_and_delete_a_sandbox(home: Path) -> None:
    async with serve(home) as running, events(running) as ws:
        reserved = await running.post("/sandboxes", json={"name": "task-mine"})
        assert reserved.status_code == 409
        unknown = await running.post("/sandboxes", json={"desktop": "fancy"})
        assert unknown.status_code == 422 and "desktop" in unknown.text
        body = {"width": 800, "height": 600, "desktop": "minimal"}
        response = await running.post("/sandboxes", json=body)
        assert response.status_code == 201, response.text
        box = response.json()
        assert box["spec"]["width"] == 800 and box["activity"] == "idle"
        assert box["spec"]["desktop"] == "minimal"
        assert "endpoint" not in box
        created = await next_event(ws, "sandbox.created")
        assert created["data"]["sandbox_id"] == box["id"]
        listed = (await running.get("/sandboxes")).json()["items"]
        assert [b["id"] for b in listed] == [box["id"]]
        shot = await running.get(f"/sandboxes/{box['id']}/screenshot")
        assert shot.status_code == 200 and shot.content.startswith(b"\x89PNG")
        gone = await running.client.delete(f"/api/v1/sandboxes/{box['id']}")
        assert gone.status_code == 204
        assert (await next_event(ws, "sandbox.destroyed"))["data"]["sandbox_id"] == box["id"]
        assert (await running.get("/sandboxes")).json()["items"] == []


async def test_a_dangerous_tool_waits_for_approval_and_a_denial_reaches_the_model(
    home: Path,
) -> None:
    steps = [
        act(call("delete_file", path="/shared/workspace/a.txt")),
        act(call("delete_file", path="/shared/workspace/b.txt")),
        *finish("asked twice"),
    ]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            task_id = (await running.post("/tasks", json={"description": "tidy"})).json()["id"]
            approval = await next_event(ws, "task.approval", task_id)
            assert approval["data"]["pending"]["tool"] == "delete_file"
            assert (
                await running.post(f"/tasks/{task_id}/answer", json={"answer": "x"})
            ).status_code == 422
            assert (await running.post(f"/tasks/{task_id}/approve")).status_code == 200
            await next_event(ws, "task.approval", task_id)
            busy = (await running.get("/sandboxes")).json()["items"][0]
            assert busy["task_id"] == task_id and busy["activity"] == "busy"
            refused = await running.client.delete(f"/api/v1/sandboxes/{busy['id']}")
            assert refused.status_code == 409
            denied = await running.post(f"/tasks/{task_id}/deny", json={"reason": "keep b"})
            assert denied.status_code == 200
            await next_event(ws, "task.finished", task_id)
    results = tool_results(llm.chat_requests[2])
    assert "denied" in results[-1]["error"] and "keep b" in results[-1]["error"]


async def test_a_stopped_sandbox_has_no_picture_and_an_unknown_one_is_404(home: Path) -> None:
    async with serve(home) as running:
        box = (await running.post("/sandboxes", json={})).json()
        await LocalProvider(home).stop(box["id"])  # as the task manager does before collecting
        shot = await running.get(f"/sandboxes/{box['id']}/screenshot")
        assert shot.status_code == 204 and shot.content == b""  # a polling dashboard logs nothing
        unknown = await running.get("/sandboxes/sb-00000000/screenshot")
        assert unknown.status_code == 404
        assert (await running.client.delete(f"/api/v1/sandboxes/{box['id']}")).status_code == 204
        # The dashboard's thumbnail poll can race a finished task's removal: no error for it.
        gone = await running.get(f"/sandboxes/{box['id']}/screenshot?missing_ok=true")
        assert gone.status_code == 204 and gone.content == b""
        assert (await running.get(f"/sandboxes/{box['id']}/screenshot")).status_code == 404
