"""Tasks through the REST API alone, on real sandboxes with the scripted model over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm.script import Reply
from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish, tool_results, user_texts
from tests.server.helpers import events, next_event, serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

COPY = "tr a-z A-Z < /shared/inbox/notes.txt > /shared/outbox/shout.txt"


async def test_a_task_with_a_file_asks_completes_and_exports(home: Path) -> None:
    steps = [
        act(call("ask_user_choice", question="Which case?", options=["lower", "upper"])),
        act(call("run_shell", command=COPY)),
        *finish("shouted"),
    ]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            files = {"files": ("notes.txt", b"three apples\n", "text/plain")}
            data = {"description": "shout the notes", "max_steps": "10"}
            response = await running.post("/tasks", data=data, files=files)
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]
            assert (await next_event(ws, "task.created", task_id))["data"]["task"]["status"] == (
                "queued"
            )
            question = await next_event(ws, "task.question", task_id)
            assert question["data"]["pending"]["options"] == ["lower", "upper"]
            task = await running.task(task_id)
            assert task["status"] == "waiting_for_user" and task["pending"]["kind"] == "choice"
            wrong = await running.post(f"/tasks/{task_id}/answer", json={"answer": "purple"})
            assert wrong.status_code == 422 and "1) lower" in wrong.json()["error"]["message"]
            answered = await running.post(f"/tasks/{task_id}/answer", json={"answer": "2"})
            assert answered.status_code == 200, answered.text
            finished = await next_event(ws, "task.finished", task_id)
            assert finished["data"]["task"]["status"] == "completed"
            await _check_outputs(running, task_id)
    assert tool_results(llm.chat_requests[1])[0] == {"answer": "upper"}


async def _check_outputs(running: Any, task_id: str) -> None:
    task = await running.task(task_id)
    assert task["success"] is True and task["artifacts"] == ["shout.txt"]
    listing = (await running.get(f"/tasks/{task_id}/artifacts")).json()["items"]
    assert listing == [{"name": "shout.txt", "size": 13}]
    download = await running.get(f"/tasks/{task_id}/artifacts/shout.txt")
    assert download.content == b"THREE APPLES\n"
    escape = await running.get(f"/tasks/{task_id}/artifacts/..%2F..%2Fhivecell.db")
    assert escape.status_code in (403, 404)
    trace = (await running.get(f"/tasks/{task_id}/trace")).json()
    tools = [s.get("tool") for s in trace["steps"] if s["kind"] == "tool"]
    assert tools == ["ask_user_choice", "run_shell"]
    shot = next(s["screenshot"] for s in trace["steps"] if s.get("screenshot"))
    image = await running.get(f"/tasks/{task_id}/screenshots/{shot}")
    assert image.status_code == 200 and image.content[:4] in (b"\x89PNG", b"RIFF")
    assert (await running.get(f"/tasks/{task_id}/screenshots/..%2Ftrace.jsonl")).status_code == 404
    html = await running.get(f"/tasks/{task_id}/export", params={"format": "html"})
    assert html.status_code == 200 and "run_shell" in html.text
    assert html.headers["content-type"].startswith("text/html")
    md = await running.get(f"/tasks/{task_id}/export", params={"format": "md"})
    assert md.text.startswith("# Trace")


def slow_waits(count: int) -> list[Reply]:
    return [act(call("wait", seconds=0), delay_s=0.3) for _ in range(count)]


async def test_pause_instruct_resume_and_cancel_a_running_task(home: Path) -> None:
    async with ScriptedLLMServer(slow_waits(2), default=slow_waits(1)[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            task_id = (await running.post("/tasks", json={"description": "wait"})).json()["id"]
            await next_event(ws, "task.step", task_id)
            with anyio.fail_after(0.5):  # take over answers at once; the runner stops later
                took = await running.post(f"/tasks/{task_id}/takeover")
            assert took.status_code == 200 and took.json()["taken_over"] is True
            paused = await running.wait_for(task_id, lambda t: t["status"] == "paused")
            assert paused["steps"] >= 1
            seen = len(llm.chat_requests)
            await anyio.sleep(0.5)
            assert len(llm.chat_requests) == seen  # paused means no model calls
            note = await running.post(f"/tasks/{task_id}/instruct", json={"text": "hurry up"})
            assert note.status_code == 200
            back = await running.post(f"/tasks/{task_id}/handback")
            assert back.json()["taken_over"] is False
            await running.wait_for(task_id, lambda t: t["status"] == "running")
            await running.wait_for(task_id, lambda t: len(llm.chat_requests) > seen)
            assert any("hurry up" in text for text in user_texts(llm.chat_requests[-1]))
            assert (await running.post(f"/tasks/{task_id}/cancel")).status_code == 200
            done = await next_event(ws, "task.finished", task_id)
            assert done["data"]["task"]["status"] == "cancelled"
            again = await running.post(f"/tasks/{task_id}/pause")
            assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
            assert (await running.get("/sandboxes")).json()["items"] == []


async def test_queue_beyond_the_limit_and_stop_all(home: Path) -> None:
    async with ScriptedLLMServer([], default=slow_waits(1)[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home, max_concurrent=1) as running, events(running) as ws:
            ids = []
            for n in range(3):
                response = await running.post("/tasks", json={"description": f"task {n}"})
                ids.append(response.json()["id"])
            await running.wait_for(ids[0], lambda t: t["status"] == "running")
            second = await running.task(ids[1])
            assert (second["status"], second["queue_position"]) == ("queued", 1)
            assert (await running.post(f"/tasks/{ids[2]}/cancel")).json()["status"] == "cancelled"
            assert (await running.post(f"/tasks/{ids[0]}/cancel")).status_code == 200
            await running.wait_for(ids[1], lambda t: t["status"] == "running")  # FIFO: next one
            response = await running.post("/tasks", json={"description": "late"})
            late = response.json()["id"]
            stopped = (await running.post("/stop-all")).json()["stopped"]
            assert set(stopped) == {ids[1], late}
            for task_id in (ids[1], late):
                await running.wait_for(task_id, lambda t: t["status"] == "cancelled")
            await next_event(ws, "task.finished", ids[1])
            listed = (await running.get("/tasks", params={"status": "cancelled"})).json()
            assert listed["total"] == 4
            found = (await running.get("/tasks", params={"search": "LATE"})).json()
            assert [t["id"] for t in found["items"]] == [late]
            assert (await running.get("/sandboxes")).json()["items"] == []


async def test_stop_all_twice_at_once_ends_every_task_once(home: Path) -> None:
    async with ScriptedLLMServer([], default=slow_waits(1)[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home, max_concurrent=2) as running:
            ids = [
                (await running.post("/tasks", json={"description": f"task {n}"})).json()["id"]
                for n in range(5)
            ]
            for task_id in ids[:2]:
                await running.wait_for(task_id, lambda t: t["status"] == "running")
            assert (await running.post(f"/tasks/{ids[0]}/pause")).status_code == 200
            assert (await running.post(f"/tasks/{ids[1]}/takeover")).status_code == 200
            await running.wait_for(ids[0], lambda t: t["status"] == "paused")
            answers: list[Any] = []

            async def stop_all() -> None:
                answers.append(await running.post("/stop-all"))

            async with anyio.create_task_group() as tg:  # two dashboards press Stop all
                tg.start_soon(stop_all)
                tg.start_soon(stop_all)
            assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            stopped = [i for a in answers for i in a.json()["stopped"]]
            assert sorted(stopped) == sorted(ids)  # each task once, none missed
            for task_id in ids:
                await running.wait_for(task_id, lambda t: t["status"] == "cancelled")
            assert (await running.post("/stop-all")).json() == {"stopped": []}
            # A cancelled task's sandbox is removed just after its status is saved: wait.
            with anyio.fail_after(60):
                while (await running.get("/sandboxes")).json()["items"]:  # noqa: ASYNC110 (REST poll)
                    await anyio.sleep(0.05)
