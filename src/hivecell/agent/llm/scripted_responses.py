"""``ScriptedResponsesServer``: a real OpenAI Responses API server on loopback playing a script.

The Responses counterpart of ``ScriptedLLMServer`` (same HTTP/1.1 plumbing over h11): it
serves ``POST /v1/responses`` and records every request. Each request is checked the way the
real API checks the things a computer-use loop gets wrong: the computer tool's definition,
every call answered by an output with the same ``call_id`` (and no output without its call),
a screenshot as the image of each ``computer_call_output``, safety checks acknowledged only
when they were pending on that call, a reasoning item followed by the item it led to. A
request that breaks one is answered 400 with the reasons, which are also kept in
``problems`` for the test to assert on.

    async with ScriptedResponsesServer([Output([computer_call(...)])]) as server:
        client = ResponsesClient(ProviderConfig(base_url=server.base_url, ...))
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h11

from hivecell.agent.llm.script import Failure
from hivecell.agent.llm.scripted import RecordedRequest, ScriptedLLMServer, _Answer, _json_or_none

RESPONSES_PATH = "/v1/responses"
_ids = itertools.count(1)


@dataclass
class Output:
    """One scripted reply: these output items (``id`` filled in where missing)."""

    items: list[dict[str, Any]]
    usage: dict[str, Any] = field(
        default_factory=lambda: {"input_tokens": 100, "output_tokens": 10, "total_tokens": 110}
    )
    status: str = "completed"


Step = Output | Failure | Callable[[dict[str, Any]], "Output | Failure"]


# --- output items ---------------------------------------------------------------------------
def computer_call(
    action: dict[str, Any], *, call_id: str | None = None, checks: Iterable[dict[str, Any]] = ()
) -> dict[str, Any]:
    return {
        "type": "computer_call",
        "id": f"cu_{next(_ids)}",
        "call_id": call_id or f"call_{next(_ids)}",
        "action": action,
        "pending_safety_checks": list(checks),
        "status": "completed",
    }


def function_call(name: str, arguments: str, *, call_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{next(_ids)}",
        "call_id": call_id or f"call_{next(_ids)}",
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{next(_ids)}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def reasoning(summary: str) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": f"rs_{next(_ids)}",
        "summary": [{"type": "summary_text", "text": summary}],
        "encrypted_content": f"opaque-{next(_ids)}",
    }


# --- what the real API refuses ----------------------------------------------------------------
def check_request(body: Any) -> list[str]:
    """What is wrong with one request, as the API would refuse it; empty when fine."""
    if not isinstance(body, dict):
        return ["request body is not a JSON object"]
    problems = [f"{key} is missing" for key in ("model", "input") if key not in body]
    items = body.get("input")
    if not isinstance(items, list):
        return [*problems, "input must be a list of items"]
    problems += _check_tools(body, items)
    problems += _check_pairs(items)
    return problems


def _check_tools(body: dict[str, Any], items: list[Any]) -> list[str]:
    tools = body.get("tools") or []
    computer = [t for t in tools if t.get("type") == "computer_use_preview"]
    problems = []
    if any(isinstance(i, dict) and i.get("type") == "computer_call" for i in items):
        if not computer:
            problems.append("input has computer_call items but no computer_use_preview tool")
        if body.get("truncation") != "auto":
            problems.append("the computer tool requires truncation: auto")
    for tool in computer:
        for key in ("display_width", "display_height"):
            if not isinstance(tool.get(key), int) or tool[key] <= 0:
                problems.append(f"computer_use_preview.{key} must be a positive integer")
        if tool.get("environment") not in ("linux", "mac", "windows", "ubuntu", "browser"):
            problems.append("computer_use_preview.environment is not a known environment")
    for tool in tools:
        if tool.get("type") == "function" and not tool.get("name"):
            problems.append("a function tool has no name")
    return problems


def _check_pairs(items: list[Any]) -> list[str]:
    problems: list[str] = []
    calls: dict[str, dict[str, Any]] = {}
    answered: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append(f"input[{index}] is not an object")
            continue
        kind = item.get("type")
        if kind in ("computer_call", "function_call"):
            calls[str(item.get("call_id"))] = item
        elif kind == "reasoning":
            following = items[index + 1] if index + 1 < len(items) else None
            if not isinstance(following, dict) or following.get("type") in (None, "reasoning"):
                problems.append(
                    f"reasoning {item.get('id')} was provided without its following item"
                )
            if "encrypted_content" not in item:
                problems.append(
                    f"reasoning {item.get('id')} has no encrypted_content (store=false)"
                )
        elif kind in ("computer_call_output", "function_call_output"):
            problems += _check_output(item, calls)
            answered.add(str(item.get("call_id")))
    problems += [f"no output for call {cid}" for cid in calls if cid not in answered]
    return problems


def _check_reasoning(item: dict[str, Any], following: list[Any]) -> list[str]:
    problems = []
    if (
        not following
        or not isinstance(following[0], dict)
        or following[0].get("type")
        in (
            None,
            "reasoning",
        )
    ):
        problems.append(f"reasoning {item.get('id')} was provided without its following item")
    if "encrypted_content" not in item:
        problems.append(f"reasoning {item.get('id')} has no encrypted_content (store=false)")
    return problems


def _check_output(item: dict[str, Any], calls: dict[str, dict[str, Any]]) -> list[str]:
    call_id = str(item.get("call_id"))
    call = calls.get(call_id)
    want = item["type"].removesuffix("_output")
    if call is None or call.get("type") != want:
        return [f"{item['type']} {call_id} has no {want} before it"]
    if want == "function_call":
        return [] if isinstance(item.get("output"), str) else [f"output of {call_id} is not text"]
    output = item.get("output") or {}
    problems = []
    url = str(output.get("image_url", ""))
    if output.get("type") != "computer_screenshot" or not url.startswith("data:image/png;base64,"):
        problems.append(f"computer_call_output {call_id} carries no PNG screenshot")
    pending = {c["id"] for c in call.get("pending_safety_checks") or []}
    acked = {c.get("id") for c in item.get("acknowledged_safety_checks") or []}
    if acked - pending:
        problems.append(f"{call_id} acknowledges checks that were not pending: {acked - pending}")
    if pending - acked:
        problems.append(f"{call_id} has pending safety checks not acknowledged: {pending - acked}")
    return problems


# --- the server -------------------------------------------------------------------------------
class ScriptedResponsesServer(ScriptedLLMServer):
    """Plays ``steps`` in arrival order; a request the API would refuse gets a 400."""

    def __init__(self, steps: Iterable[Step] = (), *, default: Step | None = None) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._responses_steps: deque[Step] = deque(steps)
        self._responses_default = default

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The JSON bodies of every Responses request, in arrival order."""
        return [r.body for r in self.requests if r.path == RESPONSES_PATH]

    async def _route(self, request: h11.Request, raw: bytes, answer: _Answer) -> bool:
        method, path = request.method.decode(), request.target.decode().split("?")[0]
        body = _json_or_none(raw)
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.requests.append(RecordedRequest(method=method, path=path, headers=headers, body=body))
        if (method, path) != ("POST", RESPONSES_PATH):
            await answer.error(Failure(status=404, message=f"no route {method} {path}"))
            return True
        problems = check_request(body)
        if problems:
            self.problems += problems
            await answer.error(Failure(status=400, message="; ".join(problems)))
            return True
        step = self._next_output(body)
        if isinstance(step, Failure):
            await answer.error(step)
        else:
            await answer.json(200, _response(step, body))
        return True

    def _next_output(self, body: dict[str, Any]) -> Output | Failure:
        item = self._responses_steps.popleft() if self._responses_steps else self._responses_default
        if item is None:
            return Failure(status=500, message="script exhausted: add steps or a default")
        return item(body) if callable(item) else item


def _response(step: Output, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"resp_{next(_ids)}",
        "object": "response",
        "created_at": 0,
        "model": body.get("model"),
        "status": step.status,
        "output": step.items,
        "usage": step.usage,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": body.get("tools") or [],
    }
