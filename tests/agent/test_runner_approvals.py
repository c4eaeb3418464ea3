"""The approval policy on a real sandbox: what asks, with which reason, and auto-deny."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.runner import RunSettings
from hivecell.sandbox.base import SandboxInfo
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import Harness, act, call, finish, harness, tool_results

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_policy_asks_only_for_destructive_calls(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    workspace = anyio.Path(sandbox.shared_dir) / "workspace"
    await (workspace / "keep").mkdir(exist_ok=True)
    await (workspace / "keep" / "a.txt").write_text("a")
    await (workspace / "old.txt").write_text("old")
    steps = [
        act(call("run_shell", command="ls /shared/workspace > /shared/workspace/ls.txt")),
        act(call("write_file", path="/shared/workspace/new.txt", content="new")),
        act(call("write_file", path="/shared/workspace/old.txt", content="replaced")),
        act(call("run_shell", command="cd /shared/workspace && rm -rf keep")),
        *finish(),
    ]
    asked: list[dict[str, Any]] = []
    async with harness(provider, sandbox, steps, tmp_path / "t") as h:
        first = h.when_status("waiting_for_user")

        async def person(h: Harness) -> None:
            await first.wait()
            pending = h.runner.control.pending
            assert pending is not None
            asked.append(pending.as_dict())
            # Nothing before the overwrite asked, and what it asks about has not happened yet.
            assert await (workspace / "ls.txt").exists()
            assert await (workspace / "new.txt").read_text() == "new"
            assert await (workspace / "old.txt").read_text() == "old"
            second = h.when_status("waiting_for_user")
            h.runner.control.approve()
            await second.wait()
            pending = h.runner.control.pending
            assert pending is not None
            asked.append(pending.as_dict())
            h.runner.control.deny("not that folder")

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(person, h)
                outcome = await h.runner.run()
    assert outcome.status == "completed"
    assert [a["tool"] for a in asked] == ["write_file", "run_shell"]
    assert asked[0]["arguments"] == {"path": "/shared/workspace/old.txt", "content": "replaced"}
    assert "overwrite" in asked[0]["reason"]
    assert asked[1]["arguments"]["command"] == "cd /shared/workspace && rm -rf keep"
    assert "recursive_rm" in asked[1]["reason"]
    assert await (workspace / "old.txt").read_text() == "replaced"
    assert await (workspace / "keep" / "a.txt").exists()
    denied = tool_results(h.requests[4])[-1]
    assert "denied run_shell" in denied["error"] and "not that folder" in denied["error"]


async def test_unanswered_approval_is_denied_by_timeout(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    victim = anyio.Path(sandbox.shared_dir) / "workspace" / "victim.txt"
    await victim.write_text("still here")
    steps = [act(call("delete_file", path="/shared/workspace/victim.txt")), *finish()]
    settings = RunSettings(approval_timeout_s=0.5)
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        waited = h.when_status("waiting_for_user")
        with anyio.fail_after(60):
            outcome = await h.runner.run()
    assert waited.is_set()
    assert outcome.status == "completed"
    assert await victim.read_text() == "still here"
    [result] = tool_results(h.requests[1])
    assert "denied by timeout" in result["error"]
    assert h.runner.control.pending is None


async def test_tools_left_out_of_the_policy_run_without_asking(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    folder = anyio.Path(sandbox.shared_dir) / "workspace" / "scratch"
    await folder.mkdir(exist_ok=True)
    steps = [act(call("run_shell", command="rm -rf /shared/workspace/scratch")), *finish()]
    settings = RunSettings(approval_shell_rules=["dd"])
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        asked = h.when_status("waiting_for_user")
        with anyio.fail_after(60):
            outcome = await h.runner.run()
    assert outcome.status == "completed" and not asked.is_set()
    assert not await folder.exists()


def test_unknown_rule_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown run_shell approval rule"):
        RunSettings(approval_shell_rules=["rm_everything"])
