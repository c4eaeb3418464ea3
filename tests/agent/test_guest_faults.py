"""Guest faults during a real task: the guest agent killed, stopped, or the whole box killed.

Everything is real: a local sandbox, its guest agent (supervised inside the box by
``hivecell.guest.boot``), the scripted model server and the task service. The faults are
made from the host the way they happen: a signal to a process found in the box's tree.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import to_thread

from hivecell.agent.llm import LLMClient
from hivecell.agent.llm.script import ScriptItem
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.agent.service import TaskRequest, TaskResult, TaskService
from hivecell.sandbox.local import state
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.store import TaskStore
from tests.agent.helpers import act, call, finish, provider_config, tool_results, trace_steps
from tests.sandbox import host

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BOOT = "hivecell.guest.boot"
MARKER = "/shared/outbox/started"
# The model's first action is under way (its marker exists) when the fault is made.
SLOW_ACTION = f"touch {MARKER} && sleep 20"


class Run:
    """One task through the service, with what its events said."""

    def __init__(self) -> None:
        self.statuses: list[tuple[str, str]] = []
        self.changed = anyio.Event()
        self.request = TaskRequest(description="survive the guest")

    async def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "status":
            self.statuses.append((data["status"], data.get("reason", "")))
            self.changed.set()
            self.changed = anyio.Event()

    async def until(self, check: Callable[[], bool]) -> None:
        while not check():
            await self.changed.wait()

    def paused_for_guest(self) -> bool:
        return any(s == "paused" and r.startswith("guest_unreachable") for s, r in self.statuses)


@asynccontextmanager
async def service(
    home: Path, provider: LocalProvider, store: TaskStore, steps: list[ScriptItem], **kw: Any
) -> AsyncIterator[tuple[TaskService, ScriptedLLMServer]]:
    async with (
        ScriptedLLMServer(steps) as server,
        LLMClient(provider_config(server.base_url)) as llm,
    ):
        yield TaskService(home=home, provider=provider, store=store, llm=llm, **kw), server


async def run_with_fault(
    svc: TaskService, provider: LocalProvider, store: TaskStore, fault: Callable[[str, Run], Any]
) -> tuple[TaskResult, Run, str]:
    """Run the task; once its first action is under way, ``fault(sandbox_id, run)``."""
    run = Run()
    record = await svc.create(run.request)
    results: list[TaskResult] = []

    async def task() -> None:
        results.append(await svc.run(record, run.request, on_event=run.on_event))

    with anyio.fail_after(90):  # a guard only; the waits below are on state
        async with anyio.create_task_group() as tg:
            tg.start_soon(task)
            await run.until(lambda: bool(run.statuses))  # running: its sandbox is recorded
            sandbox_id = (await store.get(record.id)).sandbox_id
            assert sandbox_id is not None
            await _wait_for_marker(provider, sandbox_id)
            await fault(sandbox_id, run)
    return results[0], run, record.id


async def _wait_for_marker(provider: LocalProvider, sandbox_id: str) -> None:
    shared = (await provider.info(sandbox_id)).shared_dir
    marker = anyio.Path(shared, MARKER.removeprefix("/shared/"))
    while not await marker.exists():  # noqa: ASYNC110 - a file in the box: nothing to wait on
        await anyio.sleep(0.05)


def guest_agent(sandbox_id: str) -> int:
    """The guest agent's pid: the ``boot`` process's child running the same module (bwrap's
    command line names the module too; it is not Python)."""
    procs = {pid for pid, _ in host.process_tree(sandbox_id)}
    boots = {
        pid
        for pid in procs
        if BOOT in (cmd := host._cmdline(pid)) and "bwrap" not in cmd.split(" ", 1)[0]
    }
    agents = [pid for pid in boots if (s := host._stat(pid)) is not None and s[0] in boots]
    assert len(agents) == 1, [host._cmdline(pid) for pid in boots]
    return agents[0]


async def test_a_killed_guest_agent_is_restarted_and_the_task_resumes(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    killed: list[int] = []

    async def kill_agent(sandbox_id: str, run: Run) -> None:
        killed.append(await to_thread.run_sync(guest_agent, sandbox_id))
        os.kill(killed[0], signal.SIGKILL)

    steps = [act(call("run_shell", command=SLOW_ACTION)), *finish("still here")]
    async with service(home, provider, store, steps) as (svc, server):
        result, run, task_id = await run_with_fault(svc, provider, store, kill_agent)
    assert (result.status, result.summary) == ("completed", "still here")
    statuses = run.statuses
    pause = next(i for i, (s, r) in enumerate(statuses) if r.startswith("guest_unreachable"))
    assert statuses[pause][0] == "paused"
    assert "connection to the guest lost" in statuses[pause][1]
    assert ("running", "") in statuses[pause + 1 :]  # resumed before it completed
    # The action the agent died in is not run again: the model hears it may have run.
    (observation,) = tool_results(server.chat_requests[1])
    assert "may or may not have taken effect" in observation["error"]
    assert len(server.chat_requests) == 3  # the action, the finish, the completion check
    steps_seen = await trace_steps(Path(result.trace_dir))
    faults = [s for s in steps_seen if s.tool == "guest"]
    assert [s.kind.value for s in faults] == ["error", "status"]
    assert faults[0].error is not None and faults[0].error.startswith("guest_unreachable:")
    assert faults[1].text is not None and faults[1].text.startswith("guest_reconnected:")
    assert (await store.get(task_id)).status == "completed"


async def test_a_restarted_agent_is_a_new_process_serving_the_same_box(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    """What the supervisor inside the box does, seen from the host alone."""
    from hivecell.sandbox.base import SandboxSpec

    info = await provider.create(SandboxSpec())
    try:
        async with await provider.connect(info.id) as guest:
            await guest.call("run_shell", {"command": "echo kept > /tmp/state"})
        first = await to_thread.run_sync(guest_agent, info.id)
        os.kill(first, signal.SIGKILL)
        async with await provider.connect(info.id) as guest:  # waits in the socket's backlog
            out = await guest.call("run_shell", {"command": "cat /tmp/state"})
        assert out["stdout"] == "kept\n"  # same box, same /tmp
        assert await to_thread.run_sync(guest_agent, info.id) != first
        assert (await provider.info(info.id)).status == "running"
    finally:
        await provider.destroy(info.id)


async def test_a_killed_sandbox_ends_the_task_guest_lost_at_once(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    async def kill_box(sandbox_id: str, run: Run) -> None:
        meta = await to_thread.run_sync(state.load, Layout.of(home, sandbox_id))
        assert meta is not None and meta.supervisor_pid is not None
        os.kill(meta.supervisor_pid, signal.SIGKILL)  # bwrap dies with it: the whole box

    steps = [act(call("run_shell", command=SLOW_ACTION)), *finish("unreachable")]
    # A window far longer than the test's guard: only the provider saying "stopped" ends it.
    async with service(home, provider, store, steps, guest_window_s=3600) as (svc, server):
        result, _, task_id = await run_with_fault(svc, provider, store, kill_box)
    assert result.status == "guest_lost" and result.success is False
    assert result.summary.startswith("sandbox ") and "is stopped" in result.summary
    saved = await store.get(task_id)
    assert saved.status == "guest_lost" and saved.error == f"guest_lost: {result.summary}"
    steps_seen = await trace_steps(Path(result.trace_dir))
    lost = [s for s in steps_seen if s.tool == "guest" and (s.error or "").startswith("guest_lost")]
    assert len(lost) == 1 and "is stopped" in (lost[0].error or "")
    final = steps_seen[-2] if steps_seen[-1].kind.value == "transfer" else steps_seen[-1]
    assert final.kind.value == "status" and final.result == {
        "status": "guest_lost",
        "summary": result.summary,
    }
    assert len(server.chat_requests) == 1  # nothing ran after the box died


async def test_a_silent_guest_pauses_the_task_until_it_answers_again(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    async def stop_agent(sandbox_id: str, run: Run) -> None:
        agent = await to_thread.run_sync(guest_agent, sandbox_id)
        os.kill(agent, signal.SIGSTOP)  # the connection stays open; only heartbeats stop
        try:
            await run.until(run.paused_for_guest)
        finally:
            os.kill(agent, signal.SIGCONT)

    steps = [act(call("run_shell", command=SLOW_ACTION)), *finish("woke up")]
    async with service(home, provider, store, steps) as (svc, _):
        result, run, _ = await run_with_fault(svc, provider, store, stop_agent)
    assert (result.status, result.summary) == ("completed", "woke up")
    reasons = [r for s, r in run.statuses if s == "paused"]
    assert reasons and "missed 3 heartbeats in a row" in reasons[0]
    steps_seen = await trace_steps(Path(result.trace_dir))
    faults = [s for s in steps_seen if s.tool == "guest"]
    assert [s.kind.value for s in faults] == ["error", "status"]
    assert "missed 3 heartbeats" in (faults[0].error or "")


async def test_a_guest_silent_past_the_window_ends_the_task_guest_lost(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    """The box still runs, but its agent never answers again: after ``guest_window_s``."""
    stopped: list[int] = []

    async def stop_for_good(sandbox_id: str, run: Run) -> None:
        stopped.append(await to_thread.run_sync(guest_agent, sandbox_id))
        os.kill(stopped[0], signal.SIGSTOP)

    steps = [act(call("run_shell", command=SLOW_ACTION)), *finish("never")]
    try:
        async with service(home, provider, store, steps, guest_window_s=2) as (svc, _):
            result, run, _ = await run_with_fault(svc, provider, store, stop_for_good)
    finally:
        for pid in stopped:
            with suppress(ProcessLookupError):  # gone with its sandbox, as it should be
                os.kill(pid, signal.SIGCONT)
    assert run.paused_for_guest()  # it paused first, then gave up
    assert result.status == "guest_lost"
    assert "the guest agent did not answer within 2 s" in result.summary
