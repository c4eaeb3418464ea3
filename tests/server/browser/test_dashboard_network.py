"""The dashboard's network allowlist field and the task page's connection table, in Chromium."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.sandbox.host import host_ipv4_addresses
from tests.server.browser.conftest import Hivecell, save_screenshot
from tests.server.browser.test_dashboard import call, write_script

pytestmark = pytest.mark.slow

PROBE = "python3 -c \"import socket; socket.create_connection(('{0}', {1}), timeout=3)\""


@pytest.fixture
def target() -> Iterator[tuple[str, int]]:
    """A listener on this host, and the host address the box will try it on."""
    with socket.create_server(("0.0.0.0", 0)) as listener:
        yield host_ipv4_addresses()[0], listener.getsockname()[1]


@pytest.fixture
def probe_script(script_file: Path, target: tuple[str, int]) -> Path:
    # Written before the hivecell fixture starts the scripted model, which reads it once.
    write_script(script_file, [call(("run_shell", {"command": PROBE.format(*target)}))])
    return script_file


def test_an_allowlisted_task_shows_its_refused_connection(
    probe_script: Path, target: tuple[str, int], hivecell: Hivecell, page: Page
) -> None:
    address, port = target
    page.goto(hivecell.url)
    page.fill("textarea[name=description]", "Try the host")
    page.locator("details summary", has_text="Advanced").click()
    page.fill("#network-allow", "example.org, 203.0.113.0/24")
    page.click("#run")
    card = page.locator(".task-card").first
    expect(card).to_be_visible()
    task_id = card.get_attribute("data-task")
    row = page.locator(f"#history tr[data-task='{task_id}']")
    expect(row.locator(".badge")).to_have_text("completed", timeout=90_000)
    row.locator("a").click()
    caption = page.locator("#network-caption")
    expect(caption).to_contain_text("allowlist: example.org, 203.0.113.0/24")
    refused = page.locator("#network tr.v-denied")
    expect(refused).to_have_count(1, timeout=15_000)
    expect(refused).to_contain_text(address)
    expect(refused).to_contain_text(str(port))
    expect(refused).to_contain_text("an address of this host")
    page.locator("#network-card").scroll_into_view_if_needed()
    save_screenshot(page, "task-network")
