"""The dashboard while a task's sandbox does not answer: the card and the task page say so,
and the task resumes by itself once the guest agent is back."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from hivecell.sandbox.local.layout import Layout
from tests.agent.test_guest_faults import MARKER, SLOW_ACTION, guest_agent
from tests.server.browser.conftest import Hivecell, save_screenshot

pytestmark = pytest.mark.slow
UNREACHABLE = "Sandbox unreachable, reconnecting"


@pytest.fixture
def fault_script(script_file: Path) -> Path:
    verdict = {"complete": True, "success": True, "summary": "back"}
    shell = {"name": "run_shell", "arguments": {"command": SLOW_ACTION}}
    script = {
        "steps": [{"kind": "reply", "tool_calls": [shell]}],
        "default": {"kind": "reply", "text": json.dumps(verdict)},
    }
    script_file.write_text(json.dumps(script))
    return script_file


def _under_way(hivecell: Hivecell, task_id: str) -> str:
    """The task's sandbox once its first action runs (state polled: a file in the box)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sandbox_id = hivecell.api("GET", f"/tasks/{task_id}")["sandbox_id"]
        shared = Layout.of(hivecell.home, sandbox_id).shared if sandbox_id else None
        if shared is not None and (shared / MARKER.removeprefix("/shared/")).exists():
            return str(sandbox_id)
        time.sleep(0.05)
    raise AssertionError("the task's first action never started")


def test_a_silent_sandbox_shows_on_the_card_and_the_task_page(
    fault_script: Path, hivecell: Hivecell, page: Page
) -> None:
    task = hivecell.api("POST", "/tasks", {"description": "outlive a stopped guest"})
    page.goto(hivecell.url)
    agent = guest_agent(_under_way(hivecell, task["id"]))
    os.kill(agent, signal.SIGSTOP)
    try:
        card = page.locator(f".task-card[data-task='{task['id']}']")
        expect(card.locator(".pause-reason")).to_contain_text(UNREACHABLE, timeout=60_000)
        assert card.locator(".pause-reason").get_attribute("data-fault") == "guest_unreachable"
        # Nothing to resume (it resumes by itself); a person may still pause it for good.
        expect(card.get_by_role("button", name="Resume", exact=True)).to_have_count(0)
        expect(card.get_by_role("button", name="Pause", exact=True)).to_be_visible()
        page.goto(f"{hivecell.base}/tasks/{task['id']}")
        note = page.locator("#task-controls .pause-reason")
        expect(note).to_contain_text(UNREACHABLE, timeout=60_000)
        expect(note).to_contain_text("missed 3 heartbeats")
        save_screenshot(page, "task-guest-unreachable")
    finally:
        os.kill(agent, signal.SIGCONT)
    expect(page.locator("#task-status .badge")).to_have_text("completed", timeout=60_000)
