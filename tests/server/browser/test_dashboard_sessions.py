"""The Sessions page: a real `hivecell up`, a real bash in a PTY behind its supervisor, and
xterm.js in Debian's Chromium over the attach WebSocket. Typing, a second viewer, resizing
(checked with `stty size` inside), 100 000 lines of scrollback, live status with a browser
notification, and a browser that sends garbage or has no token."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.server.browser.conftest import Hivecell, save_screenshot
from tests.sessions.helpers import make_repo, stop_all

pytestmark = pytest.mark.slow
ROWS = "#terminal .xterm-rows"
# Records every notification the page raises (the real one is made too).
RECORD_NOTIFICATIONS = """
window.__notes = [];
const Real = window.Notification;
window.Notification = new Proxy(Real, {
  construct(target, args) { window.__notes.push(args[0]); return new target(...args); },
});
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def sessions_home(hivecell: Hivecell) -> Iterator[Hivecell]:
    """No supervisor outlives the test (they are made to outlive the server)."""
    yield hivecell
    stop_all(hivecell.home)


def shell_session(hivecell: Hivecell, name: str, repo: Path) -> dict[str, Any]:
    body = {"name": name, "agent": "shell", "repo": str(repo), "isolation": "none"}
    made: dict[str, Any] = hivecell.api("POST", "/sessions", body)
    return made


def open_session(page: Page, hivecell: Hivecell, name: str) -> None:
    page.goto(hivecell.url)  # the token link sets the cookie
    page.goto(f"{hivecell.base}/sessions?name={name}")
    expect(page.locator("#term-state")).to_have_text("attached", timeout=20_000)


def type_line(page: Page, text: str) -> None:
    page.locator("#terminal .xterm-screen").click()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def test_create_attach_type_and_a_second_viewer_sees_it(
    sessions_home: Hivecell, page: Page, browser: Browser, repo: Path
) -> None:
    hivecell = sessions_home
    page.goto(hivecell.url)
    page.click("nav a[data-nav=sessions]")
    expect(page).to_have_url(re.compile(r"/sessions$"))
    page.fill("#s-name", "web1")
    page.fill("#s-agent", "shell")
    page.fill("#s-repo", str(repo))
    page.select_option("#s-isolation", "none")
    page.click("#create-session")
    expect(page.locator("#term-state")).to_have_text("attached", timeout=20_000)
    row = page.locator('tr[data-session="web1"]')
    expect(row).to_contain_text("shell")
    expect(row).to_contain_text("none")
    expect(row.locator(".badge")).to_have_text(re.compile("working|idle"))

    # A second viewer, in its own browser context (another person with the same link).
    other = browser.new_context(viewport={"width": 1000, "height": 800})
    second = other.new_page()
    second.on("pageerror", lambda exc: hivecell.console_errors.append(f"second: {exc}"))
    open_session(second, hivecell, "web1")

    type_line(page, "echo hi-$((6*7))")
    expect(page.locator(ROWS)).to_contain_text("hi-42", timeout=20_000)
    expect(second.locator(ROWS)).to_contain_text("hi-42", timeout=20_000)
    # ... and what the second one types reaches the first.
    type_line(second, "echo from-second-$((3+4))")
    expect(page.locator(ROWS)).to_contain_text("from-second-7", timeout=20_000)
    save_screenshot(page, "sessions-terminal")
    other.close()


def test_resizing_the_page_resizes_the_pty(sessions_home: Hivecell, page: Page, repo: Path) -> None:
    hivecell = sessions_home
    shell_session(hivecell, "rs1", repo)
    open_session(page, hivecell, "rs1")
    terminal = page.locator("#terminal")
    before = terminal.get_attribute("data-cols"), terminal.get_attribute("data-rows")
    page.set_viewport_size({"width": 700, "height": 600})
    expect(terminal).not_to_have_attribute("data-cols", before[0] or "", timeout=10_000)
    expect(terminal).not_to_have_attribute("data-rows", before[1] or "", timeout=10_000)
    cols, rows = settled_size(page, hivecell, "rs1")
    assert (cols, rows) != (int(before[0] or 0), int(before[1] or 0))
    type_line(page, "stty size")
    expect(page.locator(ROWS)).to_contain_text(f"{rows} {cols}", timeout=20_000)


