"""The warm pool and capacity in the dashboard: Environments shows the warm sandboxes and
the caps, Settings changes the pool's size, and the new-task form runs a task in a
sandbox a person chose."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.browser.conftest import Hivecell, running_hivecell, save_screenshot
from tests.server.browser.test_dashboard import wait_for_status, write_script

pytestmark = pytest.mark.slow
BOOT_WAIT_MS = 60_000  # a warm sandbox boots in the background; a loaded machine is slow


@pytest.fixture
def hivecell(short_home: Path, script_file: Path) -> Iterator[Hivecell]:
    """As the shared fixture, with the product's default warm pool (one sandbox)."""
    write_script(script_file, [{"kind": "reply", "text": "Done."}])
    with running_hivecell(short_home, script_file, pool_size=1) as running:
        yield running


def test_environments_shows_the_pool_and_settings_resize_it(hivecell: Hivecell, page: Page) -> None:
    page.goto(hivecell.url)
    page.goto(f"{hivecell.base}/environments")
    expect(page.locator("#pool-warm")).to_have_text("1", timeout=BOOT_WAIT_MS)
    expect(page.locator("#cap-sandboxes")).to_have_text(re.compile(r"^1 / \d+$"))
    expect(page.locator("#cap-memory")).to_have_text(re.compile(r"GB / [\d.]+ GB$"))
    warm = page.locator("#sandboxes li").filter(has_text="warm")
    expect(warm).to_have_count(1)
    warm.locator("a").click()
    expect(page.locator("#sel-warm")).to_be_visible()
    expect(page.locator("#takeover")).to_be_hidden()  # nobody drives a warm desktop
    save_screenshot(page, "environments-pool")

    page.goto(f"{hivecell.base}/settings")
    size = page.locator("input[name='pool.size']")
    expect(size).to_have_value("1")
    expect(page.locator("input[name='capacity.max_sandboxes']")).to_have_attribute(
        "placeholder", re.compile(r"^auto: \d+$")
    )
    size.fill("2")
    page.locator("#prefs button[type=submit]").click()
    expect(page.locator(".toast").last).to_contain_text("Defaults saved")
    assert hivecell.api("GET", "/settings")["pool"]["size"] == 2

    page.goto(f"{hivecell.base}/environments")
    expect(page.locator("#pool-warm")).to_have_text("2", timeout=BOOT_WAIT_MS)


def test_run_a_task_in_a_chosen_sandbox(hivecell: Hivecell, page: Page) -> None:
    mine = hivecell.api("POST", "/sandboxes", {"name": "my-desk"})
    page.goto(hivecell.url)
    page.locator("details summary").first.click()
    choice = page.locator("#sandbox-choice")
    expect(choice.locator("option", has_text="my-desk")).to_have_count(1)
    expect(choice.locator("option", has_text="pool-")).to_have_count(0)  # warm ones: never
    choice.select_option(mine["id"])
    page.locator("textarea[name=description]").fill("say done")
    page.locator("#run").click()
    expect(page.locator(".toast").last).to_contain_text("queued")
    task = hivecell.api("GET", "/tasks")["items"][0]
    wait_for_status(hivecell, task["id"], "completed")
    assert hivecell.api("GET", f"/tasks/{task['id']}")["sandbox_id"] == mine["id"]
    assert hivecell.api("GET", f"/sandboxes/{mine['id']}")["status"] == "running"  # it stays
