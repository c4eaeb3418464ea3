"""The model client of the agent runtime: one OpenAI-compatible endpoint per ``LLMClient``.

``load_provider`` resolves settings at the edge, ``LLMClient.complete`` makes one call with
retries and typed errors, and ``ScriptedLLMServer`` (in ``hivecell.agent.llm.scripted``) is
the real-HTTP fake that tests and demos run it against.
"""

from typing import TYPE_CHECKING

from hivecell.agent.llm.config import DEFAULT_BASE_URL, ProviderConfig, load_provider
from hivecell.agent.llm.errors import LLMError, LLMRejected, LLMUnavailable
from hivecell.agent.llm.messages import image_part, user_message
from hivecell.agent.llm.pricing import (
    DEFAULT_PRICES,
    ModelPrice,
    PriceTable,
    estimate_cost,
    require_price,
)
from hivecell.agent.llm.response import LLMResponse, ToolCall, Usage
from hivecell.agent.llm.retry import RetryPolicy

if TYPE_CHECKING:
    from hivecell.agent.llm.adapters import Model, make_model
    from hivecell.agent.llm.client import LLMClient

# The vendors' SDKs (openai, anthropic: ~0.5 s of imports) load with the first use of what
# needs them, not with the package: the scripted model server and the settings code import
# this package and never call a model.
_LAZY = {
    "LLMClient": "hivecell.agent.llm.client",
    "Model": "hivecell.agent.llm.adapters",
    "make_model": "hivecell.agent.llm.adapters",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_PRICES",
    "LLMClient",
    "LLMError",
    "LLMRejected",
    "LLMResponse",
    "LLMUnavailable",
    "Model",
    "ModelPrice",
    "PriceTable",
    "ProviderConfig",
    "RetryPolicy",
    "ToolCall",
    "Usage",
    "estimate_cost",
    "image_part",
    "load_provider",
    "make_model",
    "require_price",
    "user_message",
]
