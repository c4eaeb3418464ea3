# ruff: noqa: E501  (tables of actions and wire items read best one per line)
"""ResponsesClient against a real loopback Responses API server with the real openai SDK.

Covers each computer action's mapping onto hivecell tools, bad actions reported per call,
the request built from the runner's chat history, retries and rejections.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from hivecell.agent.llm import LLMRejected, ProviderConfig, RetryPolicy
from hivecell.agent.llm.response import SafetyCheck
from hivecell.agent.llm.responses import ResponsesClient
from hivecell.agent.llm.responses_actions import key_name, map_action, notches
from hivecell.agent.llm.responses_input import OMITTED_URL, build_input
from hivecell.agent.llm.script import Failure
from hivecell.agent.llm.scripted_responses import (
    Output,
    ScriptedResponsesServer,
    check_request,
    computer_call,
    function_call,
    message,
    reasoning,
)
from hivecell.agent.tools import TOOLS

pytestmark = pytest.mark.anyio


def png(width: int = 640, height: int = 400) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def shot_message(text: str, data: bytes) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


def history(*more: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You drive a desktop."},
        {"role": "user", "content": "the task"},
        shot_message("The desktop now.", png()),
        *more,
    ]


def config(base_url: str, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "name": "responses",
        "base_url": base_url,
        "api_key": SecretStr("test-key"),
        "model": "computer-use-preview",
        "max_retries": 2,
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
    }
    return ProviderConfig.model_validate({**values, **overrides})


ALL_TOOLS = [t.schema() for t in TOOLS.values()]


# --- the action mapping ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ({"type": "click", "button": "left", "x": 10, "y": 20}, ("mouse_click", {"x": 10, "y": 20, "button": "left"})),
        ({"type": "click", "button": "right", "x": 1, "y": 2}, ("mouse_click", {"x": 1, "y": 2, "button": "right"})),
        ({"type": "click", "button": "wheel", "x": 1, "y": 2}, ("mouse_click", {"x": 1, "y": 2, "button": "middle"})),
        ({"type": "click", "button": "back", "x": 1, "y": 2}, ("keyboard_key", {"keys": "alt+Left"})),
        ({"type": "click", "button": "forward", "x": 1, "y": 2}, ("keyboard_key", {"keys": "alt+Right"})),
        ({"type": "double_click", "x": 5, "y": 6}, ("mouse_click", {"x": 5, "y": 6, "clicks": 2})),
        ({"type": "click", "button": "left", "x": 1, "y": 2, "keys": ["SHIFT"]}, ("mouse_click", {"x": 1, "y": 2, "button": "left", "hold": "shift"})),
        ({"type": "double_click", "x": 5, "y": 6, "keys": ["CTRL", "ALT"]}, ("mouse_click", {"x": 5, "y": 6, "clicks": 2, "hold": "ctrl+alt"})),
        ({"type": "scroll", "x": 1, "y": 2, "scroll_x": 0, "scroll_y": -100, "keys": ["CTRL"]}, ("scroll", {"x": 1, "y": 2, "dx": 0, "dy": -1, "hold": "ctrl"})),
        (
            {"type": "drag", "path": [{"x": 1, "y": 2}, {"x": 30, "y": 40}]},
            ("mouse_drag", {"from_x": 1, "from_y": 2, "to_x": 30, "to_y": 40}),
        ),
        ({"type": "move", "x": 7, "y": 8}, ("mouse_move", {"x": 7, "y": 8})),
        (
            {"type": "scroll", "x": 100, "y": 200, "scroll_x": 0, "scroll_y": 300},
            ("scroll", {"x": 100, "y": 200, "dx": 0, "dy": 3}),
        ),
        (
            {"type": "scroll", "x": 1, "y": 1, "scroll_x": -40, "scroll_y": -250},
            ("scroll", {"x": 1, "y": 1, "dx": -1, "dy": -2}),
        ),
        ({"type": "type", "text": "héllo"}, ("keyboard_type", {"text": "héllo"})),
        ({"type": "keypress", "keys": ["CTRL", "SHIFT", "T"]}, ("keyboard_key", {"keys": "ctrl+shift+t"})),
        ({"type": "keypress", "keys": ["ENTER"]}, ("keyboard_key", {"keys": "Return"})),
        ({"type": "wait"}, ("wait", {"seconds": 2.0})),
        ({"type": "screenshot"}, ("screenshot", {})),
    ],
)  # fmt: skip
def test_each_action_maps_onto_a_hivecell_tool(
    action: dict[str, Any], expected: tuple[str, dict[str, Any]]
) -> None:
    name, arguments = map_action(action)
    assert (name, arguments) == expected
    TOOLS[name].args.model_validate(arguments)  # what the runner will validate it with


@pytest.mark.parametrize(
    ("key", "name"),
    [("ESC", "Escape"), ("BACKSPACE", "BackSpace"), ("ArrowLeft", "Left"), ("PAGEDOWN", "Next"),
     ("CMD", "super"), ("F5", "F5"), ("a", "a"), ("+", "plus"), ("Page_Up", "Page_Up")],
)  # fmt: skip
def test_key_names(key: str, name: str) -> None:
    assert key_name(key) == name


def test_notches_round_and_keep_small_scrolls() -> None:
    assert [notches(p) for p in (0, 1, 149, 151, -99, -1000)] == [0, 1, 1, 2, -1, -10]


# --- against the scripted server ------------------------------------------------------------
async def test_actions_come_back_as_tool_calls_with_checks_usage_and_items() -> None:
    check = {"id": "sc_1", "code": "malicious_instructions", "message": "the page says so"}
    items = [
        reasoning("I should click the button."),
        computer_call(
            {"type": "click", "button": "left", "x": 3, "y": 4}, call_id="c1", checks=[check]
        ),
        function_call("run_shell", '{"command": "true"}', call_id="f1"),
    ]
    usage = {
        "input_tokens": 1000, "output_tokens": 50, "total_tokens": 1050,
        "input_tokens_details": {"cached_tokens": 400},
    }  # fmt: skip
    prices = {"computer-use-preview": {"input": 3.0, "output": 12.0}}
    async with (
        ScriptedResponsesServer([Output(items, usage=usage)]) as server,
        ResponsesClient(config(server.base_url, prices=prices)) as client,
    ):
        response = await client.complete(history(), tools=ALL_TOOLS)
    assert server.problems == []
    click, shell = response.tool_calls
    assert (click.id, click.name, click.arguments) == (
        "c1",
        "mouse_click",
        {"x": 3, "y": 4, "button": "left"},
    )
    assert click.safety_checks == [SafetyCheck.model_validate(check)]
    assert (shell.id, shell.name, shell.arguments) == ("f1", "run_shell", {"command": "true"})
    assert response.reasoning == "I should click the button."
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.cached_prompt_tokens) == (1000, 400)
    assert response.cost_usd is not None and response.cost_usd > 0
    assert response.provider_items == items  # resent verbatim from the history
    [body] = server.bodies
    computer = [t for t in body["tools"] if t["type"] == "computer_use_preview"]
    assert computer == [
        {
            "type": "computer_use_preview",
            "display_width": 640,
            "display_height": 400,
            "environment": "linux",
        }
    ]
    functions = {t["name"] for t in body["tools"] if t["type"] == "function"}
    assert "run_shell" in functions and "ask_user" in functions and "mouse_click" not in functions
    assert body["instructions"] == "You drive a desktop."
    assert (body["store"], body["truncation"]) == (False, "auto")


@pytest.mark.parametrize(
    ("action", "says"),
    [
        ({"type": "teleport", "x": 1, "y": 2}, "unknown action type 'teleport'"),
        ({"type": "click", "button": "left", "y": 2}, "needs an integer x"),
        ({"type": "drag", "path": [{"x": 1, "y": 1}, {"x": 2, "y": 2}, {"x": 3, "y": 1}]}, "only straight drags"),
        ({"type": "drag", "path": [{"x": 1, "y": 1}]}, "at least two points"),
        ({"type": "keypress", "keys": []}, "non-empty list"),
        ({"type": "move", "x": 1, "y": 2, "keys": ["SHIFT"]}, "holding keys"),
        ({"type": "click", "button": "back", "x": 1, "y": 2, "keys": ["SHIFT"]}, "holding keys"),
        ({"type": "click", "button": "left", "x": 1, "y": 2, "keys": "SHIFT"}, "list of key names"),
    ],
)  # fmt: skip
async def test_bad_actions_become_per_call_errors(action: dict[str, Any], says: str) -> None:
    async with (
        ScriptedResponsesServer([Output([computer_call(action, call_id="bad")])]) as server,
        ResponsesClient(config(server.base_url)) as client,
    ):
        response = await client.complete(history(), tools=ALL_TOOLS)
    [call] = response.tool_calls
    assert call.id == "bad" and call.arguments is None
    assert call.parse_error is not None and says in call.parse_error


async def test_429_then_success() -> None:
    steps = [
        Failure(status=429, message="slow down", retry_after="0"),
        Output([message("hello")]),
    ]
    async with (
        ScriptedResponsesServer(steps) as server,
        ResponsesClient(config(server.base_url)) as client,
    ):
        response = await client.complete(history(), tools=ALL_TOOLS)
    assert (response.text, response.attempts, len(server.bodies)) == ("hello", 2, 2)


async def test_400_is_rejected_at_once() -> None:
    steps = [Failure(status=400, message="bad image"), Output([message("never")])]
    retry = RetryPolicy(max_retries=5, base_s=0.001, max_s=0.01)
    async with (
        ScriptedResponsesServer(steps) as server,
        ResponsesClient(config(server.base_url), retry=retry) as client,
    ):
        with pytest.raises(LLMRejected) as caught:
            await client.complete(history(), tools=ALL_TOOLS)
    assert caught.value.status == 400 and "bad image" in str(caught.value)
    assert len(server.bodies) == 1


async def test_completion_check_asks_for_json_and_declares_the_computer_tool() -> None:
    """The check sends the history (with computer calls) and no tools: the request must
    still declare the tool its input refers to, and ask for the schema as text.format."""
    items = [computer_call({"type": "screenshot"}, call_id="c9")]
    verdict = {
        "type": "json_schema",
        "json_schema": {"name": "v", "strict": True, "schema": {"type": "object"}},
    }
    messages = history(
        {"role": "assistant", "content": None, "tool_calls": [], "provider_items": items},
        {"role": "tool", "tool_call_id": "c9", "content": json.dumps({"note": "x"})},
        shot_message("Screenshot after step 1.", png(320, 200)),
        {"role": "user", "content": "Is it done?"},
    )
    async with (
        ScriptedResponsesServer([Output([message('{"complete": true}')])]) as server,
        ResponsesClient(config(server.base_url)) as client,
    ):
        response = await client.complete(messages, response_format=verdict)
    assert server.problems == [] and response.text == '{"complete": true}'
    [body] = server.bodies
    assert body["text"] == {
        "format": {"type": "json_schema", "name": "v", "strict": True, "schema": {"type": "object"}}
    }
    assert body["tools"][0]["display_width"] == 320


# --- the history as input items -------------------------------------------------------------
def test_history_becomes_paired_items_with_screenshots_and_acknowledgements() -> None:
    check = {"id": "sc_1", "code": "c", "message": "m"}
    thought = reasoning("r")
    call = computer_call({"type": "type", "text": "x"}, call_id="c1", checks=[check])
    after = png(320, 200)
    messages = history(
        {"role": "assistant", "content": None, "tool_calls": [], "provider_items": [thought, call]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"error": "invalid_params: no"}', "acknowledged_safety_checks": [check]},
        shot_message("Screenshot after step 1.", after),
    )  # fmt: skip
    built = build_input(messages).input
    assert built[2:4] == [thought, call]
    output = built[4]
    assert output["acknowledged_safety_checks"] == [check]
    assert base64.b64decode(output["output"]["image_url"].split(",", 1)[1]) == after
    assert built[5] == {"role": "user", "content": "The computer action failed: invalid_params: no"}
    assert len(built) == 6  # the screenshot message became the output's image, not a repeat


def test_unapproved_call_is_left_out_with_its_reasoning_and_explained() -> None:
    call = computer_call({"type": "type", "text": "rm"}, call_id="c1", checks=[{"id": "sc_1"}])
    denied = json.dumps({"error": "tool_failed: the person denied keyboard_type: no"})
    messages = history(
        {"role": "assistant", "content": None, "tool_calls": [], "provider_items": [reasoning("r"), call]},
        {"role": "tool", "tool_call_id": "c1", "content": denied},
        shot_message("Screenshot after step 1.", png()),
    )  # fmt: skip
    built = build_input(messages).input
    kinds = [item.get("type") for item in built]
    assert "computer_call" not in kinds and "reasoning" not in kinds
    assert "the person denied keyboard_type: no" in built[2]["content"]
    assert built[3]["content"][1]["type"] == "input_image"  # the screenshot stays a user image


def test_pruned_screenshot_becomes_a_placeholder_image_with_a_note() -> None:
    call = computer_call({"type": "screenshot"}, call_id="c1")
    pruned = {"role": "user", "content": [{"type": "text", "text": "Screenshot after step 1."}, {"type": "text", "text": "[older screenshot omitted]"}]}  # fmt: skip
    messages = history(
        {"role": "assistant", "content": None, "tool_calls": [], "provider_items": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "{}"},
        pruned,
    )
    built = build_input(messages).input
    assert built[3]["output"]["image_url"] == OMITTED_URL
    assert "omitted" in built[4]["content"]


# --- the scripted server refuses what the real API refuses ----------------------------------
def _body(*items: dict[str, Any]) -> dict[str, Any]:
    tool = {
        "type": "computer_use_preview",
        "display_width": 10,
        "display_height": 10,
        "environment": "linux",
    }
    return {"model": "m", "input": list(items), "tools": [tool], "truncation": "auto"}


SHOT = {"type": "computer_screenshot", "image_url": "data:image/png;base64,AAAA"}


@pytest.mark.parametrize(
    ("items", "says"),
    [
        ([computer_call({"type": "wait"}, call_id="a")], "no output for call a"),
        ([{"type": "computer_call_output", "call_id": "z", "output": SHOT}], "has no computer_call before it"),
        ([computer_call({"type": "wait"}, call_id="a"), {"type": "computer_call_output", "call_id": "a", "output": {"type": "computer_screenshot"}}], "no PNG screenshot"),
        ([computer_call({"type": "wait"}, call_id="a", checks=[{"id": "s"}]), {"type": "computer_call_output", "call_id": "a", "output": SHOT}], "not acknowledged"),
        ([computer_call({"type": "wait"}, call_id="a"), {"type": "computer_call_output", "call_id": "a", "output": SHOT, "acknowledged_safety_checks": [{"id": "s"}]}], "were not pending"),
        ([reasoning("r")], "without its following item"),
        ([function_call("f", "{}", call_id="f"), {"type": "computer_call_output", "call_id": "f", "output": SHOT}], "has no computer_call before it"),
    ],
)  # fmt: skip
def test_scripted_server_refuses_what_the_api_refuses(
    items: list[dict[str, Any]], says: str
) -> None:
    problems = check_request(_body(*items))
    assert any(says in p for p in problems), problems


def test_scripted_server_accepts_a_well_formed_step() -> None:
    call = computer_call({"type": "wait"}, call_id="a", checks=[{"id": "s"}])
    output = {"type": "computer_call_output", "call_id": "a", "output": SHOT, "acknowledged_safety_checks": [{"id": "s"}]}  # fmt: skip
    assert check_request(_body(reasoning("r"), call, output)) == []
    assert "input has computer_call items but no computer_use_preview tool" in check_request(
        {"model": "m", "input": [call, output], "truncation": "auto"}
    )
