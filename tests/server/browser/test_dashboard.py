"""The dashboard in Chromium against a real server, real sandboxes and a scripted model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.browser.conftest import Hivecell, save_screenshot

pytestmark = pytest.mark.slow


def write_script(path: Path, steps: list[dict[str, object]]) -> None:
    verdict = {"complete": True, "success": True, "summary": "wrote the answer"}
    path.write_text(
        json.dumps({"steps": steps, "default": {"kind": "reply", "text": json.dumps(verdict)}})
    )


def call(*calls: tuple[str, dict[str, object]], text: str | None = None) -> dict[str, object]:
    return {"kind": "reply", "text": text,
            "tool_calls": [{"name": n, "arguments": a} for n, a in calls]}  # fmt: skip


def wait_for_status(hc: Hivecell, task_id: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hc.api("GET", f"/tasks/{task_id}")["status"] == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} never reached {status}")


@pytest.fixture
def dispatch_script(script_file: Path) -> Path:
    write_script(script_file, [
        call(("run_shell", {"command": "xterm -geometry 80x20+40+40 -T shown &"}),
             ("wait", {"seconds": 1.5}), text="Opening a terminal <img src=x onerror=alert(1)>"),
        call(("ask_user_choice", {"question": "Which colour?", "options": ["red", "blue"]})),
        call(("write_file", {"path": "/shared/outbox/answer.txt", "content": "blue"})),
        {"kind": "reply", "text": "Done."},
    ])  # fmt: skip
    return script_file


def test_dispatch_watch_answer_and_replay(
    dispatch_script: Path, hivecell: Hivecell, page: Page
) -> None:
    page.goto(hivecell.url)  # the token link sets the cookie and drops the token from the URL
    expect(page).to_have_url(f"{hivecell.base}/")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#provider option")).to_have_count(1)

    page.fill("textarea[name=description]", "Pick a colour <script>alert(1)</script>")
    page.fill("#max-steps", "10")
    page.click("#run")
    card = page.locator(".task-card").first
    expect(card).to_be_visible()
    task_id = card.get_attribute("data-task")
    assert task_id
    # Untrusted text renders as text.
    expect(card.locator(".desc")).to_have_text("Pick a colour <script>alert(1)</script>")

    question = page.locator(".attention-item")
    expect(question).to_contain_text("Which colour?", timeout=60_000)
    expect(card.locator("img.thumb[src^='blob:']")).to_have_count(1, timeout=15_000)
    save_screenshot(page, "dashboard")
    question.get_by_role("button", name="blue").click()
    expect(question).to_have_count(0)

    row = page.locator(f"#history tr[data-task='{task_id}']")
    expect(row.locator(".badge")).to_have_text("completed", timeout=60_000)
    expect(page.locator(f".task-card[data-task='{task_id}']")).to_have_count(0)

    row.locator("a").click()
    expect(page.locator("#task-status .badge")).to_have_text("completed")
    expect(page.locator("#task-summary")).to_have_text("wrote the answer")
    expect(page.locator("#outputs a")).to_have_text("answer.txt")
    expect(page.locator(".step .reasoning").first).to_contain_text("<img src=x onerror=alert(1)>")
    scrubber = page.locator("#replay-scrubber")
    frames = int(scrubber.get_attribute("max") or 0) + 1
    assert frames >= 3, f"expected a screenshot per step, got {frames}"
    image = page.locator("#replay-image")
    scrubber.fill("0")
    first = image.get_attribute("src")
    expect(page.locator("#replay-caption")).to_contain_text(f"1 / {frames}")
    scrubber.fill(str(frames - 1))
    expect(page.locator("#replay-caption")).to_contain_text(f"{frames} / {frames}")
    assert image.get_attribute("src") != first
    # a locator assertion, not wait_for_function("..."): polling a string predicate evals it
    # in the page, which the dashboard's CSP (no unsafe-eval) refuses when the first check fails
    expect(image).to_have_js_property("complete", True)
    save_screenshot(page, "task-replay")

    page.click("a[data-nav=settings]")
    expect(page.locator("#providers tr")).to_have_count(1)
    expect(page.locator("#providers")).to_contain_text("…3456")  # the key stays masked
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator(".test-result")).to_contain_text("ok")
    save_screenshot(page, "settings")
