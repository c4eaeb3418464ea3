"""Budgets in Chromium: a cost budget on a model without a price is refused with how to set
one; a price saved in Settings lets it through; the card meters the spend live, pauses at the
budget and resumes with more dollars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.browser.conftest import Hivecell, save_screenshot

pytestmark = pytest.mark.slow


@pytest.fixture
def waits_script(script_file: Path) -> Path:
    # Each reply is 15 tokens: $0.015 at $1000 per 1M tokens.
    verdict = {"complete": True, "success": True, "summary": "waited"}
    wait = {"kind": "reply", "tool_calls": [{"name": "wait", "arguments": {"seconds": 0}}]}
    script = {"steps": [wait] * 3, "default": {"kind": "reply", "text": json.dumps(verdict)}}
    script_file.write_text(json.dumps(script))
    return script_file


def submit(page: Page, description: str, max_cost: str) -> None:
    page.fill("textarea[name=description]", description)
    page.fill("#max-cost", max_cost)
    page.click("#run")


def test_cost_budget_needs_a_price_then_meters_and_pauses(
    waits_script: Path, hivecell: Hivecell, page: Page
) -> None:
    page.goto(hivecell.url)
    expect(page.locator("#live")).to_have_text("live")
    submit(page, "wait with no price", "0.02")
    expect(page.locator("#toasts")).to_contain_text('[prices."scripted-model"]')
    assert hivecell.api("GET", "/tasks")["total"] == 0  # refused: nothing was created
    # Chromium logs the refused request itself; that one is expected, nothing else is.
    assert [e for e in hivecell.console_errors if "422" not in e] == []
    hivecell.console_errors.clear()
    expect(page.locator("textarea[name=description]")).to_have_value("wait with no price")

    page.click("a[data-nav=settings]")
    form = page.locator("#price-form")
    form.locator("input[name=model]").fill("scripted-model")
    form.locator("input[name=input]").fill("1000")
    form.locator("input[name=output]").fill("1000")
    form.get_by_role("button", name="Save price").click()
    expect(page.locator("#prices tr[data-model='scripted-model']")).to_contain_text("$1000")
    save_screenshot(page, "settings-prices")

    page.click("a[data-nav=dashboard]")
    submit(page, "wait a few times", "0.02")
    card = page.locator(".task-card").first
    expect(card.locator(".pause-reason")).to_contain_text("max_cost_usd", timeout=60_000)
    usd = card.locator(".spend.usd")
    expect(usd).to_contain_text("$0.03 of $0.02")
    expect(usd.locator("meter")).to_have_attribute("max", "0.02")
    expect(card.locator("input[name=usd]")).to_have_value("1")
    expect(card.locator("input[name=tokens]")).to_have_count(0)  # no token budget to raise
    save_screenshot(page, "card-at-budget")
    card.get_by_role("button", name="Resume with more").click()

    row = page.locator("#history tr").first
    expect(row.locator(".badge")).to_have_text("completed", timeout=60_000)
    row.locator("a").click()
    expect(page.locator("#task-facts .spend.usd")).to_contain_text("of $1.02")
