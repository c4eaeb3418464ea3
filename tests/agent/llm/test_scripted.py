"""The scripted server itself: the exact wire format, and running it as a separate process."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from hivecell.agent.llm import LLMClient, LLMResponse, LLMUnavailable
from hivecell.agent.llm.script import Echo, Reply, ScriptedToolCall
from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.llm.support import provider_for

pytestmark = pytest.mark.anyio


def sse_events(body: str) -> list[Any]:
    lines = [line for line in body.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line[len("data: ") :] for line in lines]


async def test_stream_is_openai_shaped_sse_with_a_final_usage_chunk() -> None:
    reply = Reply(text="Hello there, world", tool_calls=[ScriptedToolCall(name="f", arguments={})])
    request = {
        "model": "m",
        "messages": [],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with ScriptedLLMServer([reply]) as server, httpx2.AsyncClient() as http:
        response = await http.post(f"{server.base_url}/chat/completions", json=request)
    assert response.headers["content-type"] == "text/event-stream"
    *events, done = sse_events(response.text)
    assert done == "[DONE]"
    chunks = [json.loads(e) for e in events]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello there, world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 15
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_models_echo_and_exhaustion() -> None:
    async with ScriptedLLMServer([Echo(prefix="you said: ")], models=["a", "b"]) as server:
        async with httpx2.AsyncClient() as http:
            models = (await http.get(f"{server.base_url}/models")).json()
            missing = await http.get(f"{server.base_url}/nothing")
        async with LLMClient(provider_for(server, max_retries=0)) as client:
            echoed = await client.complete([{"role": "user", "content": "ping"}])
            with pytest.raises(LLMUnavailable, match="script exhausted"):
                await client.complete([{"role": "user", "content": "again"}])
    assert [m["id"] for m in models["data"]] == ["a", "b"]
    assert missing.status_code == 404
    assert echoed.text == "you said: ping"


async def test_runs_as_a_separate_process(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            {
                "steps": [
                    {"kind": "failure", "status": 503, "retry_after": "0"},
                    {"kind": "reply", "text": "from the process", "prompt_tokens": 7},
                ],
                "default": {"kind": "echo"},
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "hivecell.agent.llm.scripted",
        "--script",
        str(script),
        "--port",
        "0",
    ]
    async with await anyio.open_process(command) as process:
        try:
            first, echoed, recorded = await talk_to(process)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(5):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:  # a failed assertion must not leave it running
                process.kill()
    assert (first.text, first.attempts, echoed.text) == ("from the process", 2, "echo me")
    assert [r["body"]["messages"][0]["content"] for r in recorded] == ["hi", "hi", "echo me"]


async def talk_to(process: anyio.abc.Process) -> tuple[LLMResponse, LLMResponse, list[Any]]:
    assert process.stdout is not None
    with anyio.fail_after(90):
        line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 200)
    base_url = line.decode().strip()
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
    async with LLMClient(provider_for(base_url)) as client:
        first = await client.complete([{"role": "user", "content": "hi"}])
        echoed = await client.complete([{"role": "user", "content": "echo me"}])
    async with httpx2.AsyncClient() as http:
        recorded = (await http.get(base_url.removesuffix("/v1") + "/_scripted/requests")).json()
    return first, echoed, recorded
