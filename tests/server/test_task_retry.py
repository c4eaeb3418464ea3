"""``POST /tasks/{id}/retry``: a new task, same settings and inbox files, linked to the original."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish
from tests.server.helpers import serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COPY = "tr a-z A-Z < /shared/inbox/notes.txt > /shared/outbox/shout.txt"


async def test_retry_a_cancelled_task_with_its_files(home: Path) -> None:
    steps = [act(call("run_shell", command=COPY)), act(call("run_shell", command=COPY))]
    async with ScriptedLLMServer([*steps, *finish("shouted")]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            files = {"files": ("notes.txt", b"three apples\n", "text/plain")}
            data = {
                "description": "shout the notes",
                "max_steps": "1",
                "max_tokens": "100000",
                "approve_tools": "delete_file",
                "inbox_writable": "true",
                "desktop": "minimal",
            }
            first = (await running.post("/tasks", data=data, files=files)).json()["id"]
            await running.wait_for(first, lambda t: t["limit"] == "max_steps_reached")
            early = await running.post(f"/tasks/{first}/retry")
            assert early.status_code == 409, early.text  # still paused: not ended
            assert (await running.post(f"/tasks/{first}/cancel")).status_code == 200
            await running.wait_for(first, lambda t: t["status"] == "cancelled")
            response = await running.post(f"/tasks/{first}/retry")
            assert response.status_code == 201, response.text
            again = response.json()
            assert again["id"] != first and again["retry_of"] == first
            assert again["settings"]["max_steps"] == 1 and again["status"] == "queued"
            kept = again["settings"]  # everything the caller chose comes along
            assert kept["max_tokens"] == 100000 and kept["approve_tools"] == ["delete_file"]
            assert kept["inbox_writable"] is True and kept["desktop"] == "minimal"
            # Same settings: it stops at max_steps=1 too; given more it completes.
            paused = await running.wait_for(again["id"], lambda t: t["limit"] is not None)
            assert (
                paused["sandbox_id"]
                and paused["sandbox_id"] != (await running.task(first))["sandbox_id"]
            )
            box = (await running.get(f"/sandboxes/{paused['sandbox_id']}")).json()
            assert box["spec"]["desktop"] == "minimal"  # the retry's sandbox is the same kind
            more = await running.post(f"/tasks/{again['id']}/resume", json={"extra_steps": 2})
            assert more.status_code == 200, more.text
            done = await running.wait_for(again["id"], lambda t: t["status"] == "completed")
            assert done["artifacts"] == ["shout.txt"]
            shout = await running.get(f"/tasks/{again['id']}/artifacts/shout.txt")
            assert shout.content == b"THREE APPLES\n"
            completed = await running.post(f"/tasks/{again['id']}/retry")
            assert completed.status_code == 409
            assert (await running.post("/tasks/nosuchtask/retry")).status_code == 404
            assert sorted(p.name for p in (home / "inputs").iterdir()) == sorted(
                [first, again["id"]]
            )
