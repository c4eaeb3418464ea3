"""``ResponsesClient``: OpenAI's Responses API with the ``computer_use_preview`` tool.

The runner keeps speaking its chat format (agent/runner.py); this adapter translates on the
way out (responses_input.py: the history as input items, the GUI tools as the computer tool)
and on the way back (computer_call actions as hivecell tool calls, responses_actions.py), so
the completion check, ask-user tools, limits, traces, cost and controls work unchanged.

Retries, backoff and the typed errors are ``LLMClient``'s (the same policy and failure
classification); only the request and the reply differ. No streaming: a computer-use step is
one action, and the runner waits for the whole reply anyway.
"""

from __future__ import annotations

from typing import Any

import httpx2

from hivecell.agent.llm.assemble import Parts, parse_tool_call
from hivecell.agent.llm.base import timed
from hivecell.agent.llm.client import _SDK_ERRORS, SDK_OPTIONS, LLMClient
from hivecell.agent.llm.failures import Retryable, classify
from hivecell.agent.llm.response import LLMResponse, ToolCall, Usage
from hivecell.agent.llm.responses_actions import computer_tool_call
from hivecell.agent.llm.responses_input import build_input, build_tools

# Reasoning items come back encrypted so they can be resent with store=false (see
# responses_input.py for why the history, not the vendor, keeps the conversation).
INCLUDE = ["reasoning.encrypted_content"]
RESPONSES = "/responses"


class ResponsesClient(LLMClient):
    """Same constructor and ``complete`` as ``LLMClient``; ``config.base_url`` is the API
    root (``https://api.openai.com/v1``), ``config.model`` e.g. ``computer-use-preview``."""

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> LLMResponse:
        """One Responses API call with ``LLMClient``'s retries and typed errors; ``stream``
        is accepted for the protocol and ignored."""
        request = self.request(messages, tools=tools, response_format=response_format)
        (body, latency_ms), attempts = await self._retrying(lambda: timed(self._create(request)))
        parts, items = _parse(body)
        response = self._response(parts, latency_ms, attempts=attempts)
        return response.model_copy(update={"provider_items": items})

    def request(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ``responses.create`` arguments for one call (public for tests and tracing)."""
        built = build_input(messages)
        request: dict[str, Any] = {
            "model": self.config.model,
            "input": built.input,
            "store": False,
            "include": INCLUDE,
            # The computer tool requires it: old turns are cut when the context is full.
            "truncation": "auto",
        }
        if built.instructions is not None:
            request["instructions"] = built.instructions
        declared = build_tools(tools, messages, history_calls=built.has_computer_calls)
        if declared:
            request["tools"] = declared
        if response_format is not None:
            request["text"] = {"format": text_format(response_format)}
        return request

    async def _create(self, request: dict[str, Any]) -> dict[str, Any]:
        # Raw JSON, not the SDK's objects: an action type the SDK does not know must reach
        # the model as an error, not vanish in a lenient parse. Posted through the SDK's
        # client, not ``responses.create``: that walks the whole input (every screenshot)
        # against its typed dicts first, 120-480 ms per step in `hivecell bench agent`.
        try:
            raw = await self._sdk.post(
                RESPONSES, body=request, cast_to=httpx2.Response, options=SDK_OPTIONS
            )
            body = raw.json()
        except _SDK_ERRORS as exc:
            raise classify(exc, streaming=False, model=self.config.model) from exc
        except ValueError as exc:
            raise Retryable(f"bad response: not JSON ({exc})") from exc
        if not isinstance(body, dict) or not isinstance(body.get("output"), list):
            raise Retryable("bad response: no output list")
        return body


def text_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """Chat's ``response_format`` as the Responses API's ``text.format``."""
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"]
        return {"type": "json_schema", **schema}
    return dict(response_format)


def _parse(body: dict[str, Any]) -> tuple[Parts, list[dict[str, Any]]]:
    items = [item for item in body["output"] if isinstance(item, dict)]
    texts, summaries, calls = [], [], []
    for item in items:
        kind = item.get("type")
        if kind == "message":
            texts += [str(c.get("text", "")) for c in item.get("content") or [] if "text" in c]
        elif kind == "reasoning":
            summaries += [str(s.get("text", "")) for s in item.get("summary") or []]
        elif kind == "computer_call":
            calls.append(computer_tool_call(item))
        elif kind == "function_call":
            calls.append(_function_call(item))
    parts = Parts(
        text="".join(texts) or None,
        reasoning="\n".join(summaries) or None,
        tool_calls=calls,
        usage=_usage(body.get("usage")),
        finish_reason=_finish_reason(body, calls),
        model=body.get("model"),
    )
    return parts, items


def _function_call(item: dict[str, Any]) -> ToolCall:
    call_id = str(item.get("call_id") or item.get("id") or "")
    return parse_tool_call(call_id, str(item.get("name", "")), str(item.get("arguments") or ""))


def _usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    cached = (raw.get("input_tokens_details") or {}).get("cached_tokens") or 0
    prompt, completion = int(raw.get("input_tokens") or 0), int(raw.get("output_tokens") or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
        cached_prompt_tokens=int(cached),
    )


def _finish_reason(body: dict[str, Any], calls: list[ToolCall]) -> str | None:
    if body.get("status") == "incomplete":
        reason = (body.get("incomplete_details") or {}).get("reason")
        return "length" if reason == "max_output_tokens" else str(reason or "incomplete")
    return "tool_calls" if calls else "stop"
