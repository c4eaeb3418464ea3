"""A page on another localhost port tries to stop, approve or answer a real running task
through the browser's cookie: every attempt is refused and the task does not move."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish
from tests.security.conftest_server import serve_config
from tests.security.test_server_perimeter import other_port
from tests.server.helpers import write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_a_foreign_page_cannot_touch_a_waiting_task(home: Path) -> None:
    steps = [act(call("ask_user_choice", question="Go?", options=["yes", "no"])), *finish()]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve_config(home) as server, server.client() as browser:
            created = await browser.post("/api/v1/tasks", json={"description": "wait for me"})
            assert created.status_code == 201, created.text
            task_id = created.json()["id"]
            path = f"/api/v1/tasks/{task_id}"
            with anyio.fail_after(120):
                # Polling the REST view on purpose, as a page would.
                while (await browser.get(path)).json()["status"] != "waiting_for_user":  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            evil = {"Origin": f"http://127.0.0.1:{other_port()}"}
            attacks = [
                await browser.post("/api/v1/stop-all", headers=evil),
                await browser.post(f"{path}/answer", json={"answer": "1"}, headers=evil),
                await browser.post(f"{path}/cancel", headers=evil),
                await browser.post(f"{path}/takeover", headers=evil),
            ]
            assert [r.status_code for r in attacks] == [403, 403, 403, 403]
            task = (await browser.get(path)).json()
            assert task["status"] == "waiting_for_user" and task["taken_over"] is False
            assert len(llm.chat_requests) == 1  # the model never saw an answer
            stopped = await browser.post("/api/v1/stop-all", headers={"Origin": server.origin})
            assert stopped.json() == {"stopped": [task_id]}