def settled_size(page: Page, hivecell: Hivecell, name: str) -> tuple[int, int]:
    """The terminal's size once the page and the server agree on it twice in a row (a
    layout change can resize it more than once)."""
    terminal = page.locator("#terminal")
    last = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        shown = (
            int(terminal.get_attribute("data-cols") or 0),
            int(terminal.get_attribute("data-rows") or 0),
        )
        view = hivecell.api("GET", f"/sessions/{name}")
        agreed = shown if shown == (view["cols"], view["rows"]) else None
        if agreed is not None and agreed == last:
            return agreed
        last = agreed
        page.wait_for_timeout(100)  # polling the server: it has no event for a resize
    raise AssertionError(f"page and server never agreed on the size (last {last})")


def test_scrollback_keeps_100000_lines(sessions_home: Hivecell, page: Page, repo: Path) -> None:
    hivecell = sessions_home
    shell_session(hivecell, "sb1", repo)
    open_session(page, hivecell, "sb1")
    type_line(page, "seq 1 130000; echo seq-$((1+1))-done")
    expect(page.locator(ROWS)).to_contain_text("seq-2-done", timeout=60_000)
    buffer = page.evaluate(
        """() => {
          const b = document.querySelector('#terminal').xterm.buffer.active;
          return {length: b.length, rows: document.querySelector('#terminal').xterm.rows,
                  first: b.getLine(0).translateToString(true)};
        }"""
    )
    # Exactly the scrollback plus the screen is kept; the oldest lines fell off the top.
    assert buffer["length"] == 100_000 + buffer["rows"]
    assert buffer["first"].isdigit() and int(buffer["first"]) > 30_000 - buffer["rows"]


def test_waiting_shows_live_and_notifies(sessions_home: Hivecell, page: Page, repo: Path) -> None:
    hivecell = sessions_home
    page.add_init_script(RECORD_NOTIFICATIONS)
    shell_session(hivecell, "wt1", repo)
    open_session(page, hivecell, "wt1")
    expect(page.locator("#notify")).to_be_enabled()  # not asked yet
    # The person says yes when the browser asks (Playwright answers the prompt this way).
    page.context.grant_permissions(["notifications"], origin=hivecell.base)
    page.click("#notify")  # the gesture that may ask for permission
    expect(page.locator("#notify")).to_have_text("Notifying")
    row = page.locator('tr[data-session="wt1"]')
    # The typed line must not itself look like the question: only bash's prompt does.
    type_line(page, 'read -p "go on? ($(echo y)/n) " x')
    expect(row).to_have_attribute("data-status", "waiting", timeout=20_000)
    expect(page.locator("#term-status .badge")).to_have_text("waiting")
    page.wait_for_function("window.__notes.includes('wt1 is waiting for you')", timeout=10_000)
    type_line(page, "y")
    expect(row).to_have_attribute("data-status", re.compile("idle|working"), timeout=20_000)
    expect(row).to_have_attribute("data-status", "idle", timeout=20_000)
    assert page.evaluate("window.__notes.length") == 1


def test_a_malformed_frame_from_the_browser_closes_only_that_socket(
    sessions_home: Hivecell, page: Page, repo: Path
) -> None:
    hivecell = sessions_home
    shell_session(hivecell, "mf1", repo)
    open_session(page, hivecell, "mf1")
    code = page.evaluate(
        """() => new Promise((resolve) => {
          const ws = new WebSocket(`ws://${location.host}/api/v1/sessions/mf1/attach`);
          ws.binaryType = 'arraybuffer';
          // type 9 does not exist
          ws.onopen = () => ws.send(new Uint8Array([9, 0, 0, 0, 0, 0, 1, 120]));
          ws.onclose = (event) => resolve(event.code);
        })"""
    )
    assert code == 1003
    # The page's own terminal and the session carry on.
    type_line(page, "echo still-$((2*21))")
    expect(page.locator(ROWS)).to_contain_text("still-42", timeout=20_000)
    assert hivecell.api("GET", "/sessions/mf1")["status"] != "exited"


def test_without_the_cookie_neither_page_nor_terminal_opens(
    sessions_home: Hivecell, browser: Browser, repo: Path
) -> None:
    hivecell = sessions_home
    shell_session(hivecell, "na1", repo)
    stranger = browser.new_context()
    page = stranger.new_page()
    page.goto(f"{hivecell.base}/sessions?name=na1")
    expect(page).to_have_url(re.compile(r"/login$"))
    code = page.evaluate(
        """() => new Promise((resolve) => {
          const ws = new WebSocket(`ws://${location.host}/api/v1/sessions/na1/attach`);
          ws.onopen = () => resolve('opened');
          ws.onclose = (event) => resolve(event.code);
        })"""
    )
    assert code == 1006  # the handshake was refused: no socket ever opened
    stranger.close()
