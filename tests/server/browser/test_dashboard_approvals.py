"""Approvals in the dashboard: the Settings policy, the task form's checklist, and approval
cards that show the exact arguments and why they ask."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, Route, expect

from tests.server.browser.conftest import Hivecell, save_screenshot
from tests.server.browser.test_dashboard import call, write_script

pytestmark = pytest.mark.slow

RM = "rm -rf /shared/workspace/d"
SETUP = "mkdir -p /shared/workspace/d && touch /shared/workspace/a"
MOVE = {"source": "/shared/workspace/a", "destination": "/shared/workspace/b"}


@pytest.fixture
def approval_script(script_file: Path) -> Path:
    write_script(script_file, [
        call(("run_shell", {"command": SETUP})),
        call(("move_file", MOVE)),
        call(("run_shell", {"command": RM})),
        {"kind": "reply", "text": "Done."},
    ])  # fmt: skip
    return script_file


def hold_answer_until_next_request(page: Page) -> None:
    """The worst order: the agent's next request reaches the page before the answer to the
    last one does. The card for the new request must stay."""

    def handle(route: Route) -> None:
        response = route.fetch()  # the server has the answer; the page does not yet
        expect(page.locator(".attention-item")).to_contain_text("Run run_shell?", timeout=60_000)
        route.fulfill(response=response)

    page.route("**/api/v1/tasks/*/approve", handle, times=1)


def test_policy_checklist_and_approval_cards(
    approval_script: Path, hivecell: Hivecell, page: Page
) -> None:
    page.goto(hivecell.url)
    expect(page.locator("#live")).to_have_text("live")
    page.click("a[data-nav=settings]")
    tools = page.locator("#approval-tools")
    expect(tools.locator("input[value=move_file]")).to_be_checked()
    expect(page.locator("#approval-rules input[value=recursive_rm]")).to_be_checked()
    expect(page.locator("#approval-rules input[value=any]")).not_to_be_checked()
    tools.locator("input[value=move_file]").uncheck()
    page.get_by_role("button", name="Save approvals").click()
    expect(page.locator("#toasts")).to_contain_text("Approvals saved")
    expect(page.locator("#approval-tools input[value=move_file]")).not_to_be_checked()
    saved = hivecell.api("GET", "/settings")["approval"]
    # the defaults but move_file (the Anthropic editor's edit_file and the catalogue's
    # dangerous tools are among them)
    default = ["delete_file", "move_file", "write_file", "edit_file", "run_shell"]
    default += ["force_quit_app", "kill_process", "empty_trash", "copy_file"]
    assert sorted(saved["tools"]) == sorted(tool for tool in default if tool != "move_file")
    save_screenshot(page, "settings-approvals")

    page.click("a[data-nav=dashboard]")
    page.locator("details summary", has_text="Advanced").click()
    checklist = page.locator("#approve-tools")
    expect(checklist.locator("input[value=run_shell]")).to_be_checked()
    expect(checklist.locator("input[value=move_file]")).not_to_be_checked()  # from Settings
    checklist.locator("input[value=move_file]").check()  # this task asks for moves too
    page.fill("textarea[name=description]", "tidy the workspace")
    page.click("#run")

    card = page.locator(".attention-item")
    expect(card).to_contain_text("Run move_file?", timeout=60_000)
    expect(card.locator("pre.args")).to_contain_text('"destination": "/shared/workspace/b"')
    expect(card.locator(".reason")).to_contain_text("move_file is in the approval list")
    hold_answer_until_next_request(page)
    card.get_by_role("button", name="Approve").click()

    expect(card).to_contain_text("Run run_shell?", timeout=60_000)
    expect(card.locator("pre.args")).to_contain_text(RM)
    expect(card.locator(".reason")).to_contain_text("recursive_rm")
    save_screenshot(page, "approval-card")
    card.get_by_role("button", name="Deny").click()
    expect(card).to_have_count(0)

    row = page.locator("#history tr").first
    expect(row.locator(".badge")).to_have_text("completed", timeout=60_000)
