"""One factory for the model a run talks to: the provider's ``kind`` picks the adapter.

Every adapter speaks the runner's canonical format (OpenAI chat messages, hivecell's tool
list, ``LLMResponse``) and translates to its vendor's API inside, so the completion check,
ask-user tools, limits, traces, cost and controls work the same with each.
"""

from __future__ import annotations

import importlib
from types import TracebackType
from typing import Any, Protocol

import httpx2

from hivecell.agent.llm.config import ProviderConfig
from hivecell.agent.llm.response import LLMResponse
from hivecell.agent.llm.retry import RetryPolicy
from hivecell.errors import ConfigError


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
    """The adapter for ``config.kind``; raises ``ConfigError`` naming ``kind`` when the
    kind's adapter is not installed."""
    if config.kind == "anthropic":
        from hivecell.agent.llm.claude import AnthropicClient

        return AnthropicClient(config, transport=transport, retry=retry)
    if config.kind == "openai-responses":
        return _responses(config, transport, retry)
    from hivecell.agent.llm.client import LLMClient

    return LLMClient(config, transport=transport, retry=retry)


def _responses(
    config: ProviderConfig,
    transport: httpx2.AsyncBaseTransport | None,
    retry: RetryPolicy | None,
) -> Model:
    # Imported by name: the Responses adapter is its own module, loaded only when used.
    try:
        module = importlib.import_module("hivecell.agent.llm.responses")
    except ModuleNotFoundError as exc:
        if exc.name != "hivecell.agent.llm.responses":
            raise
        raise ConfigError(
            f"provider {config.name!r} has kind = 'openai-responses', whose adapter is not "
            "part of this installation; set kind to 'openai-chat' or 'anthropic' in its "
            "provider table",
            op="llm.config",
            context={"provider": config.name, "kind": config.kind},
        ) from exc
    model: Model = module.ResponsesClient(config, transport=transport, retry=retry)
    return model
