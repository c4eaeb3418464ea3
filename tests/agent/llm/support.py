"""Helpers for the model-layer tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from pydantic import SecretStr

from hivecell.agent.llm import LLMClient, ProviderConfig
from hivecell.agent.llm.script import ScriptItem
from hivecell.agent.llm.scripted import ScriptedLLMServer


def provider_for(server: ScriptedLLMServer | str, **overrides: Any) -> ProviderConfig:
    """Settings pointing at ``server`` (or a base URL), with backoff shrunk so retry tests
    stay fast."""
    values: dict[str, Any] = {
        "name": "scripted",
        "base_url": server if isinstance(server, str) else server.base_url,
        "api_key": SecretStr("test-key"),
        "model": "scripted-model",
        "max_retries": 3,
        "timeout_s": 5.0,
        "backoff_base_s": 0.001,
        "backoff_max_s": 0.01,
        "retry_after_max_s": 2.0,
    }
    return ProviderConfig.model_validate({**values, **overrides})


@asynccontextmanager
async def scripted_client(
    steps: Iterable[ScriptItem] = (),
    *,
    default: ScriptItem | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    **overrides: Any,
) -> AsyncIterator[tuple[ScriptedLLMServer, LLMClient]]:
    """A server playing ``steps`` and a client configured for it."""
    async with (
        ScriptedLLMServer(steps, default=default) as server,
        LLMClient(provider_for(server, **overrides), transport=transport) as client,
    ):
        yield server, client
