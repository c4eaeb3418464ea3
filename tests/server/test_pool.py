"""The warm pool and capacity caps through the REST API, on real sandboxes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin, Subprotocol

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import act, call, finish
from tests.server.helpers import Running, serve, write_provider
from tests.server.rfb_client import RfbClient

FINAL = ("completed", "failed", "cancelled", "timed_out", "interrupted")
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def pool_until(running: Running, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    with anyio.fail_after(60):
        while True:  # polling on purpose: what a REST client of /pool does
            view = (await running.get("/pool")).json()
            if check(view):
                return view
            await anyio.sleep(0.05)


async def sandboxes_until(running: Running, check: Callable[[list[str]], bool]) -> None:
    with anyio.fail_after(60):
        while True:  # polling on purpose: what a REST client of /sandboxes does
            if check([s["id"] for s in (await running.get("/sandboxes")).json()["items"]]):
                return
            await anyio.sleep(0.05)


def warm_ids(view: dict[str, Any]) -> list[str]:
    return [box for shape in view["shapes"] for box in shape["warm"]]


async def test_a_task_takes_the_warm_sandbox_and_it_is_never_reused(home: Path) -> None:
    steps = [act(call("run_shell", command="echo used > /shared/outbox/mark.txt")), *finish()]
    async with ScriptedLLMServer(steps, default=finish()[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home, pool_size=1) as running:
            view = await pool_until(running, lambda v: v["warm"] == 1)
            (warm,) = warm_ids(view)
            listed = {s["id"]: s for s in (await running.get("/sandboxes")).json()["items"]}
            assert listed[warm]["pool"] is True and listed[warm]["activity"] == "idle"
            assert view["shapes"][0]["spec"]["width"] == 1280  # the default shape

            created = await running.post("/tasks", json={"description": "mark it"})
            task_id = created.json()["id"]
            done = await running.wait_for(task_id, lambda t: t["status"] == "completed")
            assert done["sandbox_id"] == warm  # it ran in the warm sandbox

            # The used sandbox is removed, and a different one is warm in its place.
            view = await pool_until(running, lambda v: v["warm"] == 1 and warm not in warm_ids(v))
            await sandboxes_until(running, lambda ids: warm not in ids)
            ids = [s["id"] for s in (await running.get("/sandboxes")).json()["items"]]
            assert warm_ids(view)[0] in ids
            assert view["shapes"][0]["taken"] == 1


async def test_pool_size_follows_settings_and_shutdown_removes_it(home: Path) -> None:
    provider = LocalProvider(home)
    async with serve(home, pool_size=1) as running:
        await pool_until(running, lambda v: v["warm"] == 1)
        changed = await running.client.put("/api/v1/settings", json={"pool": {"size": 2}})
        assert changed.status_code == 200 and changed.json()["pool"]["size"] == 2
        await pool_until(running, lambda v: v["warm"] == 2)
        await running.client.put("/api/v1/settings", json={"pool": {"size": 0}})
        await pool_until(running, lambda v: v["warm"] + v["booting"] + v["removing"] == 0)
        assert (await running.get("/sandboxes")).json()["items"] == []
        await running.client.put("/api/v1/settings", json={"pool": {"size": 1}})
        await pool_until(running, lambda v: v["warm"] == 1)
        bad = await running.client.put("/api/v1/settings", json={"pool": {"size": -1}})
        assert bad.status_code == 422 and "pool" in bad.text
    assert await provider.list() == []  # the server took its warm sandboxes with it


async def test_idle_shapes_are_emptied(home: Path) -> None:
    async with serve(home, pool_size=1) as running:
        await pool_until(running, lambda v: v["warm"] == 1)
        await running.client.put("/api/v1/settings", json={"pool": {"idle_timeout_s": 0.5}})
        view = await pool_until(running, lambda v: not v["shapes"] and not v["removing"])
        assert view["size"] == 1  # still on: a task asking for the shape brings it back
        assert (await running.get("/sandboxes")).json()["items"] == []


async def test_caps_refuse_sandboxes_and_queue_tasks_counting_sdk_boxes(home: Path) -> None:
    provider = LocalProvider(home)
    async with ScriptedLLMServer(finish(), default=finish()[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            caps = {"capacity": {"max_sandboxes": 1}}
            assert (await running.client.put("/api/v1/settings", json=caps)).status_code == 200
            # A sandbox made outside the server (the SDK, the CLI) takes the only place.
            outside = await provider.create(SandboxSpec())
            refused = await running.post("/sandboxes", json={})
            assert refused.status_code == 429, refused.text
            error = refused.json()["error"]
            assert error["code"] == "capacity_exceeded" and error["retryable"] is True
            assert "capacity.max_sandboxes" in error["message"]

            task_id = (await running.post("/tasks", json={"description": "wait"})).json()["id"]
            waiting = await running.wait_for(task_id, lambda t: t["waiting_for"] is not None)
            assert waiting["status"] == "queued" and "max_sandboxes" in waiting["waiting_for"]
            view = (await running.get("/pool")).json()
            assert view["capacity"]["caps"]["max_sandboxes"] == 1
            assert view["capacity"]["used"]["sandboxes"] == 1 and view["capacity"]["waiting"] == 1

            await provider.destroy(outside.id)  # room again: the task goes ahead by itself
            done = await running.wait_for(task_id, lambda t: t["status"] == "completed")
            assert done["waiting_for"] is None


async def test_cancel_while_waiting_for_room_leaves_nothing(home: Path) -> None:
    provider = LocalProvider(home)
    async with ScriptedLLMServer(finish(), default=finish()[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            await running.client.put("/api/v1/settings", json={"capacity": {"max_sandboxes": 1}})
            outside = await provider.create(SandboxSpec())
            task_id = (await running.post("/tasks", json={"description": "wait"})).json()["id"]
            await running.wait_for(task_id, lambda t: t["waiting_for"] is not None)
            cancelled = await running.post(f"/tasks/{task_id}/cancel")
            assert cancelled.status_code == 200, cancelled.text
            await running.wait_for(task_id, lambda t: t["status"] == "cancelled")
            assert [i.id for i in await provider.list()] == [outside.id]
            # The place it waited for is not held by a ghost: a new sandbox fits once freed.
            await provider.destroy(outside.id)
            made = await running.post("/sandboxes", json={})
            assert made.status_code == 201, made.text


async def test_a_task_runs_in_a_chosen_sandbox_which_stays(home: Path) -> None:
    # Two tasks in turn, each ending with the completion check's verdict.
    steps = [act(call("run_shell", command="echo hi > /tmp/left-here")), *finish(), *finish()]
    async with ScriptedLLMServer(steps, default=finish()[0]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            box = (await running.post("/sandboxes", json={"name": "mine"})).json()["id"]
            body = {"description": "leave a file", "sandbox_id": box}
            task_id = (await running.post("/tasks", json=body)).json()["id"]
            done = await running.wait_for(task_id, lambda t: t["status"] == "completed")
            assert done["sandbox_id"] == box
            info = (await running.get(f"/sandboxes/{box}")).json()
            assert info["status"] == "running" and info["activity"] == "idle"

            unknown = await running.post("/tasks", json={"description": "x", "sandbox_id": "nope"})
            assert unknown.status_code == 422 and "sandbox_id" in unknown.text
            mine = await running.post("/tasks", json={"description": "again", "sandbox_id": box})
            assert mine.status_code == 201
            again = await running.wait_for(mine.json()["id"], lambda t: t["status"] in FINAL)
            assert again["status"] == "completed", again


async def test_warm_sandboxes_cannot_be_chosen_or_named(home: Path) -> None:
    async with serve(home, pool_size=1) as running:
        (warm,) = warm_ids(await pool_until(running, lambda v: v["warm"] == 1))
        chosen = await running.post("/tasks", json={"description": "x", "sandbox_id": warm})
        assert chosen.status_code == 422 and "warm pool" in chosen.text
        named = await running.post("/sandboxes", json={"name": "pool-7"})
        assert named.status_code == 409 and "reserved" in named.text
        gone = await running.client.delete(f"/api/v1/sandboxes/{warm}")
        assert gone.status_code == 204
        await pool_until(running, lambda v: v["warm"] == 1 and warm not in warm_ids(v))


async def test_vnc_input_reaches_a_persons_sandbox_but_never_a_warm_one(home: Path) -> None:
    """A warm desktop is handed to the next task as booted: a viewer may watch it, but its
    pointer and keys are dropped (a person's own sandbox, the control, is driven)."""
    provider = LocalProvider(home)
    async with serve(home, pool_size=1, ui=True) as running:  # ui: the viewer's relay
        (warm,) = warm_ids(await pool_until(running, lambda v: v["warm"] == 1))
        mine = (await running.post("/sandboxes", json={"name": "mine"})).json()["id"]
        assert await _drive(running, provider, mine) == (123, 77)
        before = await _cursor(provider, warm)
        assert await _drive(running, provider, warm) == before != (123, 77)


async def _drive(running: Running, provider: LocalProvider, sandbox_id: str) -> tuple[int, int]:
    """An interactive viewer moves the pointer to (123, 77); where the sandbox's pointer is."""
    url = running.ws_url.replace("/events", f"/sandboxes/{sandbox_id}/vnc")
    cookie = {"Cookie": f"hivecell_token={running.token}"}  # as the dashboard's viewer connects
    async with connect(
        url,
        origin=Origin(running.base_url),
        subprotocols=[Subprotocol("binary")],
        additional_headers=cookie,
    ) as ws:
        viewer = RfbClient(ws)
        width, height = await viewer.handshake()
        await viewer.pointer(123, 77)
        await viewer.update_request(width, height)
        await viewer.first_update()  # x11vnc has handled (or never got) the pointer by now
    return await _cursor(provider, sandbox_id)


async def _cursor(provider: LocalProvider, sandbox_id: str) -> tuple[int, int]:
    async with await provider.connect(sandbox_id) as guest:
        pos = await guest.call("get_cursor_position", {})
    return pos["x"], pos["y"]


async def test_a_restart_removes_an_earlier_servers_warm_sandboxes(home: Path) -> None:
    provider = LocalProvider(home)
    left = await provider.create(SandboxSpec(name="pool-3"))  # as a killed server leaves it
    kept = await provider.create(SandboxSpec(name="mine"))
    async with serve(home) as running:
        ids = [s["id"] for s in (await running.get("/sandboxes")).json()["items"]]
        assert ids == [kept.id] and left.id not in ids
    await provider.destroy(kept.id)


async def test_a_server_stopping_while_the_pool_boots_leaves_no_sandbox(
    home: Path, pycache: Path
) -> None:
    async with ScriptedLLMServer() as llm:
        write_provider(home, llm.base_url)
        async with serve(home, pool_size=1) as running:
            await pool_until(running, lambda v: v["booting"] == 1)
        # The boot finished during shutdown (it is shielded); the pool must still remove it.
    assert await LocalProvider(home, pycache=pycache).list() == []
