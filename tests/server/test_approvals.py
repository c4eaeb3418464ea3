"""Approval policy through the API: approve_tools on POST /tasks (JSON and multipart), the
default policy in PUT /settings, and the reason on the pending approval."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish, tool_results
from tests.server.helpers import events, next_event, serve, write_provider

pytestmark = [pytest.mark.anyio]

RM = "rm -rf /shared/workspace/keep"
NOTE = {"files": ("note.txt", b"x", "text/plain")}  # makes the body multipart


async def test_default_policy_is_a_setting(home: Path) -> None:
    async with serve(home) as running:
        defaults = (await running.get("/settings")).json()["approval"]
        assert defaults["tools"] == [
            "delete_file", "move_file", "write_file", "edit_file", "run_shell",
            # the seed-002 catalogue's dangerous tools (docs/tools.md)
            "force_quit_app", "kill_process", "empty_trash", "copy_file",
        ]  # fmt: skip
        assert "recursive_rm" in defaults["shell_rules"] and "any" not in defaults["shell_rules"]
        assert defaults["timeout_s"] is None
        change = {"approval": {"shell_rules": ["power", "dd"], "timeout_s": 30}}
        response = await running.client.put("/api/v1/settings", json=change)
        assert response.status_code == 200, response.text
        assert response.json()["approval"]["tools"] == defaults["tools"]  # merged, kept
        for bad, named in [
            ({"shell_rules": ["rm_everything"]}, "rm_everything"),
            ({"tools": ["format_disk"]}, "format_disk"),
            ({"timeout_s": 0}, "timeout_s"),
        ]:
            refused = await running.client.put("/api/v1/settings", json={"approval": bad})
            assert refused.status_code == 422, refused.text
            assert named in refused.json()["error"]["message"]
    async with serve(home) as running:  # persisted in config.toml
        again = (await running.get("/settings")).json()["approval"]
        assert again["shell_rules"] == ["power", "dd"] and again["timeout_s"] == 30


async def test_unknown_tool_in_approve_tools_is_refused(home: Path) -> None:
    async with ScriptedLLMServer([]) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            body = {"description": "x", "approve_tools": ["format_disk"]}
            response = await running.post("/tasks", json=body)
            assert response.status_code == 422 and "format_disk" in response.text
            form = {"description": "x", "approve_tools": "run_shell, format_disk"}
            response = await running.post("/tasks", data=form, files=NOTE)
            assert response.status_code == 422 and "format_disk" in response.text
            assert (await running.get("/tasks")).json()["items"] == []


@pytest.mark.slow
async def test_approve_tools_per_task_json_and_multipart(home: Path) -> None:
    steps = [
        # Task 1 (JSON, approve_tools=[]): the recursive rm runs without asking.
        act(call("run_shell", command=f"mkdir -p /shared/workspace/keep && {RM}")),
        *finish("removed"),
        # Task 2 (multipart, approve_tools=run_shell): it asks, with the rule that matched.
        act(call("run_shell", command="mkdir -p /shared/workspace/keep")),
        act(call("run_shell", command=RM)),
        act(call("run_shell", command="ls /shared/workspace > /shared/outbox/ls.txt")),
        *finish("kept"),
    ]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running, events(running) as ws:
            body = {"description": "clean up", "approve_tools": []}
            first = (await running.post("/tasks", json=body)).json()["id"]
            done = await next_event(ws, "task.finished", first)
            assert done["data"]["task"]["status"] == "completed"
            form = {"description": "clean up", "approve_tools": "run_shell"}
            response = await running.post("/tasks", data=form, files=NOTE)
            assert response.status_code == 201, response.text
            second = response.json()["id"]
            asked = await next_event(ws, "task.approval", second)
            pending = asked["data"]["pending"]
            assert pending["tool"] == "run_shell" and pending["arguments"] == {"command": RM}
            assert "recursive_rm" in pending["reason"]
            assert (await running.task(second))["pending"]["reason"] == pending["reason"]
            denied = await running.post(f"/tasks/{second}/deny", json={"reason": "keep it"})
            assert denied.status_code == 200, denied.text
            done = await next_event(ws, "task.finished", second)
            assert done["data"]["task"]["status"] == "completed"
            listing = await running.get(f"/tasks/{second}/artifacts/ls.txt")
            assert listing.content == b"keep\n"
    assert "keep it" in tool_results(llm.chat_requests[-3])[-1]["error"]
