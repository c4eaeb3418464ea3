"""Take over a task's desktop through noVNC, type into it, hand back, then Stop all."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.browser.conftest import Hivecell, save_screenshot

pytestmark = pytest.mark.slow
TYPIST = "xterm -geometry 200x60+0+0 -T typist -e sh -c 'cat > /shared/workspace/typed.txt' &"


@pytest.fixture
def takeover_script(script_file: Path) -> Path:
    steps = [
        {"kind": "reply", "tool_calls": [
            {"name": "run_shell", "arguments": {"command": TYPIST}},
            {"name": "wait", "arguments": {"seconds": 1.5}}]},
        {"kind": "reply", "tool_calls": [
            {"name": "ask_user", "arguments": {"question": "Type the secret for me, please"}}]},
    ]  # fmt: skip
    script_file.write_text(json.dumps({"steps": steps}))
    return script_file


def read_typed(shared: Path, timeout: float = 20) -> str:
    path = shared / "workspace" / "typed.txt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.2)
    return path.read_text() if path.exists() else ""


def test_take_over_type_hand_back_and_stop_all(
    takeover_script: Path, hivecell: Hivecell, page: Page
) -> None:
    task = hivecell.api("POST", "/tasks", {"description": "needs a person"})
    page.goto(hivecell.url)
    question = page.locator(".attention-item")
    expect(question).to_contain_text("Type the secret", timeout=60_000)
    sandbox_id = hivecell.api("GET", f"/tasks/{task['id']}")["sandbox_id"]

    page.goto(f"{hivecell.base}/environments?sandbox={sandbox_id}")
    expect(page.locator("#vnc-state")).to_contain_text("watching", timeout=20_000)
    expect(page.locator("#screen canvas")).to_be_visible()
    page.click("#takeover")
    expect(page.locator("#vnc-state")).to_contain_text("you are in control", timeout=20_000)
    assert hivecell.api("GET", f"/tasks/{task['id']}")["taken_over"] is True
    page.locator("#screen canvas").click()  # the xterm covers the screen: this focuses it
    page.keyboard.type("typed through novnc")
    page.keyboard.press("Enter")
    shared = Path(hivecell.api("GET", f"/sandboxes/{sandbox_id}")["shared_dir"])
    assert read_typed(shared) == "typed through novnc\n"
    save_screenshot(page, "environments")

    page.click("#handback")
    expect(page.locator("#vnc-state")).to_contain_text("watching", timeout=20_000)
    assert hivecell.api("GET", f"/tasks/{task['id']}")["taken_over"] is False

    page.keyboard.press("Shift+Escape")
    expect(page.locator("#stop-dialog")).to_be_visible()
    page.click("#stop-confirm")
    expect(page.locator(".toast.ok")).to_contain_text("Stopped 1 task")
    deadline = time.monotonic() + 30
    while hivecell.api("GET", f"/tasks/{task['id']}")["status"] != "cancelled":
        assert time.monotonic() < deadline, "Stop all did not cancel the task"
        time.sleep(0.2)
