"""Crews end to end in one process (the ``hivecell crew`` path): real desktops, real tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm import LLMClient
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.agent.runner import RunSettings
from hivecell.crew.local import run_here
from hivecell.crew.models import Crew, CrewRequest
from hivecell.crew.records import get_crew
from hivecell.crew.runner import CrewRunner
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.store import TaskStore
from tests.agent.helpers import provider_config
from tests.crew.model import CrewModel, done, failed, plan_reply, shell, tool_call_names

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def crew_run(
    home: Path,
    provider: LocalProvider,
    store: TaskStore,
    model: CrewModel,
    request: CrewRequest,
    events: list[tuple[str, dict[str, Any]]] | None = None,
    started: Any = None,
) -> tuple[Crew, ScriptedLLMServer]:
    async with (
        ScriptedLLMServer(default=model) as server,
        LLMClient(provider_config(server.base_url)) as llm,
    ):
        crew = await run_here(
            request,
            home=home,
            provider=provider,
            store=store,
            llm=llm,
            on_event=lambda kind, data: (events if events is not None else []).append((kind, data)),
            started=started,
        )
    return crew, server


async def test_three_agents_share_three_todos_and_end_in_one_summary(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    model = CrewModel(
        plans=[plan_reply(*({"id": f"t{n}", "title": f"part {n}"} for n in (1, 2, 3)))],
        todos={
            f"t{n}": [shell(f"echo part {n} > /shared/outbox/part{n}.txt"), done(f"wrote part {n}")]
            for n in (1, 2, 3)
        },
        summary="three parts written",
    )
    events: list[tuple[str, dict[str, Any]]] = []
    crew, server = await crew_run(
        home, provider, store, model, CrewRequest(goal="write three parts", agents=3), events
    )
    assert crew.status == "completed" and crew.summary == "three parts written"
    assert [(t.id, t.status) for t in crew.todos] == [
        ("t1", "done"),
        ("t2", "done"),
        ("t3", "done"),
    ]
    assert {t.result for t in crew.todos} == {f"wrote part {n}" for n in (1, 2, 3)}
    # Each agent took one TODO in its own desktop; every TODO is an ordinary task record.
    assert sorted(m.name for m in crew.members) == ["ada", "bo", "cy"]
    assert len({m.sandbox_id for m in crew.members}) == 3
    tasks = [await store.get(t.task_id or "") for t in crew.todos]
    assert all(task.status == "completed" for task in tasks)
    for todo in crew.todos:
        part = crew.outputs_dir / str(todo.agent) / todo.id / f"part{todo.id[1]}.txt"
        assert part.read_text() == f"part {todo.id[1]}\n"
    assert await get_crew(store, crew.id) == crew  # what is stored is what ran
    assert await provider.list() == []  # every desktop is gone
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "crew.planned" and kinds[-1] == "crew.completed"
    assert kinds.count("crew.todo_assigned") == 3 and kinds.count("crew.todo_done") == 3
    # Each agent said it was done before its desktop went (a page loaded meanwhile must not
    # ask for the closing desktop's view), and the record shows every desktop closed.
    done_agents = [data["agent"] for kind, data in events if kind == "crew.agent_done"]
    assert sorted(done_agents) == ["ada", "bo", "cy"]
    assert not any(m.desktop_open for m in crew.members)
    agent_requests = [r for r in server.chat_requests if not r.get("response_format")]
    assert {"whiteboard_read", "whiteboard_note", "todo_done", "todo_failed"} <= set(
        tool_call_names(agent_requests[0])
    )


async def test_dependencies_order_the_work_and_files_pass_through_the_crew_folder(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    model = CrewModel(
        plans=[
            plan_reply(
                {"id": "gather", "title": "gather"},
                {"id": "report", "title": "report", "depends_on": ["gather"]},
            )
        ],
        todos={
            "gather": [shell("echo facts > /shared/crew/facts.txt"), done("facts gathered")],
            "report": [
                shell("cat /shared/crew/facts.txt > /shared/outbox/report.txt"),
                done("report written"),
            ],
        },
    )
    events: list[tuple[str, dict[str, Any]]] = []
    crew, _ = await crew_run(
        home, provider, store, model, CrewRequest(goal="facts, then a report", agents=2), events
    )
    assert crew.status == "completed"
    assigned = [d["todo_id"] for kind, d in events if kind == "crew.todo_assigned"]
    assert assigned == ["gather", "report"]
    kinds = [(kind, data.get("todo_id")) for kind, data in events]
    done_at = kinds.index(("crew.todo_done", "gather"))
    assert kinds.index(("crew.todo_assigned", "report")) > done_at  # only after gather ended
    report = crew.todo("report")
    assert (crew.outputs_dir / str(report.agent) / "report" / "report.txt").read_text() == "facts\n"
    assert (crew.shared_dir / "facts.txt").read_text() == "facts\n"


async def test_a_failed_todo_gives_partially_completed_and_blocks_what_depends_on_it(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    model = CrewModel(
        plans=[
            plan_reply(
                {"id": "a", "title": "works"},
                {"id": "b", "title": "fails"},
                {"id": "c", "title": "needs b", "depends_on": ["b"]},
            )
        ],
        todos={"a": [done("fine")], "b": [failed("the site is down")], "c": [done("never")]},
    )
    crew, _ = await crew_run(home, provider, store, model, CrewRequest(goal="g", agents=2))
    assert crew.status == "partially_completed"
    statuses = {t.id: (t.status, t.result) for t in crew.todos}
    assert statuses["a"] == ("done", "fine")
    assert statuses["b"] == ("failed", "the site is down")
    assert statuses["c"][0] == "cancelled" and "b failed" in statuses["c"][1]
    assert (await store.get(crew.todo("b").task_id or "")).status == "failed"


async def test_a_plan_with_a_cycle_is_asked_for_again(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    cyclic = plan_reply(
        {"id": "x", "title": "x", "depends_on": ["y"]},
        {"id": "y", "title": "y", "depends_on": ["x"]},
    )
    good = plan_reply({"id": "x", "title": "x", "status": "done"} | {})  # status is dropped
    model = CrewModel(plans=[cyclic, good], todos={"x": [done("x done")]})
    crew, server = await crew_run(home, provider, store, model, CrewRequest(goal="g", agents=1))
    assert crew.status == "completed"
    retry = server.chat_requests[1]["messages"][-1]["content"]
    assert "cycle" in retry and "x -> y -> x" in retry


async def test_cancel_stops_every_agent_and_removes_every_desktop(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    runners: list[CrewRunner] = []
    model = CrewModel(
        plans=[plan_reply(*({"id": f"t{n}", "title": f"t{n}"} for n in (1, 2, 3)))],
        todos={f"t{n}": [shell("sleep 600")] for n in (1, 2, 3)},
    )
    result: list[Crew] = []

    async def go() -> None:
        request = CrewRequest(goal="g", agents=3)
        crew, _ = await crew_run(home, provider, store, model, request, started=runners.append)
        result.append(crew)

    async with anyio.create_task_group() as tg:
        tg.start_soon(go)
        await model.all_working.wait()  # every agent has its sleep under way
        runners[0].cancel()
    crew = result[0]
    assert crew.status == "cancelled"
    assert all(t.status == "cancelled" for t in crew.todos)
    for todo in crew.todos:
        assert (await store.get(todo.task_id or "")).status == "cancelled"
    assert await provider.list() == []


async def test_links_planted_in_the_crew_folder_reach_neither_the_host_nor_another_agent(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    # First TODO plants links (to the box's /etc and to a host-looking path) and a real file;
    # then turns the folder itself into a link to /. The second TODO, in another desktop,
    # gets the real file and nothing else; the crew carries on.
    plant = (
        "ln -s /etc /shared/crew/etc && ln -s /root/.ssh/id_rsa /shared/crew/key"
        " && mkfifo /shared/crew/pipe && echo real > /shared/crew/real.txt"
    )
    model = CrewModel(
        plans=[
            plan_reply(
                {"id": "plant", "title": "plant"},
                {"id": "swap", "title": "swap", "depends_on": ["plant"]},
                {"id": "look", "title": "look", "depends_on": ["swap"]},
            )
        ],
        todos={
            "plant": [shell(plant), done("planted")],
            "swap": [shell("rm -rf /shared/crew && ln -s / /shared/crew"), done("swapped")],
            "look": [shell("ls -A /shared/crew > /shared/outbox/seen.txt"), done("looked")],
        },
    )
    # No approval: a person would be asked before rm -rf, and nobody is here.
    request = CrewRequest(goal="g", agents=1, settings=RunSettings(approval_tools=[]))
    crew, _ = await crew_run(home, provider, store, model, request)
    assert crew.status == "completed"
    assert sorted(p.name for p in crew.shared_dir.iterdir()) == ["real.txt"]
    seen = crew.outputs_dir / "ada" / "look" / "seen.txt"
    # One agent: "look" ran in the desktop "swap" broke; its copy was refused, not followed.
    assert seen.read_text() == "" or "real.txt" not in seen.read_text()
    assert any("crew folder copy failed" in note.text for note in crew.notes)


async def test_each_todo_collects_its_own_outbox_even_in_the_same_desktop(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    # One agent does both TODOs in one desktop; the first also leaves a link to / and a
    # folder in the outbox, which the second TODO's start clears without following.
    first = (
        "echo 1 > /shared/outbox/one.txt && ln -s / /shared/outbox/root && mkdir /shared/outbox/d"
    )
    model = CrewModel(
        plans=[
            plan_reply({"id": "p", "title": "p"}, {"id": "q", "title": "q", "depends_on": ["p"]})
        ],
        todos={
            "p": [shell(first), done("one")],
            "q": [shell("echo 2 > /shared/outbox/two.txt"), done("two")],
        },
    )
    crew, _ = await crew_run(home, provider, store, model, CrewRequest(goal="g", agents=1))
    assert crew.status == "completed"
    outputs = crew.outputs_dir / "ada"
    assert sorted(p.name for p in (outputs / "p").iterdir()) == ["d", "one.txt"]
    assert sorted(p.name for p in (outputs / "q").iterdir()) == ["two.txt"]
    assert await anyio.Path("/etc/hostname").exists()  # nothing removed through the link
