"""The task page in Chromium: every intervention shows in the timeline with who did it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.browser.conftest import Hivecell, save_screenshot

pytestmark = pytest.mark.slow


@pytest.fixture
def waiting_script(script_file: Path) -> Path:
    wait = {
        "kind": "reply",
        "tool_calls": [{"name": "wait", "arguments": {"seconds": 0}}],
        "delay_s": 0.3,
    }
    script_file.write_text(json.dumps({"steps": [], "default": wait}))
    return script_file


def test_the_timeline_shows_who_intervened(
    waiting_script: Path, hivecell: Hivecell, page: Page
) -> None:
    task = hivecell.api("POST", "/tasks", {"description": "wait and wait"})
    base = f"/tasks/{task['id']}"
    page.goto(hivecell.url)  # the login link: the page acts with the cookie
    page.goto(f"{hivecell.base}{base}")
    status = page.locator("#task-status .badge")
    expect(status).to_have_text("running", timeout=60_000)
    page.locator("#task-controls").get_by_role("button", name="Pause").click()
    expect(status).to_have_text("paused", timeout=60_000)
    page.locator("#task-controls").get_by_role("button", name="Resume").click()
    expect(status).to_have_text("running", timeout=60_000)
    hivecell.api("POST", f"{base}/takeover")  # another client: the API with the token
    hivecell.api("POST", f"{base}/instruct", {"text": "look left"})
    hivecell.api("POST", f"{base}/handback")
    page.locator("#task-controls").get_by_role("button", name="Cancel").click()
    expect(status).to_have_text("cancelled", timeout=60_000)

    items = page.locator("#steps .step.k-intervention")
    expect(items).to_have_count(6, timeout=30_000)
    titles = [text.strip() for text in items.locator("strong").all_inner_texts()]
    assert titles == [
        "pause by dashboard (127.0.0.1)",
        "resume by dashboard (127.0.0.1)",
        "takeover by api (127.0.0.1)",
        "instruct by api (127.0.0.1)",
        "handback by api (127.0.0.1)",
        "cancel by dashboard (127.0.0.1)",
    ]
    expect(items.nth(3)).to_contain_text("look left")  # what: the arguments
    save_screenshot(page, "task-interventions")
