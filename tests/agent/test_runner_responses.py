"""A TaskRunner driving a real sandbox through OpenAI's computer tool (the Responses adapter).

The model is a scripted Responses API server on loopback spoken to by the real openai SDK;
the runner, approvals, guest agent, X server and xterm are real.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from hivecell.agent.llm.responses import ResponsesClient
from hivecell.agent.llm.scripted_responses import (
    Output,
    ScriptedResponsesServer,
    Step,
    computer_call,
    function_call,
    message,
    reasoning,
)
from hivecell.agent.runner import RunSettings, TaskRunner
from hivecell.sandbox.base import SandboxInfo
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.trace import TraceWriter
from tests.agent.helpers import provider_config
from tests.screens import bright_box

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

Body = dict[str, Any]
WORKSPACE = "/shared/workspace"


@dataclass
class Run:
    runner: TaskRunner
    server: ScriptedResponsesServer
    statuses: list[str] = field(default_factory=list)
    waiting: list[anyio.Event] = field(default_factory=list)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "status":
            self.statuses.append(data["status"])
            if data["status"] == "waiting_for_user" and self.waiting:
                self.waiting.pop(0).set()

    def next_wait(self) -> anyio.Event:
        event = anyio.Event()
        self.waiting.append(event)
        return event


@asynccontextmanager
async def responses_run(
    provider: LocalProvider, sandbox: SandboxInfo, steps: list[Step], trace_dir: Path
) -> AsyncIterator[Run]:
    config = provider_config("http://placeholder/v1", model="computer-use-preview")
    async with (
        ScriptedResponsesServer(steps) as server,
        ResponsesClient(config.model_copy(update={"base_url": server.base_url})) as llm,
        await provider.connect(sandbox.id) as guest,
        TraceWriter(trace_dir) as trace,
    ):
        holder: list[Run] = []
        runner = TaskRunner(
            description="type a line into a terminal",
            guest=guest.call,
            llm=llm,
            trace=trace,
            settings=RunSettings(max_steps=20),
            screen=(sandbox.spec.width, sandbox.spec.height),
            on_event=lambda kind, data: holder[0].on_event(kind, data),
        )
        holder.append(Run(runner, server))
        yield holder[0]


# --- reading requests ------------------------------------------------------------------------
def latest_screenshot(body: Body) -> Image.Image:
    url = ""
    for item in body["input"]:
        if item.get("type") == "computer_call_output":
            url = item["output"]["image_url"]
        for part in item.get("content") if isinstance(item.get("content"), list) else []:
            if part.get("type") == "input_image":
                url = part["image_url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def outputs(body: Body, kind: str = "computer_call_output") -> list[Body]:
    return [item for item in body["input"] if item.get("type") == kind]


def user_notes(body: Body) -> list[str]:
    return [
        item["content"]
        for item in body["input"]
        if item.get("role") == "user" and isinstance(item.get("content"), str)
    ]


def click_into_xterm(call_id: str) -> Callable[[Body], Output]:
    """Looks at the screenshot the model got and clicks into the white xterm."""

    def step(body: Body) -> Output:
        box = bright_box(latest_screenshot(body))
        assert box is not None, "no xterm on the screenshot"
        assert box[2] - box[0] > 100 and box[3] - box[1] > 50, f"xterm too small: {box}"
        x, y = (box[0] + box[2]) // 2, (box[1] + box[3]) // 2
        click = {"type": "click", "button": "left", "x": x, "y": y}
        return Output([reasoning("the terminal is open"), computer_call(click, call_id=call_id)])

    return step


def type_line(text: str, call_id: str, *, checks: list[Body] | None = None) -> list[Step]:
    typed = computer_call({"type": "type", "text": text}, call_id=call_id, checks=checks or [])
    enter = computer_call({"type": "keypress", "keys": ["ENTER"]}, call_id=f"{call_id}-enter")
    return [Output([reasoning(f"type {text}"), typed]), Output([enter])]


def wait_for(path: str, call_id: str) -> Output:
    command = f"for i in $(seq 200); do [ -s {path} ] && break; sleep 0.05; done; cat {path}"
    return Output([function_call("run_shell", json.dumps({"command": command}), call_id=call_id)])


def finish() -> list[Step]:
    verdict = {"complete": True, "success": True, "summary": "typed it"}
    return [Output([message("Done.")]), Output([message(json.dumps(verdict))])]


OPEN_XTERM = Output([function_call("open_app", '{"name": "xterm"}', call_id="open")])


# --- tests -----------------------------------------------------------------------------------
async def test_computer_calls_drive_a_real_desktop_to_a_file(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    steps: list[Step] = [
        OPEN_XTERM,
        click_into_xterm("click"),
        Output([computer_call({"type": "teleport", "x": 1, "y": 1}, call_id="bad-kind")]),
        Output([computer_call({"type": "move", "y": 5}, call_id="no-x")]),
        *type_line(f"echo driven-by-cua > {WORKSPACE}/cua.txt", "type"),
        wait_for(f"{WORKSPACE}/cua.txt", "check"),
        *finish(),
    ]
    async with responses_run(provider, sandbox, steps, tmp_path / "t") as run:
        with anyio.fail_after(120):
            outcome = await run.runner.run()
    server = run.server
    assert server.problems == []
    assert (outcome.status, outcome.success, outcome.summary) == ("completed", True, "typed it")
    written = anyio.Path(sandbox.shared_dir) / "workspace" / "cua.txt"
    assert await written.read_text() == "driven-by-cua\n"
    bodies = server.bodies
    # The display the tool declares is the screenshot the model sees.
    shot = latest_screenshot(bodies[1])
    [tool] = [t for t in bodies[1]["tools"] if t["type"] == "computer_use_preview"]
    assert (tool["display_width"], tool["display_height"]) == shot.size
    # The click's result came back as its own call's output, with the next screenshot.
    [clicked] = outputs(bodies[2])
    assert clicked["call_id"] == "click" and clicked["output"]["type"] == "computer_screenshot"
    # Bad actions reached the model as errors about its call, and nothing crashed.
    assert any("unknown action type 'teleport'" in note for note in user_notes(bodies[3]))
    assert any("move needs an integer x" in note for note in user_notes(bodies[4]))
    [shell] = [o for o in outputs(bodies[7], "function_call_output") if o["call_id"] == "check"]
    assert json.loads(shell["output"])["stdout"] == "driven-by-cua\n"
    # The reasoning items went back with their calls, as the API requires (store=false).
    assert sum(item.get("type") == "reasoning" for item in bodies[7]["input"]) == 2


async def test_safety_checks_wait_for_a_person_approve_acknowledges_deny_never_runs(
    provider: LocalProvider, sandbox: SandboxInfo, tmp_path: Path
) -> None:
    approved = [{"id": "sc_ok", "code": "malicious_instructions", "message": "page text asks"}]
    denied = [{"id": "sc_no", "code": "sensitive_domain", "message": "a bank"}]
    question = function_call("ask_user", '{"question": "Which file?"}', call_id="ask")
    steps: list[Step] = [
        OPEN_XTERM,
        Output([question]),  # the ask-user tools work through the adapter too
        click_into_xterm("click"),
        *type_line(f"echo approved > {WORKSPACE}/ok.txt", "typed-ok", checks=approved),
        *type_line(f"echo denied > {WORKSPACE}/no.txt", "typed-no", checks=denied),
        # The shell runs lines in order: once this one ran, a typed denied line would have too.
        *type_line(f"echo after > {WORKSPACE}/after.txt", "typed-after"),
        wait_for(f"{WORKSPACE}/after.txt", "check"),
        *finish(),
    ]
    asked: list[dict[str, Any]] = []
    async with responses_run(provider, sandbox, steps, tmp_path / "t") as run:
        waits = [run.next_wait() for _ in range(3)]

        async def person() -> None:
            for waited, answer in zip(waits, ("answer", "approve", "deny"), strict=True):
                await waited.wait()
                pending = run.runner.control.pending
                assert pending is not None
                asked.append(pending.as_dict())
                if answer == "answer":
                    run.runner.control.answer("ok.txt")
                elif answer == "approve":
                    run.runner.control.approve()
                else:
                    run.runner.control.deny("not that one")

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(person)
                outcome = await run.runner.run()
    server = run.server
    assert server.problems == []
    assert outcome.status == "completed"
    assert [a["tool"] for a in asked] == ["ask_user", "keyboard_type", "keyboard_type"]
    assert "malicious_instructions: page text asks" in asked[1]["reason"]
    assert "sensitive_domain: a bank" in asked[2]["reason"]
    workspace = anyio.Path(sandbox.shared_dir) / "workspace"
    assert await (workspace / "ok.txt").read_text() == "approved\n"
    assert await (workspace / "after.txt").read_text() == "after\n"
    assert not await (workspace / "no.txt").exists()  # the denied text was never typed
    bodies = server.bodies
    [answered] = [o for o in outputs(bodies[2], "function_call_output") if o["call_id"] == "ask"]
    assert json.loads(answered["output"]) == {"answer": "ok.txt"}
    # Approved: the next request acknowledges exactly the pending check on that call.
    [acked] = [o for o in outputs(bodies[4]) if o["call_id"] == "typed-ok"]
    assert acked["acknowledged_safety_checks"] == approved
    # Denied: the call is not claimed as run; the model is told why.
    after_denial = bodies[6]
    assert all(o["call_id"] != "typed-no" for o in outputs(after_denial))
    assert not any(i.get("call_id") == "typed-no" for i in after_denial["input"])
    assert any(
        "the person denied keyboard_type: not that one" in n for n in user_notes(after_denial)
    )
