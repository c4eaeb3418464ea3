"""AnthropicClient through the real ``anthropic`` SDK against a scripted Messages API server on
loopback: the request it builds (tools, beta header, pairing, images, cache breakpoints), the
calls it returns, usage and cost, retries and typed errors."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from PIL import Image
from pydantic import SecretStr

from hivecell.agent.history import image_message
from hivecell.agent.llm import LLMRejected, LLMUnavailable, ProviderConfig, make_model
from hivecell.agent.llm.claude import AnthropicClient
from hivecell.agent.llm.script import Failure
from hivecell.agent.llm.scripted_claude import ClaudeReply, ScriptedClaudeServer, computer, use
from hivecell.agent.prompts import COMPLETION_SCHEMA
from hivecell.agent.tools import TOOLS

pytestmark = [
    pytest.mark.anyio,
    # The SDK warns that models it knows are deprecated; these are just names to the server.
    pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning"),
]
SCHEMAS = [t.schema() for t in TOOLS.values()]


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="PNG")
    return out.getvalue()


def config(server: ScriptedClaudeServer, model: str = "claude-opus-4-5") -> ProviderConfig:
    return ProviderConfig(
        name="claude",
        kind="anthropic",
        base_url=server.base_url,
        api_key=SecretStr("sk-ant-test"),
        model=model,
        max_retries=2,
        timeout_s=5.0,
        backoff_base_s=0.001,
        backoff_max_s=0.01,
    )


def start(shot: bytes) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You operate a desktop."},
        {"role": "user", "content": "open the editor"},
        image_message("The desktop now.", shot),
    ]


def after(
    messages: list[dict[str, Any]], response: Any, results: list[Any], shot: bytes
) -> list[dict[str, Any]]:
    """What the runner appends for one step: its reply, each result, the screenshot."""
    calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.raw_arguments}}
        for c in response.tool_calls
    ]
    tail: list[dict[str, Any]] = [
        {"role": "assistant", "content": response.text, "tool_calls": calls}
    ]
    tail += [
        {"role": "tool", "tool_call_id": c.id, "content": json.dumps(r)}
        for c, r in zip(response.tool_calls, results, strict=True)
    ]
    return [*messages, *tail, image_message("Screenshot after step 1.", shot)]


async def test_the_first_request_offers_native_tools_with_cache_breakpoints() -> None:
    reply = ClaudeReply(text="clicking", tool_uses=[computer("left_click", coordinate=[5, 6])])
    async with ScriptedClaudeServer([reply]) as server, make_model(config(server)) as client:
        assert isinstance(client, AnthropicClient)
        response = await client.complete(start(png(1280, 800)), tools=SCHEMAS)
    sent = server.message_requests[0]
    assert "computer-use-2025-11-24" in sent.headers["anthropic-beta"]
    key = sent.headers.get("x-api-key") or sent.headers.get("authorization", "")
    assert key.removeprefix("Bearer ") == "sk-ant-test"
    body = sent.body
    assert body["model"] == "claude-opus-4-5" and body["max_tokens"] > 0
    assert body["system"] == [
        {"type": "text", "text": "You operate a desktop.", "cache_control": {"type": "ephemeral"}}
    ]
    tools = {t["name"]: t for t in body["tools"]}
    assert tools["computer"]["type"] == "computer_20251124"
    assert (tools["computer"]["display_width_px"], tools["computer"]["display_height_px"]) == (
        1280,
        800,
    )
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    [turn] = body["messages"]  # the task and the first screenshot: one user turn
    assert turn["role"] == "user"
    assert [b["type"] for b in turn["content"]] == ["text", "text", "image"]
    image = turn["content"][-1]
    assert image["source"]["media_type"] == "image/png" and image["source"]["type"] == "base64"
    assert image["cache_control"] == {"type": "ephemeral"}
    assert response.text == "clicking"
    [call] = response.tool_calls
    assert (call.name, call.arguments, call.id) == ("mouse_click", {"x": 5, "y": 6}, "toolu_001_0")


async def test_results_answer_every_tool_use_and_the_screenshot_rides_in_computers() -> None:
    first = ClaudeReply(
        tool_uses=[
            use("bash", "toolu_a", command="ls"),
            computer("type", text="hi"),
            computer("key", text="Return"),
        ]
    )
    second = ClaudeReply(text="done")
    shot = png(1280, 800)
    async with (
        ScriptedClaudeServer([first, second]) as server,
        make_model(config(server, "claude-sonnet-4-5")) as client,
    ):
        messages = start(shot)
        response = await client.complete(messages, tools=SCHEMAS)
        results = [{"exit_code": 0}, {"characters": 2}, {"error": "invalid_params: no"}]
        await client.complete(after(messages, response, results, shot), tools=SCHEMAS)
    sent = server.message_requests[1]
    assert "computer-use-2025-01-24" in sent.headers["anthropic-beta"]
    assert {t["name"]: t.get("type") for t in sent.body["tools"]}["computer"] == "computer_20250124"
    _, assistant, answers = sent.body["messages"]
    assert [b["type"] for b in assistant["content"]] == ["tool_use"] * 3
    # the model sees its own native calls again, not hivecell's translation
    assert assistant["content"][0] == {
        "type": "tool_use", "id": "toolu_a", "name": "bash", "input": {"command": "ls"}
    }  # fmt: skip
    assert assistant["content"][2]["input"] == {"action": "key", "text": "Return"}
    ids = [b["id"] for b in assistant["content"]]
    blocks = answers["content"]
    assert [b.get("tool_use_id") for b in blocks[:3]] == ids  # results first, in order
    assert blocks[2]["is_error"] is True and "is_error" not in blocks[0]
    # the screenshot is the last computer call's result; the caption follows as text
    assert [c["type"] for c in blocks[2]["content"]] == ["text", "image"]
    assert all(c["type"] == "text" for c in blocks[1]["content"])
    assert blocks[-1]["type"] == "text" and blocks[-1]["cache_control"] == {"type": "ephemeral"}


async def test_large_screenshots_are_scaled_and_clicks_map_back() -> None:
    # 1280x1024 is 1.31 MP: over Anthropic's 1.15 MP, so the adapter sends a smaller image.
    reply = ClaudeReply(tool_uses=[computer("left_click", coordinate=[1197, 958])])
    async with ScriptedClaudeServer([reply]) as server, make_model(config(server)) as client:
        response = await client.complete(start(png(1280, 1024)), tools=SCHEMAS)
    body = server.message_requests[0].body
    computer_tool = next(t for t in body["tools"] if t["name"] == "computer")
    width, height = computer_tool["display_width_px"], computer_tool["display_height_px"]
    assert width * height <= 1_150_000 and max(width, height) <= 1568
    data = body["messages"][0]["content"][-1]["source"]["data"]
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (width, height)
    [call] = response.tool_calls
    assert call.arguments is not None
    assert abs(call.arguments["x"] - 1279) <= 1 and abs(call.arguments["y"] - 1023) <= 1


async def test_a_bad_action_comes_back_as_an_error_call() -> None:
    reply = ClaudeReply(tool_uses=[computer("left_click", coordinate=[5000, 5])])
    async with ScriptedClaudeServer([reply]) as server, make_model(config(server)) as client:
        response = await client.complete(start(png(1280, 800)), tools=SCHEMAS)
    [call] = response.tool_calls
    assert call.name == "computer" and call.parse_error is not None
    assert "outside the screen (1280x800" in call.parse_error


async def test_response_format_is_a_forced_tool_and_history_keeps_its_tools() -> None:
    verdict = {"complete": True, "success": True, "summary": "saved"}
    first = ClaudeReply(tool_uses=[computer("screenshot")])
    check = ClaudeReply(tool_uses=[use("respond", **verdict)])
    shot = png(640, 400)
    async with ScriptedClaudeServer([first, check]) as server, make_model(config(server)) as c:
        messages = start(shot)
        response = await c.complete(messages, tools=SCHEMAS)
        history = after(messages, response, [{"note": "fresh"}], shot)
        history.append({"role": "user", "content": "Is the task complete?"})
        answer = await c.complete(history, response_format=COMPLETION_SCHEMA)
    assert json.loads(answer.text or "") == verdict and answer.tool_calls == []
    body = server.message_requests[1].body
    assert body["tool_choice"] == {"type": "tool", "name": "respond"}
    names = [t["name"] for t in body["tools"]]
    assert "computer" in names and names[-1] == "respond"  # the history's tool_use needs it
    respond = body["tools"][-1]
    assert respond["input_schema"]["required"] == ["complete", "success", "summary"]


async def test_usage_counts_cache_reads_and_prices_them() -> None:
    reply = ClaudeReply(
        text="ok",
        input_tokens=1000,
        output_tokens=100,
        cache_read_input_tokens=9000,
        cache_creation_input_tokens=0,
        model="claude-sonnet-4-5-20250929",
    )
    async with (
        ScriptedClaudeServer([reply]) as server,
        make_model(config(server, "claude-sonnet-4-5")) as client,
    ):
        response = await client.complete(start(png(64, 64)), tools=SCHEMAS)
    usage = response.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.cached_prompt_tokens) == (10_000, 9000)
    assert usage.completion_tokens == 100 and usage.total_tokens == 10_100
    # $3/M input, $0.30/M cache reads, $15/M output
    assert response.cost_usd == pytest.approx((1000 * 3 + 9000 * 0.30 + 100 * 15) / 1e6)
    assert response.finish_reason == "end_turn"


async def test_429_then_success_is_retried() -> None:
    steps = [Failure(status=429, message="slow down", retry_after="0"), ClaudeReply(text="hi")]
    async with ScriptedClaudeServer(steps) as server, make_model(config(server)) as client:
        response = await client.complete(start(png(64, 64)), tools=SCHEMAS)
    assert response.text == "hi" and response.attempts == 2
    assert len(server.message_requests) == 2


async def test_overloaded_past_the_retries_is_unavailable() -> None:
    async with (
        ScriptedClaudeServer(default=Failure(status=529, message="overloaded")) as server,
        make_model(config(server)) as client,
    ):
        with pytest.raises(LLMUnavailable, match="max_retries") as raised:
            await client.complete(start(png(64, 64)), tools=SCHEMAS)
    assert raised.value.last_status == 529 and len(server.message_requests) == 3


async def test_a_400_is_rejected_at_once_with_the_servers_words() -> None:
    steps = [Failure(status=400, message="messages.1: tool_use ids without tool_result")]
    async with ScriptedClaudeServer(steps) as server, make_model(config(server)) as client:
        with pytest.raises(LLMRejected, match="tool_use ids without tool_result") as raised:
            await client.complete(start(png(64, 64)), tools=SCHEMAS)
    assert raised.value.status == 400 and len(server.message_requests) == 1
