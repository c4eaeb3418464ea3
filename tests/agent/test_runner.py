"""TaskRunner on a real sandbox against a ScriptedLLMServer: tools, limits and live control."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.control import INSTRUCTION, Extension
from hivecell.agent.llm.script import Failure, Reply, ScriptedToolCall
from hivecell.agent.runner import Outcome, RunSettings
from hivecell.agent.tools import SCREENSHOT_NOTE
from hivecell.sandbox.base import SandboxInfo
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import (
    Harness,
    act,
    call,
    finish,
    harness,
    images,
    system_prompt,
    tool_names,
    tool_results,
    trace_steps,
    user_texts,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WAIT = call("wait", seconds=0)


async def run_with(h: Harness, person: Any, *, timeout: float = 30) -> Outcome:
    """Run the task while ``person(h)`` acts on it from another task, as a server would."""
    outcomes: list[Outcome] = []

    async def run() -> None:
        outcomes.append(await h.runner.run())

    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await person(h)
    return outcomes[0]


# --- live control ----------------------------------------------------------------------------
async def test_pause_then_resume_with_new_instructions(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    def first(request: dict[str, Any]) -> Reply:
        h.runner.control.pause()  # takes effect once step 1 is done
        return act(WAIT)

    async with harness(provider, sandbox, [first, act(WAIT), *finish()], tmp_path / "t") as h:
        paused = h.when_status("paused")

        async def person(h: Harness) -> None:
            await paused.wait()
            sent = len(h.requests)
            await anyio.sleep(0.3)  # a paused task sends nothing to the model
            assert len(h.requests) == sent == 1
            assert h.runner.status == "paused"
            h.runner.control.resume("use the blue folder instead")

        outcome = await run_with(h, person)
    assert outcome.status == "completed"
    instruction = INSTRUCTION.format(text="use the blue folder instead")
    assert instruction not in user_texts(h.requests[0])
    assert all(instruction in user_texts(r) for r in h.requests[1:])
    assert h.statuses[:4] == ["running", "paused", "running", "completed"]


async def test_instruct_mid_run_reaches_the_next_request(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    def second(request: dict[str, Any]) -> Reply:
        h.runner.control.instruct("also save a copy")  # arrives while the model is thinking
        return act(WAIT)

    async with harness(provider, sandbox, [act(WAIT), second, *finish()], tmp_path / "t") as h:
        outcome = await h.runner.run()
    assert outcome.status == "completed"
    instruction = INSTRUCTION.format(text="also save a copy")
    assert [instruction in user_texts(r) for r in h.requests] == [False, False, True, True]
    # The instruction follows the screenshot of step 2, the newest state the person saw.
    last_user = [m for m in h.requests[2]["messages"] if m["role"] == "user"][-1]
    assert last_user["content"] == instruction


async def test_cancel_stops_a_slow_model_call(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    thinking = anyio.Event()

    def slow(request: dict[str, Any]) -> Reply:
        thinking.set()
        return Reply(text="thinking...", delay_s=30)

    async with harness(provider, sandbox, [act(WAIT), slow], tmp_path / "trace") as h:

        async def person(h: Harness) -> None:
            await thinking.wait()
            h.runner.control.cancel()

        started = time.perf_counter()
        outcome = await run_with(h, person)
    assert outcome.status == "cancelled" and not outcome.success
    assert time.perf_counter() - started < 10
    last = (await trace_steps(h.trace_dir))[-1]
    assert last.kind == "status" and last.result == {"status": "cancelled", "summary": ANY_TEXT}


class _AnyText:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_TEXT: Any = _AnyText()


async def test_model_outage_pauses_until_resumed(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    steps = [Failure(status=503, message="upstream down")] * 3 + [act(WAIT), *finish()]
    async with harness(provider, sandbox, steps, tmp_path / "t") as h:  # max_retries=2
        paused = h.when_status("paused")

        async def person(h: Harness) -> None:
            await paused.wait()
            assert "model endpoint failing" in h.runner.control.pause_reason
            assert "HTTP 503: upstream down" in h.runner.control.pause_reason
            h.runner.control.resume("it is back up")

        outcome = await run_with(h, person)
    assert outcome.status == "completed"
    retried = h.requests[3]  # the first request after the resume
    assert INSTRUCTION.format(text="it is back up") in user_texts(retried)
    errors = [s for s in await trace_steps(h.trace_dir) if s.kind == "error"]
    assert len(errors) == 1 and "503" in (errors[0].error or "")


# --- approvals -------------------------------------------------------------------------------
async def approval_run(
    provider: LocalProvider, sandbox: SandboxInfo, trace: Path, *, approve: bool
) -> tuple[Harness, Outcome, anyio.Path]:
    victim = anyio.Path(sandbox.shared_dir) / "workspace" / "old.txt"
    await victim.write_text("keep me?")
    steps = [act(call("delete_file", path="/shared/workspace/old.txt")), *finish()]
    async with harness(provider, sandbox, steps, trace) as h:
        waiting = h.when_status("waiting_for_user")

        async def person(h: Harness) -> None:
            await waiting.wait()
            pending = h.runner.control.pending
            assert pending is not None and pending.kind == "approval"
            assert pending.tool == "delete_file"
            assert pending.arguments == {"path": "/shared/workspace/old.txt"}
            assert await victim.exists()  # nothing happens before the person decides
            if approve:
                h.runner.control.approve()
            else:
                h.runner.control.deny("I still need it")

        outcome = await run_with(h, person)
    return h, outcome, victim


async def test_approved_delete_runs(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    h, outcome, victim = await approval_run(provider, sandbox, tmp_path / "t", approve=True)
    assert outcome.status == "completed"
    assert not await victim.exists()
    assert tool_results(h.requests[1]) == [{"path": "/shared/workspace/old.txt"}]


async def test_denied_delete_is_an_error_for_the_model(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    h, outcome, victim = await approval_run(provider, sandbox, tmp_path / "t", approve=False)
    assert outcome.status == "completed"
    assert await victim.read_text() == "keep me?"
    [result] = tool_results(h.requests[1])
    assert "denied delete_file" in result["error"] and "I still need it" in result["error"]


# --- tools -----------------------------------------------------------------------------------
async def test_disabled_tool_is_not_offered_and_refused(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    steps = [act(call("run_shell", command="touch /shared/outbox/ran")), *finish()]
    settings = RunSettings(disabled_tools=["run_shell"])
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        outcome = await h.runner.run()
    assert outcome.status == "completed"
    offered = tool_names(h.requests[0])
    assert "run_shell" not in offered and {"read_file", "mouse_click"} <= set(offered)
    [result] = tool_results(h.requests[1])
    assert "disabled tool 'run_shell'" in result["error"]
    assert not await (anyio.Path(sandbox.shared_dir) / "outbox" / "ran").exists()


async def test_bad_tool_calls_become_error_observations(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    broken = act(
        ScriptedToolCall(name="mouse_click", arguments='{"x": 10, "y":'),
        call("mouse_click", x="left", y=3),
        call("fly_to_the_moon"),
    )
    async with harness(provider, sandbox, [broken, *finish()], tmp_path / "t") as h:
        outcome = await h.runner.run()
    assert outcome.status == "completed" and outcome.steps == 2
    malformed, invalid, unknown = (r["error"] for r in tool_results(h.requests[1]))
    assert "not valid JSON" in malformed and "resend" in malformed
    assert "invalid arguments for mouse_click" in invalid
    assert "unknown or disabled tool 'fly_to_the_moon'" in unknown
    tools = [s for s in await trace_steps(h.trace_dir) if s.kind == "tool"]
    assert [bool(s.error) for s in tools] == [True, True, True]


async def test_screenshot_tool_returns_the_image_as_an_observation(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    steps = [act(call("screenshot")), *finish()]
    async with harness(provider, sandbox, steps, tmp_path / "t") as h:
        outcome = await h.runner.run()
    assert outcome.status == "completed"
    [result] = tool_results(h.requests[1])
    assert result == {"note": SCREENSHOT_NOTE}  # not megabytes of base64 text
    assert len(images(h.requests[1])) == 2  # the first screenshot and the fresh one


async def test_history_keeps_only_the_last_screenshots(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    steps = [act(WAIT), act(WAIT), act(WAIT), act(WAIT), *finish()]
    settings = RunSettings(keep_screenshots=2)
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        outcome = await h.runner.run()
    assert outcome.status == "completed"
    assert [len(images(r)) for r in h.requests] == [1, 2, 2, 2, 2, 2]
    omitted = [t for t in user_texts(h.requests[-1]) if t == "[older screenshot omitted]"]
    assert len(omitted) == 3  # 5 screenshots taken (start + 4 steps), 2 kept


async def test_coordinates_are_screenshot_pixels(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    steps = [act(call("mouse_click", x=100, y=50)), *finish()]
    settings = RunSettings(screenshot_max_width=640)
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        outcome = await h.runner.run()
        cursor = await h.guest.call("get_cursor_position")
    assert outcome.status == "completed"
    assert cursor == {"x": 200, "y": 100}  # 1280x800 screen, 640x400 screenshots
    assert images(h.requests[0])[0].size == (640, 400)
    prompt = system_prompt(h.requests[0])
    assert "1280x800 screen" in prompt and "latest screenshot (640x400)" in prompt


async def test_an_unreadable_completion_check_means_keep_working(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    steps = [Reply(text="all done?"), Reply(text="yes!!"), *finish("really done")]
    async with harness(provider, sandbox, steps, tmp_path / "t") as h:
        outcome = await h.runner.run()
    assert (outcome.status, outcome.summary, outcome.steps) == ("completed", "really done", 2)
    check = h.requests[1]
    assert check["response_format"]["type"] == "json_schema" and "tools" not in check
    nudge = user_texts(h.requests[2])[-1]
    assert nudge.startswith("The task is not complete yet: the completion check reply")


# --- limits ----------------------------------------------------------------------------------
async def test_token_budget(provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path) -> None:
    settings = RunSettings(max_tokens=25)  # each scripted reply uses 10 + 5 tokens
    trace = tmp_path / "t"
    async with harness(provider, sandbox, [], trace, default=act(WAIT), settings=settings) as h:
        outcome = await h.runner.run()
    assert outcome.status == "budget_exceeded" and not outcome.success
    assert outcome.steps == 2 and outcome.usage.total_tokens == 30
    assert "max_tokens" in outcome.summary
    assert len(h.requests) == 2


# --- immediate control and limits that pause --------------------------------------------------
async def test_take_over_during_the_model_call_stops_every_action_of_its_reply(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    outbox = anyio.Path(sandbox.shared_dir) / "outbox"
    touch = [call("run_shell", command=f"touch /shared/outbox/{n}") for n in ("a", "b", "c")]

    def taken_over_while_thinking(request: dict[str, Any]) -> Reply:
        h.runner.control.pause()  # the person takes over; the reply still arrives after
        return act(*touch)

    steps = [taken_over_while_thinking, *finish()]
    async with harness(provider, sandbox, steps, tmp_path / "t") as h:
        paused = h.when_status("paused")

        async def person(h: Harness) -> None:
            await paused.wait()
            assert [p.name async for p in outbox.iterdir()] == []  # no action ran
            h.runner.control.resume()

        outcome = await run_with(h, person)
    assert outcome.status == "completed"
    assert [p.name async for p in outbox.iterdir()] == []
    skipped = tool_results(h.requests[1])
    assert len(skipped) == 3 and all("paused by the person" in r["error"] for r in skipped)
    tools = [s for s in await trace_steps(h.trace_dir) if s.kind == "tool"]
    assert [s.tool for s in tools] == ["run_shell"] * 3 and all(s.error for s in tools)


async def test_the_clock_stops_while_paused(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    def pause_now(request: dict[str, Any]) -> Reply:
        h.runner.control.pause()
        return act(WAIT)

    settings = RunSettings(timeout_s=15)  # the work itself takes a few seconds under load
    steps = [pause_now, *finish()]
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        paused = h.when_status("paused")

        async def person(h: Harness) -> None:
            await paused.wait()
            left = h.runner.clock.remaining()
            await anyio.sleep(16)  # longer than the whole time limit, spent paused
            assert h.runner.clock.remaining() == left
            h.runner.control.resume()

        outcome = await run_with(h, person)
    assert outcome.status == "completed", outcome.summary


async def test_limits_pause_and_resume_with_more(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    settings = RunSettings(max_steps=1, pause_at_limits=True)
    steps = [act(WAIT), act(WAIT), *finish()]
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        paused = h.when_status("paused")

        async def person(h: Harness) -> None:
            await paused.wait()
            assert h.runner.control.limit == "max_steps_reached"
            assert "max_steps" in h.runner.control.pause_reason
            h.runner.control.resume(extension=Extension(extra_steps=5))

        outcome = await run_with(h, person)
    assert outcome.status == "completed" and outcome.steps == 3
    assert h.statuses[:3] == ["running", "paused", "running"]


async def test_time_limit_during_a_slow_model_call_pauses_then_ends_when_detached(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    settings = RunSettings(timeout_s=1, pause_at_limits=True)
    steps = [Reply(text="thinking...", delay_s=30)]
    async with harness(provider, sandbox, steps, tmp_path / "t", settings=settings) as h:
        paused = h.when_status("paused")

        async def person(h: Harness) -> None:
            await paused.wait()
            assert h.runner.control.limit == "timed_out"
            h.runner.control.detach("nobody to ask")  # e.g. `hivecell run` without a terminal

        outcome = await run_with(h, person)
    assert outcome.status == "timed_out" and "timeout" in outcome.summary
