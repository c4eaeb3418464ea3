"""``AnthropicClient``: Claude through the Messages API with its native computer-use tools.

It speaks the runner's canonical format (``ChatModel.complete``) and translates inside:
``claude_messages`` builds the request, ``claude_tools`` the tool list and the calls back.
Retries are ``RetryingClient``'s (base.py), as for ``LLMClient``: backoff on 429, 529/5xx,
connection errors and timeouts; other 4xx raise ``LLMRejected``.

``response_format`` (the runner's completion check, the crew planner) has no Messages API
counterpart on every model, so it becomes a forced tool whose input is the JSON reply.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import anyio
import httpx2

from hivecell.agent.llm.base import RetryingClient, http_client, timed
from hivecell.agent.llm.claude_actions import to_call
from hivecell.agent.llm.claude_messages import CACHE, Request, convert
from hivecell.agent.llm.claude_tools import BASH, COMPUTER, EDITOR, native_tools, versions_for
from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.errors import LLMRejected
from hivecell.agent.llm.failures import Retryable
from hivecell.agent.llm.response import LLMResponse, ToolCall, Usage
from hivecell.agent.llm.retry import RetryPolicy, is_retryable_status, parse_retry_after

MAX_TOKENS = 4096  # per reply: a step's reasoning and tool calls fit with room to spare
ANSWER_TOOL = "respond"
_SDK_ERRORS = (anthropic.APIError, httpx2.TransportError)
_KEY = "api_key/api_key_env in the provider table (ANTHROPIC_API_KEY by default)"
_HINTS = {
    401: f"check the API key: {_KEY}",
    403: f"the API key may not use this model: check the key ({_KEY}) and model",
    404: "check model and base_url in the provider table (base_url without /v1)",
    413: "the request is too large: lower keep_screenshots or screenshot_max_width",
}
_DEFAULT_HINT = "check model in the provider table and that it supports computer use"


class AnthropicClient(RetryingClient):
    ENDPOINT = "the Anthropic endpoint"
    _sdk: anthropic.AsyncAnthropic

    def __init__(
        self,
        config: ProviderConfig,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(config, retry=retry)
        self.versions = versions_for(config.model)
        self._sdk = anthropic.AsyncAnthropic(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value(),
            max_retries=0,
            timeout=config.timeout_s,
            http_client=http_client(transport, anthropic.DefaultAsyncHttpxClient),
        )

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        stream: bool = False,  # accepted for LLMClient's signature; replies come whole
    ) -> LLMResponse:
        """One Messages API call; same contract as ``LLMClient.complete``."""
        converted = await anyio.to_thread.run_sync(convert, messages)
        request = self._request(converted, tools or [], response_format)
        (message, latency_ms), attempts = await self._retrying(lambda: timed(self._create(request)))
        return self._response(message, converted, response_format, latency_ms, attempts)

    def _request(
        self,
        converted: Request,
        tools: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
    ) -> dict[str, Any]:
        offered = native_tools(tools or _tools_in(converted), self.versions, converted.display)
        request: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": MAX_TOKENS,
            "messages": converted.messages,
            "betas": [self.versions.beta],
        }
        if converted.system:
            request["system"] = converted.system
        if response_format is not None:
            offered.append(_answer_tool(response_format))
            request["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
        if offered:
            offered[-1] = {**offered[-1], "cache_control": CACHE}
            request["tools"] = offered
        return request

    async def _create(self, request: dict[str, Any]) -> Any:
        try:
            return await self._sdk.beta.messages.create(**request)
        except _SDK_ERRORS as exc:
            raise classify(exc, model=self.config.model) from exc

    def _response(
        self,
        message: Any,
        converted: Request,
        response_format: dict[str, Any] | None,
        latency_ms: float,
        attempts: int,
    ) -> LLMResponse:
        texts = [b.text for b in message.content if b.type == "text"]
        calls: list[ToolCall] = []
        for block in message.content:
            if block.type != "tool_use":
                continue
            if response_format is not None and block.name == ANSWER_TOOL:
                texts = [json.dumps(block.input)]  # the structured reply is the text
                continue
            calls.append(to_call(block.id, block.name, block.input, converted.display))
        usage = to_usage(message.usage)
        model = message.model or self.config.model
        return LLMResponse(
            text="\n".join(texts) if texts else None,
            tool_calls=calls,
            usage=usage,
            cost_usd=self._cost(model, usage),
            latency_ms=latency_ms,
            finish_reason=message.stop_reason,
            model=model,
            attempts=attempts,
        )


def to_usage(usage: Any) -> Usage:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; hivecell's
    prompt tokens are all of them, the reads being the cached part."""
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    prompt = usage.input_tokens + read + written
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=usage.output_tokens,
        total_tokens=prompt + usage.output_tokens,
        cached_prompt_tokens=read,
    )


def _answer_tool(response_format: dict[str, Any]) -> dict[str, Any]:
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema") or {"type": "object"}
    return {
        "name": ANSWER_TOOL,
        "description": "Give your answer as this tool's input.",
        "input_schema": schema,
    }


def _tools_in(converted: Request) -> list[dict[str, Any]]:
    """Tool definitions for a request made without tools (the completion check) whose
    history holds tool calls: Anthropic requires the tools of every tool_use in it."""
    names = {
        block["name"]
        for turn in converted.messages
        if turn["role"] == "assistant"
        for block in turn["content"]
        if block.get("type") == "tool_use"
    }
    # The hivecell tool that makes native_tools offer each native one.
    stand_ins = {COMPUTER: "mouse_click", BASH: "run_shell", EDITOR: "read_file"}
    wanted = {stand_ins.get(name, name) for name in names}
    return [
        {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
        for name in sorted(wanted)
    ]


def classify(exc: Exception, *, model: str) -> Exception:
    """The exception to raise in place of an SDK or transport error."""
    if isinstance(exc, anthropic.APIStatusError):
        status, message = exc.status_code, _server_message(exc)
        if is_retryable_status(status):  # 429, 529 overloaded, other 5xx, 408
            retry_after = parse_retry_after(exc.response.headers)
            return Retryable(f"HTTP {status}: {message}", status=status, retry_after=retry_after)
        hint = _HINTS.get(status, _DEFAULT_HINT)
        return LLMRejected(
            f"the Anthropic endpoint refused the request (HTTP {status}: {message}); {hint}",
            status=status,
            server_message=message,
            context={"model": model},
        )
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException):
        return Retryable("the request timed out (timeout_s in the provider table)")
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        return Retryable(f"connection failed: {type(exc.__cause__ or exc).__name__}")
    return Retryable(f"bad response: {exc}")


def _server_message(exc: anthropic.APIStatusError) -> str:
    """Anthropic's ``error.message``, else the body, shortened."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        text = error.get("message") if isinstance(error, dict) else None
        return str(text or body)[:500]
    return str(body or exc.message)[:500]
