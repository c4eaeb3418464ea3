"""``ScriptedClaudeServer``: a real Anthropic Messages API server on loopback playing a script.

The Anthropic counterpart of ``ScriptedLLMServer`` (same HTTP machinery, same recording):
``POST /v1/messages`` answers with the next scripted ``ClaudeReply`` (text and ``tool_use``
blocks, usage with cache tokens) or ``Failure`` (an Anthropic-shaped error body), so tests
drive ``AnthropicClient`` through the real ``anthropic`` SDK over real HTTP. A step may be a
function of the request body, to check what was sent and answer accordingly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import h11
from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.llm.script import Disconnect, Failure
from hivecell.agent.llm.scripted import RecordedRequest, ScriptedLLMServer, _Answer, _json_or_none

MESSAGES_PATH = "/v1/messages"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class ToolUse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None  # default: toolu_<request>_<index>


class ClaudeReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    tool_uses: list[ToolUse] = Field(default_factory=list)
    input_tokens: int = 100
    output_tokens: int = 20
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    model: str | None = None


ClaudeStep = ClaudeReply | Failure | Disconnect
ClaudeItem = ClaudeStep | Callable[[dict[str, Any]], ClaudeStep]


def use(name: str, id: str | None = None, /, **input: Any) -> ToolUse:
    return ToolUse(name=name, input=input, id=id)


def computer(action: str, /, **input: Any) -> ToolUse:
    return ToolUse(name="computer", input={"action": action, **input})


class ScriptedClaudeServer(ScriptedLLMServer):
    """Plays ``steps`` in arrival order, then ``default`` (or a 500 naming the exhaustion)."""

    def __init__(
        self, steps: Iterable[ClaudeItem] = (), *, default: ClaudeItem | None = None
    ) -> None:
        super().__init__(models=("claude-scripted",))
        self._claude_steps = list(steps)
        self._claude_default = default

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"  # the SDK appends /v1/messages

    @property
    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == MESSAGES_PATH]

    async def _route(self, request: h11.Request, body: bytes, answer: _Answer) -> bool:
        method, path = request.method.decode(), request.target.decode().split("?")[0]
        parsed = _json_or_none(body)
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        recorded = RecordedRequest(
            method=method, path=path, headers=headers, body=parsed, received_at=time.perf_counter()
        )
        self.requests.append(recorded)
        if (method, path) != ("POST", MESSAGES_PATH):
            await answer.raw(404, _error(404, f"no route {method} {path}"), [])
            return True
        self._served += 1
        step = self._next(parsed)
        if isinstance(step, Disconnect):
            return False
        if isinstance(step, Failure):
            extra = [("retry-after", step.retry_after)] if step.retry_after is not None else []
            await answer.raw(step.status, _error(step.status, step.message), extra)
            return True
        await answer.json(200, self._message(step, parsed))
        return True

    def _next(self, request: Any) -> ClaudeStep:
        item = self._claude_steps.pop(0) if self._claude_steps else self._claude_default
        if item is None:
            return Failure(status=500, message=f"script exhausted at request #{self._served}")
        if not callable(item):
            return item
        try:
            return item(request)
        except Exception as exc:  # a failed check in a step: the test reads it in the error
            return Failure(status=500, message=f"reactive step raised {exc!r}")

    def _message(self, reply: ClaudeReply, request: Any) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.text is not None:
            content.append({"type": "text", "text": reply.text})
        for i, tool in enumerate(reply.tool_uses):
            tool_id = tool.id or f"toolu_{self._served:03d}_{i}"
            content.append(
                {"type": "tool_use", "id": tool_id, "name": tool.name, "input": tool.input}
            )
        model = reply.model or (request or {}).get("model") or "claude-scripted"
        return {
            "id": f"msg_{self._served:04d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "tool_use" if reply.tool_uses else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                "cache_read_input_tokens": reply.cache_read_input_tokens,
                "cache_creation_input_tokens": reply.cache_creation_input_tokens,
            },
        }


def _error(status: int, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "api_error")
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
