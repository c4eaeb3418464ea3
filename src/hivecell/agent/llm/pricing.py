"""Token prices per model, to turn usage into an estimated cost in USD.

The defaults are list prices (USD per 1M tokens) of a few common models; a provider table in
``config.toml`` overrides or adds models (``[providers.NAME.prices."MODEL"]`` or a top-level
``[prices."MODEL"]``). Unknown models cost ``None``, never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.llm.response import Usage
from hivecell.errors import InvalidParams


class ModelPrice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="USD per 1M prompt tokens")
    output: float = Field(ge=0, description="USD per 1M completion tokens")
    cached_input: float | None = Field(
        None, ge=0, description="USD per 1M cached prompt tokens (default: the input price)"
    )


DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input=2.50, output=10.00, cached_input=1.25),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00, cached_input=0.50),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60, cached_input=0.10),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40, cached_input=0.025),
    "o4-mini": ModelPrice(input=1.10, output=4.40, cached_input=0.275),
    "gpt-5": ModelPrice(input=1.25, output=10.00, cached_input=0.125),
    "gpt-5-mini": ModelPrice(input=0.25, output=2.00, cached_input=0.025),
    "gpt-5-nano": ModelPrice(input=0.05, output=0.40, cached_input=0.005),
    "claude-sonnet-4": ModelPrice(input=3.00, output=15.00, cached_input=0.30),
    "claude-sonnet-4-5": ModelPrice(input=3.00, output=15.00, cached_input=0.30),
    "claude-haiku-4-5": ModelPrice(input=1.00, output=5.00, cached_input=0.10),
    "claude-opus-4": ModelPrice(input=15.00, output=75.00, cached_input=1.50),
    "claude-opus-4-1": ModelPrice(input=15.00, output=75.00, cached_input=1.50),
}

# Snapshot names ("gpt-4o-2024-08-06", "claude-sonnet-4-20250514") cost what the family costs.
# Only dates are stripped: "gpt-4.1-mini" must never fall back to the "gpt-4.1" price.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


class PriceTable:
    """Defaults with overrides on top; lookups tolerate snapshot dates and ``vendor/`` prefixes."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices = {**DEFAULT_PRICES, **(overrides or {})}

    def lookup(self, model: str) -> ModelPrice | None:
        for name in _candidates(model):
            if name in self._prices:
                return self._prices[name]
        return None

    def estimate(self, model: str, usage: Usage | None) -> float | None:
        price = self.lookup(model)
        if price is None or usage is None:
            return None
        cached = min(usage.cached_prompt_tokens, usage.prompt_tokens)
        cached_rate = price.input if price.cached_input is None else price.cached_input
        total = (
            (usage.prompt_tokens - cached) * price.input
            + cached * cached_rate
            + usage.completion_tokens * price.output
        )
        return total / 1_000_000


def _candidates(model: str) -> list[str]:
    bare = model.rsplit("/", 1)[-1]
    names = [model, bare, _SNAPSHOT.sub("", model), _SNAPSHOT.sub("", bare)]
    return list(dict.fromkeys(names))


def require_price(model: str, prices: Mapping[str, ModelPrice] | None, *, op: str) -> None:
    """A cost budget needs a known price: without one every call would count as $0 and the
    budget would never fire. Raises ``InvalidParams`` saying how to set the price."""
    if PriceTable(prices).lookup(model) is not None:
        return
    raise InvalidParams(
        f"max_cost_usd needs the price of model {model!r}, which hivecell does not know: "
        f'add [prices."{model}"] with input = and output = (USD per 1M tokens) to '
        "config.toml, or set it in the dashboard's Settings > Model prices; "
        "or limit tokens with max_tokens instead",
        op=op,
        context={"model": model, "field": "max_cost_usd"},
    )


def estimate_cost(
    model: str, usage: Usage | None, prices: Mapping[str, ModelPrice] | None = None
) -> float | None:
    """Estimated USD for one call, or None when the model's price or the usage is unknown."""
    return PriceTable(prices).estimate(model, usage)
