"""Turning the SDK's completion objects, whole or streamed, into ``LLMResponse`` parts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion_usage import CompletionUsage

from hivecell.agent.llm.failures import Retryable
from hivecell.agent.llm.response import ToolCall, Usage


@dataclass
class Parts:
    """Everything of a response that comes from the server."""

    text: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    model: str | None = None


def parse_tool_call(call_id: str, name: str, raw: str) -> ToolCall:
    """Never raises: bad JSON or a non-object is reported in ``parse_error`` for the model."""
    if not raw.strip():
        return ToolCall(id=call_id, name=name, arguments={}, raw_arguments=raw)  # no-arg tools
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        error = f"arguments are not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        return ToolCall(id=call_id, name=name, arguments=None, raw_arguments=raw, parse_error=error)
    if not isinstance(value, dict):
        error = f"arguments must be a JSON object, got {type(value).__name__}"
        return ToolCall(id=call_id, name=name, arguments=None, raw_arguments=raw, parse_error=error)
    return ToolCall(id=call_id, name=name, arguments=value, raw_arguments=raw)


def from_completion(completion: ChatCompletion) -> Parts:
    if not completion.choices:
        # Some proxies answer 200 with an error body when the upstream fails.
        raise Retryable("the response had no choices")
    choice = completion.choices[0]
    message = choice.message
    calls = [
        parse_tool_call(c.id or f"call_{i}", c.function.name, c.function.arguments or "")
        for i, c in enumerate(message.tool_calls or [])
        if c.type == "function"
    ]
    return Parts(
        text=message.content,
        reasoning=_reasoning(message.model_extra),
        tool_calls=calls,
        usage=to_usage(completion.usage),
        finish_reason=choice.finish_reason,
        model=completion.model,
    )


def to_usage(usage: CompletionUsage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cached_prompt_tokens=(details.cached_tokens or 0) if details else 0,
    )


def _reasoning(extra: dict[str, Any] | None) -> str | None:
    # DeepSeek, vLLM and Ollama call it reasoning_content; OpenRouter and newer vLLM, reasoning.
    for key in ("reasoning_content", "reasoning"):
        value = (extra or {}).get(key)
        if isinstance(value, str):
            return value
    return None


@dataclass
class _PendingCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamAssembler:
    """Accumulates ``chat.completion.chunk`` deltas; ``parts()`` once the stream has ended."""

    chunks: int = 0
    _text: list[str] = field(default_factory=list)
    _reasoning: list[str] = field(default_factory=list)
    _calls: dict[int, _PendingCall] = field(default_factory=dict)
    _result: Parts = field(default_factory=Parts)

    def feed(self, chunk: ChatCompletionChunk) -> None:
        self.chunks += 1
        self._result.model = chunk.model or self._result.model
        if chunk.usage is not None:
            self._result.usage = to_usage(chunk.usage)
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            self._feed_delta(choice.delta)
            self._result.finish_reason = choice.finish_reason or self._result.finish_reason

    def _feed_delta(self, delta: Any) -> None:
        if delta.content:
            self._text.append(delta.content)
        reasoning = _reasoning(delta.model_extra)
        if reasoning:
            self._reasoning.append(reasoning)
        for call in delta.tool_calls or []:
            pending = self._calls.setdefault(call.index, _PendingCall())
            # id and name come once, in the first delta of a call; arguments come in pieces.
            pending.id = pending.id or call.id or ""
            if call.function is not None:
                pending.name = pending.name or call.function.name or ""
                pending.arguments.append(call.function.arguments or "")

    def parts(self) -> Parts:
        result = self._result
        result.text = "".join(self._text) if self._text else None
        result.reasoning = "".join(self._reasoning) if self._reasoning else None
        result.tool_calls = [
            parse_tool_call(p.id or f"call_{i}", p.name, "".join(p.arguments))
            for i, p in sorted(self._calls.items())
        ]
        return result
