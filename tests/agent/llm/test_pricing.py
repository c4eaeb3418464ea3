"""Cost estimates from usage and a per-model price table."""

from __future__ import annotations

import pytest

from hivecell.agent.llm import ModelPrice, PriceTable, Usage, estimate_cost, require_price
from hivecell.errors import InvalidParams


def usage(prompt: int, completion: int, cached: int = 0) -> Usage:
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_prompt_tokens=cached,
    )


def test_known_model_cost_from_usage() -> None:
    # gpt-4o: $2.50 in, $10 out per 1M tokens
    assert estimate_cost("gpt-4o", usage(1000, 500)) == pytest.approx(0.0025 + 0.005)


def test_cached_prompt_tokens_use_the_cached_price() -> None:
    assert estimate_cost("gpt-4o", usage(1000, 0, cached=400)) == pytest.approx(
        (600 * 2.50 + 400 * 1.25) / 1e6
    )


def test_snapshots_and_vendor_prefixes_resolve_to_the_family() -> None:
    table = PriceTable()
    assert table.lookup("gpt-4o-2024-08-06") == table.lookup("gpt-4o")
    assert table.lookup("anthropic/claude-sonnet-4-20250514") == table.lookup("claude-sonnet-4")
    assert table.lookup("gpt-4.1-mini") != table.lookup("gpt-4.1")


def test_unknown_model_or_usage_costs_none() -> None:
    assert estimate_cost("gpt-4.1-mega", usage(10, 10)) is None
    assert estimate_cost("gpt-4o", None) is None


def test_overrides_replace_and_add_prices() -> None:
    prices = {
        "gpt-4o": ModelPrice(input=1.0, output=1.0),
        "local-7b": ModelPrice(input=0, output=0),
    }
    assert estimate_cost("gpt-4o", usage(1_000_000, 0), prices) == pytest.approx(1.0)
    assert estimate_cost("local-7b", usage(5000, 5000), prices) == 0.0


@pytest.mark.parametrize(
    "model", ["gpt-5", "openai/gpt-5-mini", "claude-sonnet-4-5-20250929", "claude-haiku-4-5"]
)
def test_current_models_have_list_prices(model: str) -> None:
    assert PriceTable().lookup(model) is not None


def test_a_cost_budget_on_an_unpriced_model_names_the_fix() -> None:
    with pytest.raises(InvalidParams) as refused:
        require_price("my-local-vlm", {}, op="run")
    assert '[prices."my-local-vlm"]' in refused.value.message
    assert refused.value.context == {"model": "my-local-vlm", "field": "max_cost_usd"}
    require_price("my-local-vlm", {"my-local-vlm": ModelPrice(input=0, output=0)}, op="run")
    require_price("gpt-5-nano-2025-08-07", {}, op="run")  # a snapshot of a priced family
