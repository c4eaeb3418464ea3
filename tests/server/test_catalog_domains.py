"""tool_domains through the API: the model is offered what the task enabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.agent import catalog
from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import finish, tool_names
from tests.server.helpers import events, next_event, serve, write_provider

pytestmark = [pytest.mark.anyio]
NOTE = {"files": ("note.txt", b"x", "text/plain")}  # makes the body multipart


async def test_unknown_domain_is_refused(home: Path) -> None:
    async with ScriptedLLMServer([]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            response = await running.post(
                "/tasks", json={"description": "x", "tool_domains": ["spaces"]}
            )
            assert response.status_code == 422 and "unknown tool domain(s) spaces" in response.text


@pytest.mark.slow
async def test_tool_domains_per_task_json_and_multipart(home: Path) -> None:
    async with ScriptedLLMServer([*finish(), *finish(), *finish()]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            body = {"description": "browse", "tool_domains": ["browser"]}
            first = (await running.post("/tasks", json=body)).json()["id"]
            await next_event(ws, "task.finished", first)
            form = {"description": "look", "tool_domains": "display, media"}
            response = await running.post("/tasks", data=form, files=NOTE)
            assert response.status_code == 201, response.text
            await next_event(ws, "task.finished", response.json()["id"])
            third = (await running.post("/tasks", json={"description": "default"})).json()["id"]
            await next_event(ws, "task.finished", third)
            record = await running.task(first)
            assert record["settings"]["tool_domains"] == ["browser"]
    requests = [r for r in llm.chat_requests if r.get("tools")]
    assert set(tool_names(requests[0])) == catalog.CORE | set(catalog.DOMAINS["browser"])
    media = set(catalog.DOMAINS["display"]) | set(catalog.DOMAINS["media"])
    assert set(tool_names(requests[1])) == catalog.CORE | media
    assert {"list_windows", "run_shell", "mouse_click"} <= set(tool_names(requests[2]))
