"""Control and History on their own: answers, refusals and screenshot pruning (no sandbox)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from hivecell.agent.control import INSTRUCTION, Control
from hivecell.agent.history import History, image_message
from hivecell.errors import InvalidParams, ToolFailed

pytestmark = pytest.mark.anyio
CHOICE = {"question": "?", "options": ["csv", "json"]}


def control() -> tuple[Control, list[str]]:
    statuses: list[str] = []
    return Control(lambda status, reason="": statuses.append(status)), statuses


async def ask(ctl: Control, reply: str) -> str:
    answers: list[str] = []

    async def person() -> None:
        await anyio.lowlevel.checkpoint()  # the question is pending once the runner waits
        assert ctl.pending is not None and ctl.pending.options == ["csv", "json"]
        ctl.answer(reply)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(person)
            answers.append(
                await ctl.ask("ask_user_choice", {"question": "?", "options": ["csv", "json"]})
            )
    return answers[0]


@pytest.mark.parametrize("reply", ["2", "JSON", " json "])
async def test_a_choice_is_answered_by_number_or_name(reply: str) -> None:
    ctl, statuses = control()
    assert await ask(ctl, reply) == "json"
    assert statuses == ["waiting_for_user", "running"] and ctl.pending is None


async def test_a_wrong_answer_is_refused_and_the_question_stays() -> None:
    ctl, _ = control()

    async def person() -> None:
        await anyio.lowlevel.checkpoint()
        with pytest.raises(InvalidParams, match=r"1\) csv, 2\) json"):
            ctl.answer("3")
        assert ctl.pending is not None
        ctl.answer("csv")

    async with anyio.create_task_group() as tg:
        tg.start_soon(person)
        assert (
            await ctl.ask("ask_user_choice", {"question": "?", "options": ["csv", "json"]}) == "csv"
        )


async def test_denial_raises_for_the_tool_call() -> None:
    ctl, _ = control()

    async def person() -> None:
        await anyio.lowlevel.checkpoint()
        ctl.deny("not that one")

    async with anyio.create_task_group() as tg:
        tg.start_soon(person)
        with pytest.raises(ToolFailed, match="denied delete_file: not that one"):
            await ctl.approval("delete_file", {"path": "/x"})


async def test_nothing_to_answer_and_empty_instructions_are_refused() -> None:
    ctl, _ = control()
    for act in (lambda: ctl.answer("1"), ctl.approve, ctl.deny):
        with pytest.raises(InvalidParams, match="not waiting"):
            act()
    with pytest.raises(InvalidParams, match="empty"):
        ctl.instruct("  ")


async def test_instructions_are_applied_once_at_the_checkpoint() -> None:
    ctl, _ = control()
    history = History("system", "task")
    ctl.instruct("first")
    ctl.instruct("second")
    await ctl.checkpoint(history)
    await ctl.checkpoint(history)
    texts = [m["content"] for m in history.messages[2:]]
    assert texts == [INSTRUCTION.format(text="first"), INSTRUCTION.format(text="second")]


def test_history_keeps_the_newest_screenshots() -> None:
    history = History("system", "task", keep_images=2)
    for n in range(4):
        history.add(image_message(f"shot {n}", bytes([n])))
    assert history.image_count() == 2
    kept = [m["content"][1]["type"] for m in history.messages[2:]]
    assert kept == ["text", "text", "image_url", "image_url"]
    assert history.messages[2]["content"][1]["text"] == "[older screenshot omitted]"


def test_settings_refuse_unknown_tool_names() -> None:
    from pydantic import ValidationError

    from hivecell.agent.runner import RunSettings

    settings = RunSettings(approval_tools=["delete_file", "run_shell"])
    assert settings.approval_tools[-1] == "run_shell"
    with pytest.raises(ValidationError, match=r"teleport.*tools: screenshot"):
        RunSettings(disabled_tools=["teleport"])


# --- guest faults ----------------------------------------------------------------------------
def tracked(initial: str) -> tuple[Control, list[tuple[str, str]]]:
    """A Control whose status getter follows the statuses it sets (as the runner's does)."""
    seen: list[tuple[str, str]] = [(initial, "")]

    def set_status(status: str, reason: str = "") -> None:
        seen.append((status, reason))

    return Control(set_status, lambda: seen[-1][0]), seen


async def test_a_running_task_pauses_while_the_guest_is_unreachable_and_resumes() -> None:
    ctl, seen = tracked("running")
    ctl.guest_unreachable("missed 3 heartbeats")
    assert seen[-1] == ("paused", "guest_unreachable: missed 3 heartbeats")
    assert (ctl.fault, ctl.pause_reason) == ("guest_unreachable", seen[-1][1])
    ctl.guest_back()
    assert seen[-1] == ("running", "") and ctl.fault is None and ctl.pause_reason == ""


async def test_a_guest_fault_leaves_a_persons_pause_and_question_alone() -> None:
    for status in ("paused", "waiting_for_user"):
        ctl, seen = tracked(status)
        ctl.guest_unreachable("connection lost")
        assert seen == [(status, "")] and ctl.fault == "guest_unreachable"
        ctl.guest_back()
        assert seen == [(status, "")] and ctl.fault is None


async def test_the_person_pausing_during_a_fault_keeps_it_paused_after_the_guest_is_back() -> None:
    ctl, seen = tracked("running")
    ctl.guest_unreachable("connection lost")
    seen.append(("paused", "paused by the person"))  # the runner's pause_for, meanwhile
    ctl.pause_reason = "paused by the person"
    ctl.guest_back()
    assert seen[-1] == ("paused", "paused by the person")


async def test_end_cancels_the_run_with_its_status() -> None:
    ctl, _ = tracked("running")
    ctl.end("guest_lost", "sandbox sb-1 is stopped")
    assert ctl.ended == ("guest_lost", "sandbox sb-1 is stopped")
    assert ctl.cancel_scope.cancel_called
