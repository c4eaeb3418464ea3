"""The task page in Chromium: a task paused at its limit resumes with more; an ended one retries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.server.browser.conftest import Hivecell, save_screenshot

pytestmark = pytest.mark.slow


@pytest.fixture
def limits_script(script_file: Path) -> Path:
    verdict = {"complete": True, "success": True, "summary": "waited"}
    wait = {"kind": "reply", "tool_calls": [{"name": "wait", "arguments": {"seconds": 0}}]}
    script = {"steps": [wait], "default": {"kind": "reply", "text": json.dumps(verdict)}}
    script_file.write_text(json.dumps(script))
    return script_file


def test_resume_with_more_then_retry(limits_script: Path, hivecell: Hivecell, page: Page) -> None:
    task = hivecell.api("POST", "/tasks", {"description": "wait once", "max_steps": 1})
    page.goto(hivecell.url)
    card = page.locator(f".task-card[data-task='{task['id']}']")
    expect(card.locator(".pause-reason")).to_contain_text("limit", timeout=60_000)
    expect(card.get_by_role("button", name="Resume with more")).to_be_visible()

    page.goto(f"{hivecell.base}/tasks/{task['id']}")
    note = page.locator("#task-controls .pause-reason")
    expect(note).to_contain_text("max_steps", timeout=60_000)
    assert note.get_attribute("data-limit") == "max_steps_reached"
    expect(page.locator("#task-controls input[name=steps]")).to_have_value("10")
    save_screenshot(page, "task-paused-at-limit")
    page.get_by_role("button", name="Resume with more").click()
    expect(page.locator("#task-status .badge")).to_have_text("completed", timeout=60_000)
    expect(page.locator("#retry")).to_have_count(0)  # completed: nothing to retry

    cancelled = hivecell.api("POST", "/tasks", {"description": "stopped early"})
    hivecell.api("POST", f"/tasks/{cancelled['id']}/cancel")
    page.goto(f"{hivecell.base}/tasks/{cancelled['id']}")
    expect(page.locator("#task-status .badge")).to_have_text("cancelled", timeout=60_000)
    page.locator("#retry").click()
    expect(page).not_to_have_url(f"{hivecell.base}/tasks/{cancelled['id']}")
    expect(page.locator("#task-facts")).to_contain_text(f"Retry of{cancelled['id']}")
    expect(page.locator("#task-status .badge")).to_have_text("completed", timeout=60_000)


def test_limits_final_checkbox_in_settings(hivecell: Hivecell, page: Page) -> None:
    page.goto(hivecell.url)
    page.goto(f"{hivecell.base}/settings")
    box = page.locator("#prefs input[name='task.limits_final']")
    expect(box).not_to_be_checked()
    box.check()
    page.get_by_role("button", name="Save defaults").click()
    deadline = time.monotonic() + 30
    while hivecell.api("GET", "/settings")["task"]["limits_final"] is not True:
        assert time.monotonic() < deadline, "the setting was never saved"
        time.sleep(0.1)
    page.reload()
    expect(page.locator("#prefs input[name='task.limits_final']")).to_be_checked()


def test_settings_cannot_be_edited_or_saved_before_they_have_loaded(
    hivecell: Hivecell, page: Page
) -> None:
    # A slow server: an edit made before the saved settings arrive was overwritten by them,
    # and a save then stored the page's blank fields over the real settings.
    hivecell.api("PUT", "/settings", {"pool": {"size": 0, "idle_timeout_s": 1200}})
    held: list[Route] = []

    def hold_the_load(route: Route) -> None:
        if route.request.method == "GET":
            held.append(route)
        else:
            route.continue_()

    page.goto(hivecell.url)
    page.route("**/api/v1/settings", hold_the_load)
    page.goto(f"{hivecell.base}/settings", wait_until="domcontentloaded")
    page.wait_for_function("() => document.readyState === 'complete'")
    for form in ("#prefs", "#approval-prefs"):
        expect(page.locator(form)).to_have_attribute("inert", "")
    save = page.get_by_role("button", name="Save defaults")
    with pytest.raises(PlaywrightTimeout):
        save.click(timeout=1000)  # inert: no click lands
    assert len(held) == 1
    held[0].continue_()
    for form in ("#prefs", "#approval-prefs"):
        expect(page.locator(form)).not_to_have_attribute("inert", "")
    expect(page.locator("#prefs input[name='pool.idle_min']")).to_have_value("20")
    save.click()
    expect(page.locator("#toasts")).to_contain_text("Defaults saved")
    assert hivecell.api("GET", "/settings")["pool"]["idle_timeout_s"] == 1200
