"""One factory for the model a run talks to: the provider's ``kind`` picks the adapter.

Every adapter speaks the runner's canonical format (OpenAI chat messages, hivecell's tool
list, ``LLMResponse``) and translates to its vendor's API inside, so the completion check,
ask-user tools, limits, traces, cost and controls work the same with each.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol

import httpx2

from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.response import LLMResponse
from hivecell.agent.llm.retry import RetryPolicy


class Model(Protocol):
    """What ``make_model`` returns: the runner's ``ChatModel``, closable, as a context."""

    config: ProviderConfig

    async def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> LLMResponse: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def make_model(
    config: ProviderConfig,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
    retry: RetryPolicy | None = None,
) -> Model:
    """The adapter for ``config.kind`` (each imported only when used)."""
    if config.kind == "anthropic":
        from hivecell.agent.llm.claude import AnthropicClient

        return AnthropicClient(config, transport=transport, retry=retry)
    if config.kind == "openai-responses":
        from hivecell.agent.llm.responses import ResponsesClient

        return ResponsesClient(config, transport=transport, retry=retry)
    from hivecell.agent.llm.client import LLMClient

    return LLMClient(config, transport=transport, retry=retry)
