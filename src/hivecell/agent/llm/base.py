"""What every model client shares, whatever the vendor's API: one retry policy, the typed
error when retries are spent, cost from the price table, and closing the vendor's SDK.

Each vendor SDK's own retries are off (``max_retries=0``) so that one policy decides: full
jitter exponential backoff on ``Retryable`` failures (429, 5xx, connection errors, timeouts;
the subclass classifies), a server's ``Retry-After`` honoured up to a cap, then
``LLMUnavailable``. Subclasses make the SDK client and one attempt.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import anyio
import httpx2

from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.errors import LLMUnavailable
from hivecell.agent.llm.failures import Retryable
from hivecell.agent.llm.pricing import PriceTable
from hivecell.agent.llm.response import Usage
from hivecell.agent.llm.retry import RetryPolicy

T = TypeVar("T")


class _Closable(Protocol):
    async def close(self) -> None: ...


class RetryingClient:
    ENDPOINT = "the model endpoint"  # how errors name the server
    _sdk: _Closable  # the vendor SDK's client, made by the subclass

    def __init__(self, config: ProviderConfig, *, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self._retry = retry or RetryPolicy(
            max_retries=config.max_retries,
            base_s=config.backoff_base_s,
            max_s=config.backoff_max_s,
            retry_after_max_s=config.retry_after_max_s,
        )
        self._prices = PriceTable(config.prices)

    async def __aenter__(self) -> Self:
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

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> tuple[T, int]:
        """``attempt()``'s result and how many attempts it took; ``LLMUnavailable`` once
        the policy's retries are spent. Only ``Retryable`` is retried."""
        failures = 0
        while True:
            try:
                return await attempt(), failures + 1
            except Retryable as failure:
                failures += 1
                await self._wait_or_give_up(failure, failures)

    async def _wait_or_give_up(self, failure: Retryable, failures: int) -> None:
        if failures > self._retry.max_retries:
            raise LLMUnavailable(
                f"{self.ENDPOINT} {self.config.base_url} failed {failures} times in a row "
                f"(last: {failure.reason}); check that it is up, or raise max_retries "
                f"(now {self._retry.max_retries}) in the provider table",
                consecutive_failures=failures,
                last_status=failure.status,
                context={"provider": self.config.name, "model": self.config.model},
            ) from failure
        await anyio.sleep(self._retry.delay(failures, failure.retry_after))

    def _cost(self, model: str, usage: Usage | None) -> float | None:
        cost = self._prices.estimate(model, usage)
        if cost is None:  # servers often answer with a snapshot or alias name
            cost = self._prices.estimate(self.config.model, usage)
        return cost


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    """``call``'s result and how long it took, in milliseconds."""
    start = anyio.current_time()
    result = await call
    return result, (anyio.current_time() - start) * 1000


def http_client(transport: httpx2.AsyncBaseTransport | None, default: Callable[..., Any]) -> Any:
    """The SDK's HTTP client: over ``transport`` when given (a proxy, a unix socket, test
    wiring), else the SDK's default one with the process's shared TLS context."""
    if transport is not None:
        return httpx2.AsyncClient(transport=transport, follow_redirects=True)
    # One TLS context for every client: building one loads the CA store (~50-200 ms), which
    # a task's dispatch must not pay.
    return default(verify=tls_context())


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Made once per process, as the HTTP library would for each client; contexts are
    safe to share between clients and threads."""
    return httpx2.create_ssl_context()
