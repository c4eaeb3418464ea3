"""Crews through the server: the API, the events WebSocket, TODOs as ordinary tasks,
a person's edits, cancel, and a restart mid-crew."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox.local.provider import LocalProvider
from tests.crew.model import CrewModel, done, plan_reply, shell
from tests.server.helpers import Running, events, serve, write_provider
from tests.server.test_pool import pool_until, warm_ids
from tests.server.test_restart import hivecell_up, processes_under

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def crew_until(
    running: Running, crew_id: str, check: Any, timeout: float = 120
) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:  # polling on purpose: what a REST client does
            crew = (await running.get(f"/crews/{crew_id}")).json()
            if check(crew):
                return dict(crew)
            await anyio.sleep(0.1)


async def test_a_crew_fans_out_over_the_api_with_events_and_ordinary_tasks(
    home: Path, pycache: Path
) -> None:
    model = CrewModel(
        plans=[plan_reply({"id": "a", "title": "A"}, {"id": "b", "title": "B"})],
        todos={
            "a": [shell("echo a > /shared/outbox/a.txt"), done("A done")],
            "b": [shell("echo b > /shared/outbox/b.txt"), done("B done")],
        },
        summary="A and B",
    )
    async with ScriptedLLMServer(default=model) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            files = {"files": ("brief.txt", b"the brief")}
            made = await running.post(
                "/crews", data={"goal": "do A and B", "agents": "2"}, files=files
            )
            assert made.status_code == 201, made.text
            crew_id = made.json()["id"]
            seen = []
            with anyio.fail_after(120):
                while "crew.completed" not in seen:
                    event = json.loads(await ws.recv())
                    if event["data"].get("crew_id") == crew_id:
                        seen.append(event["type"])
            crew = await crew_until(running, crew_id, lambda c: not c["live"])
            assert crew["status"] == "completed" and crew["summary"] == "A and B"
            assert crew["files"] == ["brief.txt"]
            assert seen[0] == "crew.planned" and seen.count("crew.todo_done") == 2
            for todo in crew["todos"]:
                task = await running.task(todo["task_id"])
                assert (
                    task["status"] == "completed"
                    and task["summary"] == f"{todo['id'].upper()} done"
                )
                outputs = Path(crew["outputs_dir"]) / todo["agent"] / todo["id"]
                assert (outputs / f"{todo['id']}.txt").read_text() == f"{todo['id']}\n"
            agent_requests = [r for r in llm.chat_requests if not r.get("response_format")]
            assert all(
                "/shared/inbox/brief.txt" in json.dumps(r["messages"][0]) for r in agent_requests
            )
            listed = (await running.get("/crews")).json()["items"]
            assert [c["id"] for c in listed] == [crew_id]
            assert (await running.get("/sandboxes")).json()["items"] == []


async def test_a_person_reviews_the_plan_edits_it_then_starts_and_cancels(home: Path) -> None:
    model = CrewModel(
        plans=[plan_reply({"id": "a", "title": "A"}, {"id": "b", "title": "B"})],
        todos={"a": [shell("sleep 600")], "b": [done("never")], "c": [shell("sleep 600")]},
    )
    async with ScriptedLLMServer(default=model) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            made = await running.post(
                "/crews", json={"goal": "g", "agents": 2, "review_plan": True}
            )
            crew_id = made.json()["id"]
            crew = await crew_until(running, crew_id, lambda c: c["todos"])
            assert crew["status"] == "planning" and crew["waiting_to_start"]
            url = f"/crews/{crew_id}/todos"
            added = await running.post(url, json={"id": "c", "title": "C", "depends_on": ["a"]})
            assert added.status_code == 201, added.text
            cycle = await running.client.patch(f"/api/v1{url}/a", json={"depends_on": ["c"]})
            assert cycle.status_code == 422 and "cycle" in cycle.json()["error"]["message"]
            dropped = await running.client.patch(f"/api/v1{url}/b", json={"cancel": True})
            assert dropped.status_code == 200, dropped.text
            assert (await running.post(f"/crews/{crew_id}/start")).status_code == 200
            again = await running.post(f"/crews/{crew_id}/start")
            assert again.status_code == 409
            crew = await crew_until(
                running, crew_id, lambda c: any(t["task_id"] for t in c["todos"])
            )
            [task_id] = [t["task_id"] for t in crew["todos"] if t["task_id"]]
            await running.wait_for(task_id, lambda t: t["status"] == "running")
            assert (await running.post(f"/crews/{crew_id}/cancel")).status_code == 200
            crew = await crew_until(running, crew_id, lambda c: not c["live"])
            assert crew["status"] == "cancelled"
            assert {t["id"]: t["status"] for t in crew["todos"]} == {
                "a": "cancelled", "b": "cancelled", "c": "cancelled"
            }  # fmt: skip
            assert (await running.task(task_id))["status"] == "cancelled"
            assert (await running.get("/sandboxes")).json()["items"] == []
            late = await running.post(f"/crews/{crew_id}/cancel")
            assert late.status_code == 409 and "cancelled" in late.json()["error"]["message"]
            assert (await running.get("/crews/c-nope")).status_code == 404


async def test_a_restart_mid_crew_leaves_a_truthful_state_and_no_desktop(
    home: Path, pycache: Path
) -> None:
    model = CrewModel(
        plans=[
            plan_reply({"id": "a", "title": "A"}, {"id": "b", "title": "B", "depends_on": ["a"]})
        ],
        todos={"a": [shell("sleep 600")], "b": [done("never")]},
    )
    async with ScriptedLLMServer(default=model) as llm:
        write_provider(home, llm.base_url)
        async with hivecell_up(home) as (process, running):
            crew_id = (await running.post("/crews", json={"goal": "g", "agents": 2})).json()["id"]
            crew = await crew_until(
                running, crew_id, lambda c: any(t["task_id"] for t in c["todos"])
            )
            task_id = crew["todos"][0]["task_id"]
            await running.wait_for(task_id, lambda t: t["status"] == "running")
            process.send_signal(signal.SIGKILL)
            await process.wait()
        provider = LocalProvider(home, pycache=pycache)
        assert len(await provider.list()) == 2  # both agents' desktops outlived the kill
        async with hivecell_up(home) as (_, running):
            crew = (await running.get(f"/crews/{crew_id}")).json()
            assert crew["status"] == "failed" and "interrupted" in crew["error"]
            assert [t["status"] for t in crew["todos"]] == ["cancelled", "cancelled"]
            assert (await running.task(task_id))["status"] == "interrupted"
            recovered = (await running.get("/status")).json()["recovered"]
            assert recovered["crews"] == [crew_id]
            # The desktop with a task goes with its interrupted task, the other as the crew's.
            removed = recovered["sandboxes_removed"] + recovered["crew_desktops"]
            assert len(removed) == len(set(removed)) == 2
            assert (await running.get("/sandboxes")).json()["items"] == []
    assert await provider.list() == []
    assert processes_under(home) == []


async def test_agents_take_warm_desktops_from_the_pool(home: Path) -> None:
    model = CrewModel(
        plans=[plan_reply({"id": "a", "title": "A"}, {"id": "b", "title": "B"})],
        todos={"a": [done("A")], "b": [done("B")]},
    )
    async with ScriptedLLMServer(default=model) as llm:
        write_provider(home, llm.base_url)
        async with serve(home, pool_size=2) as running:
            view = await pool_until(running, lambda v: len(warm_ids(v)) == 2)
            warm = set(warm_ids(view))
            crew_id = (await running.post("/crews", json={"goal": "g", "agents": 2})).json()["id"]
            crew = await crew_until(running, crew_id, lambda c: not c["live"])
            assert crew["status"] == "completed"
            assert {m["sandbox_id"] for m in crew["members"]} == warm
            # Used once, then gone: a crew's desktop is never handed to anyone else.
            await pool_until(running, lambda v: not warm & set(warm_ids(v)))
            listed = {s["id"] for s in (await running.get("/sandboxes")).json()["items"]}
            assert not warm & listed


async def test_a_todo_links_its_task_in_the_store_before_the_task_runs(
    home: Path, pycache: Path
) -> None:
    """A kill mid-TODO: the crew record still names the task that ran it (and the crews
    list, which reads the store, shows a live crew as it is now)."""
    model = CrewModel(
        plans=[plan_reply({"id": "a", "title": "A"})], todos={"a": [shell("sleep 600")]}
    )
    async with ScriptedLLMServer(default=model) as llm:
        write_provider(home, llm.base_url)
        async with hivecell_up(home) as (process, running):
            crew_id = (await running.post("/crews", json={"goal": "g", "agents": 1})).json()["id"]
            crew = await crew_until(
                running, crew_id, lambda c: c["todos"] and c["todos"][0]["task_id"]
            )
            task_id = crew["todos"][0]["task_id"]
            await running.wait_for(task_id, lambda t: t["status"] == "running")
            [listed] = (await running.get("/crews")).json()["items"]
            assert listed["todos"][0]["task_id"] == task_id
            assert listed["members"][0]["task_ids"] == [task_id]
            process.send_signal(signal.SIGKILL)
            await process.wait()
        async with hivecell_up(home) as (_, running):
            crew = (await running.get(f"/crews/{crew_id}")).json()
            assert crew["status"] == "failed"
            assert crew["todos"][0]["status"] == "cancelled"
            assert crew["todos"][0]["task_id"] == task_id
            assert crew["members"][0]["task_ids"] == [task_id]
            assert (await running.task(task_id))["status"] == "interrupted"
            assert (await running.get("/sandboxes")).json()["items"] == []
    assert processes_under(home) == []
