"""Guest faults through the API: a silent guest shows as a paused task with its reason, then
resumes by itself; a killed sandbox ends the task ``guest_lost`` (and it can be retried)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from anyio import to_thread

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox.local import state
from hivecell.sandbox.local.layout import Layout
from tests.agent.helpers import act, call, finish
from tests.agent.test_guest_faults import SLOW_ACTION, guest_agent
from tests.cli.test_cli_guest_faults import _marked_sandbox
from tests.server.helpers import serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_a_silent_guest_is_a_paused_task_with_its_reason(home: Path, pycache: Path) -> None:
    steps = [act(call("run_shell", command=SLOW_ACTION)), *finish("back again")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            body = {"description": "outlive a stopped guest"}
            task_id = (await running.post("/tasks", json=body)).json()["id"]
            agent = await to_thread.run_sync(guest_agent, await _marked_sandbox(home, pycache))
            os.kill(agent, signal.SIGSTOP)
            try:
                # The fault is live at once; the stored status follows through the task's
                # event stream a moment later: wait for both.
                paused = await running.wait_for(
                    task_id, lambda t: t["fault"] is not None and t["status"] == "paused"
                )
            finally:
                os.kill(agent, signal.SIGCONT)
            assert (paused["status"], paused["fault"], paused["limit"]) == (
                "paused",
                "guest_unreachable",
                None,
            )
            assert paused["pause_reason"].startswith("guest_unreachable: the guest agent missed")
            assert paused["error"] == paused["pause_reason"]  # the stored record says it too
            done = await running.wait_for(task_id, lambda t: t["status"] == "completed")
            assert done["fault"] is None and done["pause_reason"] is None


async def test_a_killed_sandbox_ends_the_task_guest_lost(home: Path, pycache: Path) -> None:
    steps = [act(call("run_shell", command=SLOW_ACTION)), *finish("never")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            task_id = (await running.post("/tasks", json={"description": "lose it"})).json()["id"]
            sandbox_id = await _marked_sandbox(home, pycache)
            meta = await to_thread.run_sync(state.load, Layout.of(home, sandbox_id))
            assert meta is not None and meta.supervisor_pid is not None
            os.kill(meta.supervisor_pid, signal.SIGKILL)
            lost = await running.wait_for(task_id, lambda t: t["status"] == "guest_lost")
            assert lost["success"] is False and lost["error"].startswith("guest_lost: sandbox")
            listed = await running.get("/tasks", params={"status": "guest_lost"})
            assert [t["id"] for t in listed.json()["items"]] == [task_id]
            again = await running.post(f"/tasks/{task_id}/retry")
            assert again.status_code == 201, again.text
            assert again.json()["retry_of"] == task_id
