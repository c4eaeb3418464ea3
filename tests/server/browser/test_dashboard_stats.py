"""Live sandbox figures in the dashboard: a task card's CPU and memory, and the Environments
status bar, appear and change as ``sandbox.stats`` events arrive."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.browser.conftest import Hivecell, save_screenshot, wait_for_js

pytestmark = pytest.mark.slow
BURN = "timeout 600 sh -c 'while :; do :; done' >/dev/null 2>&1 &"
FIGURE_WAIT_MS = 30_000  # a round every 2 s; boot and a loaded machine take their share


@pytest.fixture
def burner_script(script_file: Path) -> Path:
    """Start a CPU burner in the box, then wait for a person (so the sandbox stays)."""
    steps = [
        {"kind": "reply", "tool_calls": [{"name": "run_shell", "arguments": {"command": BURN}}]},
        {"kind": "reply", "tool_calls": [
            {"name": "ask_user", "arguments": {"question": "Still burning?"}}]},
    ]  # fmt: skip
    script_file.write_text(json.dumps({"steps": steps}))
    return script_file


def _percent(text: str) -> float:
    match = re.search(r"([\d.]+) %", text)
    assert match, text
    return float(match.group(1))


def test_task_card_and_status_bar_show_live_figures(
    burner_script: Path, hivecell: Hivecell, page: Page
) -> None:
    task = hivecell.api("POST", "/tasks", {"description": "burn some CPU"})
    page.goto(hivecell.url)
    expect(page.locator(".attention-item")).to_contain_text("Still burning", timeout=60_000)
    figures = page.locator(f'.task-card[data-task="{task["id"]}"] .sb-stats')
    expect(figures).to_have_text(re.compile(r"CPU [\d.]+ % · [\d.]+ MB"), timeout=FIGURE_WAIT_MS)
    first = figures.inner_text()
    expect(figures).not_to_have_text(first, timeout=FIGURE_WAIT_MS)  # the next rounds update it
    save_screenshot(page, "dashboard-card-stats")

    sandbox_id = hivecell.api("GET", f"/tasks/{task['id']}")["sandbox_id"]
    page.goto(f"{hivecell.base}/environments?sandbox={sandbox_id}")
    bar = page.locator("#sb-stats")
    expect(bar.locator("[data-stat=rtt]")).to_have_text(
        re.compile(r"^[\d.]+ ms$"), timeout=FIGURE_WAIT_MS
    )
    expect(bar.locator("[data-stat=mem]")).to_have_text(re.compile(r"^[\d.]+ [MG]B$"))
    expect(bar.locator("[data-stat=disk]")).to_have_text(re.compile(r"^[\d.]+ [MG]B$"))
    expect(bar.locator("[data-stat=procs]")).to_have_text(re.compile(r"^\d+$"))
    cpu = bar.locator("[data-stat=cpu]")
    expect(cpu).to_have_text(re.compile(r"^[\d.]+ %$"))
    # The burner shows: the first sample after loading says 0 (one reading), later ones more.
    before = bar.inner_text()
    expect(bar).not_to_have_text(before, timeout=FIGURE_WAIT_MS)
    wait_for_js(
        page,
        "parseFloat(document.querySelector('#sb-stats [data-stat=cpu]').textContent) > 20",
        FIGURE_WAIT_MS,
    )
    assert _percent(cpu.inner_text()) > 20
    save_screenshot(page, "environments-stats")
    hivecell.api("POST", f"/tasks/{task['id']}/cancel")
