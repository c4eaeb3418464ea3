"""``LLMClient``: one OpenAI-compatible endpoint, with our own retries and typed errors.

The SDK's retries are off (``max_retries=0``) so that one policy decides: full-jitter
exponential backoff on 429, 5xx, connection errors and timeouts, a server's ``Retry-After``
honored up to a cap, then ``LLMUnavailable``. Other 4xx raise ``LLMRejected`` at once.

A client may serve many tasks at once. Its only mutable state is whether the server streams;
separate clients share nothing (each has its own connection pool).
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable
from types import TracebackType
from typing import Any

import anyio
import httpx2
import openai
from openai._types import RequestOptions
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from hivecell.agent.llm.assemble import Parts, StreamAssembler, from_completion
from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.errors import LLMUnavailable
from hivecell.agent.llm.failures import Retryable, StreamRefused, classify
from hivecell.agent.llm.pricing import PriceTable
from hivecell.agent.llm.response import LLMResponse
from hivecell.agent.llm.retry import RetryPolicy

_SDK_ERRORS = (openai.APIError, httpx2.TransportError)
# The SDK's client does the HTTP, auth, errors and parsing; its ``chat.completions.create``
# is skipped because it first walks the whole request against its typed-dict declarations
# (key aliases we never use): 20-30 ms per call for the tool schemas and a screenshot, in
# every step's path, where posting the same body takes 3-4 ms.
CHAT_COMPLETIONS = "/chat/completions"
SDK_OPTIONS: RequestOptions = {"security": {"bearer_auth": True}}


class LLMClient:
    def __init__(
        self,
        config: ProviderConfig,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """``transport`` replaces the HTTP transport (a proxy, a Unix socket, test wiring);
        ``retry`` replaces the policy built from ``config``."""
        self.config = config
        self.streaming_supported = True
        self._retry = retry or RetryPolicy(
            max_retries=config.max_retries,
            base_s=config.backoff_base_s,
            max_s=config.backoff_max_s,
            retry_after_max_s=config.retry_after_max_s,
        )
        self._prices = PriceTable(config.prices)
        http = (
            httpx2.AsyncClient(transport=transport, follow_redirects=True)
            if transport
            # The SDK's own client settings, with one TLS context for every client: building
            # one loads the CA store (~50-200 ms), which a task's dispatch must not pay.
            else openai.DefaultAsyncHttpxClient(verify=_tls_context())
        )
        self._sdk = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key.get_secret_value(),
            max_retries=0,
            timeout=config.timeout_s,
            http_client=http,
        )

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._sdk.close()

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
        failures = 0
        while True:
            try:
                parts, latency_ms = await self._attempt(request, stream)
            except Retryable as failure:
                failures += 1
                await self._wait_or_give_up(failure, failures)
                continue
            return self._response(parts, latency_ms, attempts=failures + 1)

    async def _wait_or_give_up(self, failure: Retryable, failures: int) -> None:
        if failures > self._retry.max_retries:
            raise LLMUnavailable(
                f"the model endpoint {self.config.base_url} failed {failures} times in a row "
                f"(last: {failure.reason}); check that it is up, or raise max_retries "
                f"(now {self._retry.max_retries}) in the provider table",
                consecutive_failures=failures,
                last_status=failure.status,
                context={"provider": self.config.name, "model": self.config.model},
            ) from failure
        await anyio.sleep(self._retry.delay(failures, failure.retry_after))

    async def _attempt(self, request: dict[str, Any], stream: bool) -> tuple[Parts, float]:
        if not (stream and self.streaming_supported):
            return await self._timed(self._whole(request))
        try:
            return await self._timed(self._streamed(request))
        except StreamRefused:
            parts = await self._timed(self._whole(request))
            # Only now is it known that the refusal was about streaming, not the request.
            self.streaming_supported = False
            return parts

    async def _timed(self, call: Awaitable[Parts]) -> tuple[Parts, float]:
        start = anyio.current_time()
        parts = await call
        return parts, (anyio.current_time() - start) * 1000

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
        cost = self._prices.estimate(model, parts.usage)
        if cost is None:  # servers often answer with a snapshot or alias name
            cost = self._prices.estimate(self.config.model, parts.usage)
        return LLMResponse(
            text=parts.text,
            reasoning=parts.reasoning,
            tool_calls=parts.tool_calls,
            usage=parts.usage,
            cost_usd=cost,
            latency_ms=latency_ms,
            finish_reason=parts.finish_reason,
            model=model,
            attempts=attempts,
        )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Made once per process, as the HTTP library would for each client; contexts are
    safe to share between clients and threads."""
    return httpx2.create_ssl_context()
