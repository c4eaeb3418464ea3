"""LLMClient against a real HTTP server with the real openai SDK: nothing is mocked."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import anyio
import httpx2
import pytest
from PIL import Image

from hivecell.agent.llm import LLMRejected, LLMUnavailable, user_message
from hivecell.agent.llm.script import Disconnect, Failure, Reply, ScriptedToolCall, ScriptItem
from tests.agent.llm.support import scripted_client

pytestmark = pytest.mark.anyio

CLICK_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "click",
        "description": "Click at a point of the screen.",
        "parameters": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"],
        },
    },
}


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def hello() -> list[dict[str, Any]]:
    return [{"role": "user", "content": "hello"}]


async def test_text_and_image_prompt_reaches_the_server_as_a_data_url() -> None:
    png = png_bytes()
    async with scripted_client([Reply(text="a red square", prompt_tokens=90)]) as (server, client):
        response = await client.complete([user_message("What is on screen?", [png])])
    assert response.text == "a red square"
    assert response.usage is not None and response.usage.prompt_tokens == 90
    parts = server.chat_requests[0]["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "What is on screen?"}
    url = parts[1]["image_url"]["url"]
    assert parts[1]["type"] == "image_url" and url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png
    assert server.requests[0].headers["authorization"] == "Bearer test-key"


async def test_tool_definitions_are_sent_and_tool_calls_parsed() -> None:
    reply = Reply(
        text="Clicking the button.",
        tool_calls=[
            ScriptedToolCall(name="click", arguments={"x": 10, "y": 20}, id="call_a"),
            ScriptedToolCall(name="click", arguments={"x": 30, "y": 40}),
        ],
    )
    async with scripted_client([reply]) as (server, client):
        response = await client.complete(hello(), tools=[CLICK_TOOL])
    assert server.chat_requests[0]["tools"] == [CLICK_TOOL]
    assert [(c.id, c.name, c.arguments) for c in response.tool_calls] == [
        ("call_a", "click", {"x": 10, "y": 20}),
        ("call_1_1", "click", {"x": 30, "y": 40}),
    ]
    assert response.finish_reason == "tool_calls"
    assert all(c.parse_error is None for c in response.tool_calls)


async def test_429_with_retry_after_is_retried_after_the_wait() -> None:
    steps: list[ScriptItem] = [
        Failure(status=429, retry_after="0.3", message="slow down"),
        Reply(text="ok"),
    ]
    async with scripted_client(steps) as (server, client):
        start = anyio.current_time()
        response = await client.complete(hello())
        elapsed = anyio.current_time() - start
    assert response.text == "ok" and response.attempts == 2
    assert len(server.chat_requests) == 2
    assert 0.3 <= elapsed < 30  # backoff alone would be <= 10 ms: the header was honored


async def test_retry_after_is_capped() -> None:
    steps: list[ScriptItem] = [Failure(status=503, retry_after="3600"), Reply(text="ok")]
    async with scripted_client(steps, retry_after_max_s=0.05) as (_, client):
        with anyio.fail_after(2):
            response = await client.complete(hello())
    assert response.text == "ok"


async def test_persistent_500_raises_llm_unavailable_after_max_retries() -> None:
    retries = 3
    steps = [Failure(status=500, message="upstream exploded")] * (retries + 1)
    async with scripted_client(steps, max_retries=retries) as (server, client):
        with pytest.raises(LLMUnavailable) as caught:
            await client.complete(hello())
    error = caught.value
    assert error.consecutive_failures == retries + 1
    assert error.last_status == 500 and error.retryable and error.code == "llm_unavailable"
    assert "upstream exploded" in str(error) and "max_retries" in str(error)
    assert error.context["consecutive_failures"] == retries + 1
    assert len(server.chat_requests) == retries + 1


async def test_connection_drops_and_timeouts_are_retried() -> None:
    steps: list[ScriptItem] = [Disconnect(), Reply(text="late", delay_s=1.0), Reply(text="fine")]
    async with scripted_client(steps, timeout_s=0.3) as (_, client):
        response = await client.complete(hello())
    assert response.text == "fine" and response.attempts == 3


async def test_malformed_tool_arguments_are_reported_not_raised() -> None:
    reply = Reply(
        tool_calls=[
            ScriptedToolCall(name="click", arguments='{"x": 10, "y": '),
            ScriptedToolCall(name="click", arguments="[1, 2]"),
            ScriptedToolCall(name="screenshot", arguments=""),
        ]
    )
    async with scripted_client([reply]) as (_, client):
        response = await client.complete(hello(), tools=[CLICK_TOOL])
    broken, not_object, no_args = response.tool_calls
    assert broken.arguments is None and broken.raw_arguments == '{"x": 10, "y": '
    assert broken.parse_error is not None and "not valid JSON" in broken.parse_error
    assert not_object.arguments is None and "JSON object" in str(not_object.parse_error)
    assert no_args.arguments == {} and no_args.parse_error is None


async def test_streaming_assembles_text_reasoning_tool_calls_and_usage() -> None:
    reply = Reply(
        text="I will click the blue OK button now.",
        reasoning="The dialog wants confirmation.",
        tool_calls=[
            ScriptedToolCall(name="click", arguments={"x": 640, "y": 400}),
            ScriptedToolCall(name="type_text", arguments={"text": "hello, world"}),
        ],
        prompt_tokens=1234,
        completion_tokens=56,
    )
    async with scripted_client([reply]) as (server, client):
        response = await client.complete(hello(), tools=[CLICK_TOOL], stream=True)
    sent = server.chat_requests[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert response.text == reply.text and response.reasoning == reply.reasoning
    assert [(c.name, c.arguments) for c in response.tool_calls] == [
        ("click", {"x": 640, "y": 400}),
        ("type_text", {"text": "hello, world"}),
    ]
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (1234, 56)
    assert response.usage.total_tokens == 1290
    assert response.finish_reason == "tool_calls" and response.model == "scripted-model"


async def test_refused_streaming_falls_back_once_and_is_remembered() -> None:
    steps: list[ScriptItem] = [
        Failure(status=400, message="stream is not supported"),
        Reply(text="a"),
        Reply(text="b"),
    ]
    async with scripted_client(steps) as (server, client):
        first = await client.complete(hello(), stream=True)
        second = await client.complete(hello(), stream=True)
    assert (first.text, second.text) == ("a", "b")
    assert [r.get("stream", False) for r in server.chat_requests] == [True, False, False]
    assert client.streaming_supported is False


async def test_401_is_rejected_naming_the_api_key_setting() -> None:
    steps = [Failure(status=401, message="Incorrect API key provided")]
    async with scripted_client(steps) as (server, client):
        with pytest.raises(LLMRejected) as caught:
            await client.complete(hello())
    error = caught.value
    assert error.code == "llm_rejected" and not error.retryable and error.status == 401
    assert "Incorrect API key provided" in str(error)
    assert "--api-key" in str(error) and "OPENAI_API_KEY" in str(error)
    assert len(server.chat_requests) == 1  # never retried


async def test_404_hint_names_model_and_base_url() -> None:
    steps = [Failure(status=404, message="model 'gpt-5o' not found")]
    async with scripted_client(steps) as (_, client):
        with pytest.raises(LLMRejected) as caught:
            await client.complete(hello())
    assert "HIVECELL_MODEL" in str(caught.value) and "OPENAI_BASE_URL" in str(caught.value)


async def test_exhausted_quota_429_is_not_retried() -> None:
    body = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    async with scripted_client([Failure(status=429, body=body)]) as (server, client):
        with pytest.raises(LLMRejected, match="billing"):
            await client.complete(hello())
    assert len(server.chat_requests) == 1


async def test_cost_is_estimated_from_usage_and_configured_prices() -> None:
    # The server names a snapshot; the configured model's price applies.
    big = Reply(text="ok", prompt_tokens=1_000_000, completion_tokens=500_000, model="house-1-0601")
    prices = {"house-1": {"input": 2.0, "output": 10.0}}
    async with scripted_client([big], model="house-1", prices=prices) as (_, client):
        priced = await client.complete(hello())
    async with scripted_client([Reply(text="?")], model="mystery-9b") as (_, client):
        unpriced = await client.complete(hello())
    assert priced.cost_usd == pytest.approx(2.0 + 5.0) and priced.model == "house-1-0601"
    assert unpriced.model == "mystery-9b" and unpriced.cost_usd is None
    assert unpriced.usage is not None and priced.latency_ms > 0


async def test_response_format_is_sent() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "v", "schema": {"type": "object"}}}
    async with scripted_client([Reply(text="{}")]) as (server, client):
        await client.complete(hello(), response_format=schema)
    assert server.chat_requests[0]["response_format"] == schema


async def test_twenty_concurrent_calls_each_get_their_own_answer() -> None:
    def echo_marker(request: dict[str, Any]) -> Reply:
        marker = re.search(r"marker-\d+", request["messages"][-1]["content"])
        number = int(marker.group().split("-")[1]) if marker else 0
        # Later requests answer sooner, so replies overtake each other on the wire.
        return Reply(text=f"echo {marker.group() if marker else '?'}", delay_s=(20 - number) / 400)

    results: dict[int, str | None] = {}
    async with scripted_client(default=echo_marker) as (server, client):

        async def ask(n: int) -> None:
            message = {"role": "user", "content": f"repeat marker-{n}"}
            results[n] = (await client.complete([message], stream=n % 2 == 0)).text

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(ask, n)
    assert results == {n: f"echo marker-{n}" for n in range(20)}
    assert len(server.chat_requests) == 20


async def test_custom_httpx2_transport_is_used() -> None:
    transport = httpx2.AsyncHTTPTransport(retries=0)
    steps = [Reply(text="via transport")]
    async with scripted_client(steps, transport=transport) as (_, client):
        response = await client.complete(hello())
    assert response.text == "via transport"
