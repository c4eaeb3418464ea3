"""The script a ``ScriptedLLMServer`` plays, and how its steps look on the OpenAI wire.

A step is a reply (text, reasoning, tool calls, usage), an ``echo`` of the last user text, an
HTTP failure, or a dropped connection. Python scripts may also hold callables
``(request_json) -> step`` for replies that depend on the request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

_PIECE = 8  # characters per streamed delta: small, so clients must really assemble


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    # A string is sent verbatim, which is how a script sends malformed JSON on purpose.
    arguments: str | dict[str, Any] = Field(default_factory=dict)
    id: str | None = None

    def raw_arguments(self) -> str:
        return self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)


class Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["reply"] = "reply"
    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[ScriptedToolCall] = Field(default_factory=list)
    prompt_tokens: int = 10
    completion_tokens: int = 5
    cached_tokens: int = 0
    finish_reason: str | None = None
    model: str | None = None
    delay_s: float = Field(0.0, ge=0)


class Echo(BaseModel):
    """Reply with the text of the last user message, after ``prefix``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["echo"] = "echo"
    prefix: str = ""


class Failure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["failure"] = "failure"
    status: int = Field(ge=400, le=599)
    message: str = "scripted failure"
    retry_after: str | None = None
    body: dict[str, Any] | str | None = Field(None, description="replaces the OpenAI error body")
    delay_s: float = Field(0.0, ge=0)


class Disconnect(BaseModel):
    """Close the connection without answering (a connection error for the client)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["disconnect"] = "disconnect"


Step = Annotated[Reply | Echo | Failure | Disconnect, Field(discriminator="kind")]
Reactive = Callable[[dict[str, Any]], Reply | Echo | Failure | Disconnect]
ScriptItem = Reply | Echo | Failure | Disconnect | Reactive


class ScriptFile(BaseModel):
    """The JSON file of ``python -m hivecell.agent.llm.scripted --script FILE``."""

    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(default_factory=list)
    default: Step | None = Field(None, description="played whenever the steps have run out")
    models: list[str] = Field(default_factory=lambda: ["scripted-model"])


def load_script(path: Path) -> ScriptFile:
    """Read a script file: ``{"steps": [...], "default": ..., "models": [...]}`` or a list."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        data = {"steps": data}
    return ScriptFile.model_validate(data)


STEP_ADAPTER: TypeAdapter[Reply | Echo | Failure | Disconnect] = TypeAdapter(Step)


def echo_reply(step: Echo, request: dict[str, Any]) -> Reply:
    return Reply(text=step.prefix + last_user_text(request))


def last_user_text(request: dict[str, Any]) -> str:
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


# --- the wire -----------------------------------------------------------------------------
def error_body(failure: Failure) -> bytes:
    if isinstance(failure.body, str):
        return failure.body.encode()
    body = failure.body or {
        "error": {"message": failure.message, "type": "scripted_error", "code": failure.status}
    }
    return json.dumps(body).encode()


def completion(reply: Reply, *, model: str, seq: int) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.reasoning is not None:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [_tool_call(c, seq, i) for i, c in enumerate(reply.tool_calls)]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish(reply)}
    return {**_envelope(model, seq, "chat.completion"), "choices": [choice], "usage": usage(reply)}


def chunks(reply: Reply, *, model: str, seq: int, include_usage: bool) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a stream, in the order OpenAI sends them."""
    envelope = _envelope(model, seq, "chat.completion.chunk")
    if include_usage:
        envelope["usage"] = None
    for delta, finish in _deltas(reply, seq):
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        yield {**envelope, "choices": [choice]}
    if include_usage:
        yield {**envelope, "choices": [], "usage": usage(reply)}


def _deltas(reply: Reply, seq: int) -> Iterator[tuple[dict[str, Any], str | None]]:
    yield {"role": "assistant", "content": ""}, None
    for piece in _pieces(reply.reasoning):
        yield {"reasoning_content": piece}, None
    for piece in _pieces(reply.text):
        yield {"content": piece}, None
    for index, call in enumerate(reply.tool_calls):
        head = _tool_call(call, seq, index)
        head["function"]["arguments"] = ""
        yield {"tool_calls": [{"index": index, **head}]}, None
        for piece in _pieces(call.raw_arguments()):
            yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None
    yield {}, _finish(reply)


def _pieces(text: str | None) -> Iterator[str]:
    for start in range(0, len(text or ""), _PIECE):
        yield (text or "")[start : start + _PIECE]


def _tool_call(call: ScriptedToolCall, seq: int, index: int) -> dict[str, Any]:
    return {
        "id": call.id or f"call_{seq}_{index}",
        "type": "function",
        "function": {"name": call.name, "arguments": call.raw_arguments()},
    }


def _finish(reply: Reply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


def _envelope(model: str, seq: int, kind: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-scripted-{seq}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }


def usage(reply: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens},
    }
