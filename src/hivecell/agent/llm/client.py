"""``LLMClient``: one OpenAI-compatible endpoint, with our own retries and typed errors.

Retries are ``RetryingClient``'s (base.py): backoff on 429, 5xx, connection errors and
timeouts, then ``LLMUnavailable``. Other 4xx raise ``LLMRejected`` at once.

A client may serve many tasks at once. Its only mutable state is whether the server streams;
separate clients share nothing (each has its own connection pool).
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
from openai._types import RequestOptions
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from hivecell.agent.llm.assemble import Parts, StreamAssembler, from_completion
from hivecell.agent.llm.base import RetryingClient, http_client, timed
from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.failures import StreamRefused, classify
from hivecell.agent.llm.response import LLMResponse
from hivecell.agent.llm.retry import RetryPolicy

_SDK_ERRORS = (openai.APIError, httpx2.TransportError)
# The SDK's client does the HTTP, auth, errors and parsing; its ``chat.completions.create``
# is skipped because it first walks the whole request against its typed-dict declarations
# (key aliases we never use): 20-30 ms per call for the tool schemas and a screenshot, in
# every step's path, where posting the same body takes 3-4 ms.
CHAT_COMPLETIONS = "/chat/completions"
SDK_OPTIONS: RequestOptions = {"security": {"bearer_auth": True}}


class LLMClient(RetryingClient):
    _sdk: openai.AsyncOpenAI

    def __init__(
        self,
        config: ProviderConfig,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """``transport`` replaces the HTTP transport (a proxy, a Unix socket, test wiring);
        ``retry`` replaces the policy built from ``config``."""
        super().__init__(config, retry=retry)
        self.streaming_supported = True
        self._sdk = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value(),
            max_retries=0,
            timeout=config.timeout_s,
            http_client=http_client(transport, openai.DefaultAsyncHttpxClient),
        )

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> LLMResponse:
        """One chat completion. Raises ``LLMUnavailable`` once retries are spent and
        ``LLMRejected`` when the server refuses the request; malformed tool-call arguments
        are reported per call, never raised."""
        request: dict[str, Any] = {"model": self.config.model, "messages": messages}
        if tools:
            request["tools"] = tools
        if response_format is not None:
            request["response_format"] = response_format
        (parts, latency_ms), attempts = await self._retrying(lambda: self._attempt(request, stream))
        return self._response(parts, latency_ms, attempts=attempts)

    async def _attempt(self, request: dict[str, Any], stream: bool) -> tuple[Parts, float]:
        if not (stream and self.streaming_supported):
            return await timed(self._whole(request))
        try:
            return await timed(self._streamed(request))
        except StreamRefused:
            parts = await timed(self._whole(request))
            # Only now is it known that the refusal was about streaming, not the request.
            self.streaming_supported = False
            return parts

    async def _whole(self, request: dict[str, Any]) -> Parts:
        try:
            completion = await self._sdk.post(
                CHAT_COMPLETIONS, body=request, cast_to=ChatCompletion, options=SDK_OPTIONS
            )
        except _SDK_ERRORS as exc:
            raise classify(exc, streaming=False, model=self.config.model) from exc
        return from_completion(completion)

    async def _streamed(self, request: dict[str, Any]) -> Parts:
        assembler = StreamAssembler()
        body = {**request, "stream": True, "stream_options": {"include_usage": True}}
        try:
            chunks = await self._sdk.post(
                CHAT_COMPLETIONS,
                body=body,
                cast_to=ChatCompletion,
                options=SDK_OPTIONS,
                stream=True,
                stream_cls=openai.AsyncStream[ChatCompletionChunk],
            )
            async with chunks:
                async for chunk in chunks:
                    assembler.feed(chunk)
        except _SDK_ERRORS as exc:
            raise classify(exc, streaming=True, model=self.config.model) from exc
        if assembler.chunks == 0:
            raise StreamRefused("the server answered a streaming request without any chunk")
        return assembler.parts()

    def _response(self, parts: Parts, latency_ms: float, *, attempts: int) -> LLMResponse:
        model = parts.model or self.config.model
        return LLMResponse(
            text=parts.text,
            reasoning=parts.reasoning,
            tool_calls=parts.tool_calls,
            usage=parts.usage,
            cost_usd=self._cost(model, parts.usage),
            latency_ms=latency_ms,
            finish_reason=parts.finish_reason,
            model=model,
            attempts=attempts,
        )
