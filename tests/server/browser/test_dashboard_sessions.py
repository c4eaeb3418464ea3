"""The Sessions page: a real `hivecell up`, a real bash in a PTY behind its supervisor, and
xterm.js in Debian's Chromium over the attach WebSocket. Typing, a second viewer, resizing
(checked with `stty size` inside), 100 000 lines of scrollback, live status with a browser
notification, and a browser that sends garbage or has no token. Around the terminal: the
audit log followed live, the worktree's diff, the model usage of a real call through the
model proxy, Restart, Destroy (refused over uncommitted work, then forced), and hostile
text in all of them shown as text."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from hivecell.sessions.audit import record
from tests.server.browser.conftest import Hivecell, save_screenshot, wait_for_js
from tests.sessions.helpers import make_repo, stop_all

pytestmark = pytest.mark.slow
ROWS = "#terminal .xterm-rows"
# Makes the xterm 60 columns wider than it is, lets the page lay out twice, and measures.
WIDEN_THE_XTERM = """async () => {
  const box = document.querySelector('#terminal');
  const before = box.getBoundingClientRect().width;
  box.xterm.resize(box.xterm.cols + 60, box.xterm.rows);
  await new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
  return {before, after: box.getBoundingClientRect().width,
          page: document.documentElement.scrollWidth, window: innerWidth};
}"""
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


def shell_session(
    hivecell: Hivecell, name: str, repo: Path, isolation: str = "none"
) -> dict[str, Any]:
    body = {"name": name, "agent": "shell", "repo": str(repo), "isolation": isolation}
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
    page.check("#s-auto-answer")
    page.click("#create-session")
    expect(page.locator("#term-state")).to_have_text("attached", timeout=20_000)
    assert hivecell.api("GET", "/sessions/web1")["auto_answer"] is True
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
    # The page, never the terminal in it, sets the terminal's width: an xterm wider than its
    # column (as it is for a moment after the window narrows) once widened the column, fit()
    # measured the terminal's own width and the PTY got a size the page did not show.
    widths = page.evaluate(WIDEN_THE_XTERM)
    assert widths["after"] == widths["before"], widths
    assert widths["page"] <= widths["window"], widths


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
    wait_for_js(page, "window.__notes.includes('wt1 is waiting for you')", 10_000)
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


AUDIT = "#audit-list tr"
ATTACH_RT1 = "/api/v1/sessions/rt1/attach?tail=4194304"
HOSTILE = "<img src=x onerror=window.__pwned=1>"


def audit_row(page: Page, action: str, target: str) -> Any:
    cells = page.locator(f'{AUDIT}[data-action="{action}"] td.target')
    return cells.filter(has_text=re.compile("^" + re.escape(target) + "$"))


def test_audit_follows_the_session_and_diff_shows_its_work(
    sessions_home: Hivecell, page: Page, repo: Path
) -> None:
    hivecell = sessions_home
    made = shell_session(hivecell, "wd1", repo, isolation="worktree")
    open_session(page, hivecell, "wd1")
    page.click("#tab-audit")
    expect(page.locator("#tab-audit")).to_have_attribute("aria-selected", "true")
    expect(page.locator(f'{AUDIT}[data-action="session_start"]')).to_have_count(1)

    # Typed with the panel open: the entries arrive by themselves (session.audit events).
    type_line(page, "echo hi > made.txt; echo made-$((40+2))")
    expect(page.locator(ROWS)).to_contain_text("made-42", timeout=20_000)
    expect(audit_row(page, "input", "echo hi > made.txt; echo made-$((40+2))")).to_have_count(
        1, timeout=20_000
    )
    expect(audit_row(page, "file_write", "made.txt")).to_have_count(1, timeout=20_000)
    seqs = [int(s) for s in page.locator(AUDIT).evaluate_all("rs => rs.map(r => r.dataset.seq)")]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), seqs  # newest at the bottom
    typed = page.locator(f'{AUDIT}[data-action="input"]').last
    expect(typed.locator("td").nth(2)).to_have_text("allowed")
    expect(page.locator("#audit-count")).to_contain_text("entries")

    page.click("#tab-diff")
    expect(page.locator("#audit-panel")).to_be_hidden()
    expect(page.locator("#diff-files li")).to_have_text(["A made.txt"])
    expect(page.locator("#diff-text .d-add")).to_contain_text(["+hi"])
    expect(page.locator("#diff-summary")).to_contain_text(f"1 file changed on {made['branch']}")

    type_line(page, "echo more > second.txt; echo second-$((40+2))")
    expect(page.locator(ROWS)).to_contain_text("second-42", timeout=20_000)
    page.click("#diff-refresh")
    expect(page.locator("#diff-files li")).to_have_text(["A made.txt", "A second.txt"])
    save_screenshot(page, "sessions-diff")
    page.click("#panel-close")
    expect(page.locator("#diff-panel")).to_be_hidden()


def test_a_session_without_a_branch_says_so_in_the_diff_tab(
    sessions_home: Hivecell, page: Page, repo: Path
) -> None:
    hivecell = sessions_home
    shell_session(hivecell, "nb1", repo)
    open_session(page, hivecell, "nb1")
    page.click("#tab-diff")
    expect(page.locator("#diff-summary")).to_have_text(
        f"nb1 has no branch of its own (isolation none): its work is in {repo} itself."
    )


def test_restart_reattaches_to_a_new_shell(sessions_home: Hivecell, page: Page, repo: Path) -> None:
    hivecell = sessions_home
    before = shell_session(hivecell, "rt1", repo)
    open_session(page, hivecell, "rt1")
    type_line(page, "echo old-$$")
    expect(page.locator(ROWS)).to_contain_text(f"old-{before['pid']}", timeout=20_000)
    # The page attaches again once the restart is done: a new terminal WebSocket.
    with page.expect_websocket(lambda ws: ws.url.endswith(ATTACH_RT1), timeout=30_000):
        page.click("#restart")
    expect(page.locator(".toast.ok").filter(has_text="Session rt1 restarted")).to_have_count(1)
    after = hivecell.api("GET", "/sessions/rt1")
    assert after["restarts"] == 1 and after["pid"] not in (None, before["pid"])
    expect(page.locator("#term-state")).to_have_text("attached", timeout=20_000)
    type_line(page, "echo new-$$")
    expect(page.locator(ROWS)).to_contain_text(f"new-{after['pid']}", timeout=20_000)
    page.click("#tab-audit")
    expect(page.locator(f'{AUDIT}[data-action="session_restart"]')).to_have_count(1)


def test_destroy_refuses_uncommitted_work_until_forced(
    sessions_home: Hivecell, page: Page, repo: Path
) -> None:
    hivecell = sessions_home
    made = shell_session(hivecell, "dz1", repo, isolation="worktree")
    open_session(page, hivecell, "dz1")
    type_line(page, "echo wip > wip.txt; echo wip-$((40+2))")
    expect(page.locator(ROWS)).to_contain_text("wip-42", timeout=20_000)

    page.click("#destroy")
    expect(page.locator("#destroy-dialog")).to_be_visible()
    expect(page.locator("#destroy-name")).to_have_text("dz1")
    page.click("#destroy-confirm")
    refused = page.locator("#destroy-refused")
    expect(refused).to_contain_text(
        f"session dz1 has uncommitted changes in its worktree (1 files): commit them on "
        f"{made['branch']}"
    )
    expect(page.locator("#destroy-force")).to_be_visible()
    expect(page.locator("#destroy-confirm")).to_be_hidden()
    assert hivecell.api("GET", "/sessions/dz1")["name"] == "dz1"  # nothing was stopped
    expect(page.locator('tr[data-session="dz1"]')).to_have_count(1)
    # The refusal is a 409 the browser logs; nothing else may be.
    assert all("409" in e for e in hivecell.console_errors), hivecell.console_errors
    hivecell.console_errors.clear()

    page.click("#destroy-force")
    expect(page.locator("#destroy-dialog")).to_be_hidden()
    expect(page.locator(".toast.ok").last).to_have_text(
        f"Session dz1 destroyed; branch {made['branch']} kept (its commits stay in {repo})"
    )
    expect(page.locator('tr[data-session="dz1"]')).to_have_count(0)
    expect(page.locator("#term-none")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/sessions$"))
    assert hivecell.api("GET", "/sessions")["items"] == []
    branch = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", made["branch"]], check=False
    )
    assert branch.returncode == 0, "the branch is kept"


def test_destroy_of_a_clean_session_needs_only_the_confirmation(
    sessions_home: Hivecell, page: Page, repo: Path
) -> None:
    hivecell = sessions_home
    shell_session(hivecell, "dc1", repo)
    open_session(page, hivecell, "dc1")
    page.click("#destroy")
    page.click("#destroy-cancel")
    expect(page.locator("#destroy-dialog")).to_be_hidden()
    assert hivecell.api("GET", "/sessions/dc1")["status"] != "exited"  # Cancel did nothing
    page.click("#destroy")
    page.click("#destroy-confirm")
    expect(page.locator(".toast.ok").last).to_have_text("Session dc1 destroyed")
    expect(page.locator('tr[data-session="dc1"]')).to_have_count(0)
    expect(page.locator("#sessions-empty")).to_be_visible()


@pytest.fixture
def priced_model(script_file: Path) -> None:
    """The scripted provider answers one call with usage the page must show (before the
    server starts: ``hivecell`` reads the script at start)."""
    reply = {"kind": "reply", "text": "ok", "prompt_tokens": 1000, "completion_tokens": 200}
    script_file.write_text(json.dumps({"steps": [reply]}))


def test_model_usage_of_a_call_through_the_proxy(
    priced_model: None, sessions_home: Hivecell, page: Page, repo: Path
) -> None:
    hivecell = sessions_home
    made = shell_session(hivecell, "mu1", repo)
    assert made["proxy"] is True
    open_session(page, hivecell, "mu1")
    usage = page.locator("#term-usage")
    expect(usage).to_have_text("0 model calls · 0 tokens · $0")
    body = '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}'
    type_line(
        page,
        f"curl -s \"$OPENAI_BASE_URL/chat/completions\" -H 'content-type: application/json' "
        f"-d '{body}' -o /dev/null -w 'code-%{{http_code}}-'; echo done",
    )
    expect(page.locator(ROWS)).to_contain_text("code-200-done", timeout=20_000)
    # gpt-4o: 1000 prompt tokens at $2.50 and 200 completion tokens at $10.00 per million.
    expect(usage).to_have_text("1 model call · 1200 tokens · $0.0045", timeout=20_000)
    expect(usage).to_have_attribute("title", re.compile("1000 prompt \\+ 200 completion.*gpt-4o"))
    page.click("#tab-audit")
    expect(page.locator(f'{AUDIT}[data-action="network_request"] td.target')).to_contain_text(
        ["POST"]
    )


def test_hostile_text_in_audit_and_diff_stays_text(
    sessions_home: Hivecell, page: Page, repo: Path
) -> None:
    hivecell = sessions_home
    shell_session(hivecell, "hx1", repo, isolation="worktree")
    open_session(page, hivecell, "hx1")
    page.click("#tab-audit")
    hostile_file = HOSTILE.replace("1>", "2>.txt")
    type_line(page, f"echo '{HOSTILE}' > '{hostile_file}'; echo hx-$((40+2))")
    expect(page.locator(ROWS)).to_contain_text("hx-42", timeout=20_000)
    # What another part of hivecell records (e.g. a blocked path), with markup in every field.
    record(
        hivecell.home / "sessions" / "hx1", "network_request", session="hx1", agent="shell",
        target=HOSTILE, outcome="blocked", detail={"why": HOSTILE},
    )  # fmt: skip
    expect(audit_row(page, "file_write", hostile_file)).to_have_count(1, timeout=20_000)
    blocked = page.locator(f'{AUDIT}[data-outcome="blocked"]')
    expect(blocked.locator("td.target")).to_have_text(HOSTILE, timeout=20_000)
    expect(blocked.locator("td.detail")).to_have_text(f"why: {HOSTILE}")
    expect(blocked.locator(".badge")).to_have_text("blocked")
    expect(blocked).to_have_class(re.compile(r"\bflagged\b"))
    typed = f"echo '{HOSTILE}' > '{hostile_file}'; echo hx-$((40+2))"
    expect(audit_row(page, "input", typed)).to_have_count(1)
    save_screenshot(page, "sessions-audit")
    page.click("#tab-diff")
    expect(page.locator("#diff-files li")).to_have_text([f"A {hostile_file}"])
    expect(page.locator("#diff-text")).to_contain_text(f"+{HOSTILE}")
    assert page.locator("#audit-panel img, #diff-panel img").count() == 0
    assert page.evaluate("window.__pwned") is None
    save_screenshot(page, "sessions-hostile")
