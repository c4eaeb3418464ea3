"""MCP over Streamable HTTP at ``/mcp`` in ``hivecell up``, driven by the SDK's own client
with the bearer token: real server, real sandboxes, a task through the task manager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import act, call, finish
from tests.mcp.helpers import failed, image_of, ok, poll_task, text_of
from tests.server.helpers import TOKEN, Running, serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@asynccontextmanager
async def http_client(running: Running, token: str | None = TOKEN) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=120) as http:
        transport = streamable_http_client(running.base_url + "/mcp", http_client=http)
        async with Client(transport, read_timeout_seconds=120) as client:
            yield client


async def test_a_client_with_the_token_drives_desktops_and_tasks_the_dashboard_sees(
    home: Path,
) -> None:
    steps = [act(call("run_shell", command="echo hi > /shared/outbox/hi.txt")), *finish("ok")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, http_client(running) as client:
            box = await ok(client, "sandbox_create", resolution=[800, 600])
            sid = box["id"]
            assert image_of(await client.call_tool("sandbox_screenshot", {"id": sid})).size == (
                800,
                600,
            )
            run = await ok(client, "sandbox_exec", id=sid, command=["sh", "-c", "echo $0", "x"])
            assert run["stdout"] == "x\n"
            listed = (await running.get("/sandboxes")).json()["items"]
            assert [item["id"] for item in listed] == [sid]  # on the dashboard too

            # wait=True: progress notifications over the event stream until the task ends.
            progress: list[float] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress.append(value)

            result = await client.call_tool(
                "task_run", {"description": "say hi", "wait": True}, progress_callback=on_progress
            )
            assert result.structured_content is not None, text_of(result)
            done = result.structured_content
            assert (done["status"], done["artifacts"], done["summary"]) == (
                "completed",
                ["hi.txt"],
                "ok",
            )
            assert progress and progress == sorted(progress)
            task = await ok(client, "task_status", id=done["id"])
            assert task == done
            seen = await running.task(task["id"])  # the REST view the dashboard reads
            assert (seen["status"], seen["artifacts"]) == ("completed", ["hi.txt"])

            files = await failed(client, "task_run", description="x", files=["/etc/passwd"])
            assert text_of(files).startswith("[invalid_params]")
            gone = await failed(client, "sandbox_exec", id="sb-nosuch", command="true")
            assert text_of(gone).startswith("[sandbox_not_found]")
            mine = [b for b in (await ok(client, "sandbox_list"))["items"] if b["session"]]
            assert [b["id"] for b in mine] == [sid]  # (the task's own may still be going)
    # The server stopped: what MCP made without keep is gone with it.
    assert await LocalProvider(home).list() == []


async def test_a_running_tasks_desktop_is_not_driven_and_its_question_is_answered(
    home: Path,
) -> None:
    """Over HTTP the server's rules hold: a task's desktop takes no MCP input (nor removal)
    unless a person took the task over; looking is fine. The answer goes through the manager
    and the trace says who gave it."""
    steps = [act(call("ask_user", question="Colour?")), *finish("thanks")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, http_client(running) as client:
            task_id = (await ok(client, "task_run", description="ask me"))["id"]
            asked = await poll_task(client, task_id, lambda t: t["pending"] is not None)
            assert (asked["status"], asked["pending"]["question"]) == (
                "waiting_for_user",
                "Colour?",
            )
            sid = asked["sandbox_id"]
            for tool, args in (
                ("sandbox_click", {"x": 5, "y": 5}),
                ("sandbox_type", {"text": "rm -rf ~\n"}),
                ("sandbox_exec", {"command": "true"}),
                ("sandbox_write_file", {"path": "/shared/x", "content": "x"}),
                ("sandbox_remove", {}),
            ):
                refused = await failed(client, tool, id=sid, **args)
                assert text_of(refused).startswith("[conflict]"), (tool, text_of(refused))
            assert image_of(await client.call_tool("sandbox_screenshot", {"id": sid})).size
            takeover = await running.post(f"/tasks/{task_id}/takeover")
            assert takeover.status_code == 200, takeover.text
            await ok(client, "sandbox_click", id=sid, x=5, y=5)  # now a person drives it
            handback = await running.post(f"/tasks/{task_id}/handback")
            assert handback.status_code == 200, handback.text
            await ok(client, "task_answer", id=task_id, answer="green")
            done = await poll_task(client, task_id, lambda t: t["status"] == "completed")
            assert done["summary"] == "thanks"
            trace = (await running.get(f"/tasks/{task_id}/trace")).json()["steps"]
            answers = [s for s in trace if s.get("action") == "answer"]
            assert [(a["by"]["kind"], a["arguments"]["answer"]) for a in answers] == [
                ("api", "green")
            ]
