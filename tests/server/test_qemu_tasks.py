"""A task in a virtual machine, through the API: the dashboard's "Sandbox type: virtual
machine". The server, the task manager, the agent runtime and the outbox collection run
unchanged on a qemu sandbox (a real VM from the CI template; only the model is scripted)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish, tool_results
from tests.sandbox import qemu_env
from tests.server.helpers import events, next_event, serve, write_provider

SLOW = 900.0  # seconds for a request that creates, saves or restores a VM
# One vCPU (a TCG vCPU is a busy host thread, and the other test worker needs a core), and
# the shape of test_qemu_vm.py's VMs: they all start from one warm state.
SMALL = {"cpus": 1, "memory_mb": 1024, "width": 800, "height": 600}

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.xdist_group("qemu"),  # with the other VM tests: one boot at a time
    pytest.mark.timeout(1800),
]


async def test_a_task_runs_in_a_vm_and_its_outbox_comes_back(home: Path) -> None:
    kernel = qemu_env.as_users_default(home).manifest.kernel
    command = "uname -r | tee /shared/outbox/kernel.txt"
    steps = [act(call("run_shell", command=command)), *finish("read the kernel")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            small = {"sandbox": SMALL}
            assert (await running.client.put("/api/v1/settings", json=small)).status_code == 200
            refused = await running.post(
                "/tasks",
                json={"description": "x", "sandbox_provider": "qemu", "sandbox_id": "sb-1"},
            )
            assert refused.status_code == 422 and "sandbox_provider" in refused.text
            body = {"description": "which kernel?", "sandbox_provider": "qemu"}
            response = await running.post("/tasks", json=body)
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]
            finished = await next_event(ws, "task.finished", task_id, timeout=900)
            task = finished["data"]["task"]
            assert task["status"] == "completed", task
            assert task["artifacts"] == ["kernel.txt"]
            sandbox_id = task["sandbox_id"]
            assert sandbox_id.startswith("vm-")
    shell = tool_results(llm.chat_requests[1])[0]
    assert shell["stdout"].strip() == kernel != os.uname().release


async def test_snapshots_restore_and_fork_through_the_api(home: Path) -> None:
    """The first VM of a shape boots and saves the warm state (a minute or more under TCG on
    a loaded host): these requests answer when the VM is up, so they get minutes, not 30 s."""
    qemu_env.as_users_default(home)
    async with serve(home) as running:
        small = {"sandbox": SMALL}
        assert (await running.client.put("/api/v1/settings", json=small)).status_code == 200
        made = await running.post("/sandboxes", json={"provider": "qemu"}, timeout=SLOW)
        assert made.status_code == 201, made.text
        vm = made.json()["id"]
        minimal = {"desktop": "minimal"}
        local = (await running.post("/sandboxes", json=minimal, timeout=SLOW)).json()["id"]
        refused = await running.post(f"/sandboxes/{local}/snapshots", json={"name": "s"})
        assert refused.status_code == 400 and "--provider qemu" in refused.text, refused.text
        bad = await running.post(f"/sandboxes/{vm}/snapshots", json={"name": "../x"})
        assert bad.status_code == 422

        snap = await running.post(
            f"/sandboxes/{vm}/snapshots", json={"name": "clean"}, timeout=SLOW
        )
        assert snap.status_code == 201, snap.text
        assert snap.json()["name"] == "clean" and snap.json()["size_bytes"] > 0
        listed = (await running.client.get(f"/api/v1/sandboxes/{vm}/snapshots")).json()
        assert [s["name"] for s in listed["items"]] == ["clean"]
        restored = await running.post(
            f"/sandboxes/{vm}/restore", json={"name": "clean"}, timeout=SLOW
        )
        assert restored.status_code == 200 and restored.json()["status"] == "running"
        missing = await running.post(f"/sandboxes/{vm}/restore", json={"name": "nope"})
        assert missing.status_code == 404, missing.text

        forked = await running.post(f"/sandboxes/{vm}/fork", timeout=SLOW)
        assert forked.status_code == 201, forked.text
        child = forked.json()["id"]
        assert child.startswith("vm-") and child != vm
        ids = {s["id"] for s in (await running.client.get("/api/v1/sandboxes")).json()["items"]}
        assert {vm, child, local} <= ids
        gone = await running.client.delete(f"/api/v1/sandboxes/{vm}/snapshots/clean")
        assert gone.status_code == 204
        for sandbox_id in (vm, child, local):
            deleted = await running.client.delete(f"/api/v1/sandboxes/{sandbox_id}", timeout=SLOW)
            assert deleted.status_code == 204
