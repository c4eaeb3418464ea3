"""The dashboard runs tasks on the environment's provider, and Settings says where each
provider comes from (``hivecell up`` with OPENAI_* / HIVECELL_MODEL and no config.toml)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.browser.conftest import Hivecell, running_hivecell

pytestmark = pytest.mark.slow
KEY = "sk-env-key-987654"  # what running_hivecell exports as OPENAI_API_KEY


@pytest.fixture
def hivecell(short_home: Path, script_file: Path) -> Iterator[Hivecell]:
    verdict = {"complete": True, "success": True, "summary": "wrote it"}
    write = {"name": "write_file", "arguments": {"path": "/shared/outbox/a.txt", "content": "x"}}
    script_file.write_text(json.dumps({
        "steps": [{"kind": "reply", "tool_calls": [write]}, {"kind": "reply", "text": "Done."}],
        "default": {"kind": "reply", "text": json.dumps(verdict)},
    }))  # fmt: skip
    with running_hivecell(short_home, script_file, from_environment=True) as running:
        yield running


def test_form_runs_a_task_on_the_environment_provider(hivecell: Hivecell, page: Page) -> None:
    page.goto(hivecell.url)
    picker = page.locator("#provider option")
    expect(picker).to_have_count(1)
    expect(picker).to_have_text("environment · env-model")
    expect(page.locator("#provider")).to_have_value("environment")

    page.fill("textarea[name=description]", "Write a file")
    page.click("#run")
    card = page.locator(".task-card").first
    expect(card).to_be_visible()
    task_id = card.get_attribute("data-task")
    assert task_id
    row = page.locator(f"#history tr[data-task='{task_id}']")
    expect(row.locator(".badge")).to_have_text("completed", timeout=90_000)
    task = hivecell.api("GET", f"/tasks/{task_id}")
    assert (task["provider"], task["model"]) == ("environment", "env-model")


def test_settings_shows_source_and_keeps_environment_read_only(
    hivecell: Hivecell, page: Page
) -> None:
    lab_table = {"name": "lab", "base_url": "http://127.0.0.1:9/v1", "model": "lab-model",
                 "api_key": "sk-lab-key-112233"}  # fmt: skip
    hivecell.api("POST", "/providers", lab_table)
    page.goto(hivecell.url)
    page.goto(f"{hivecell.base}/settings")
    env = page.locator("tr[data-provider='environment']")
    lab = page.locator("tr[data-provider='lab']")
    expect(env.locator("td.source")).to_have_text("environment")
    expect(lab.locator("td.source")).to_have_text("config.toml")
    expect(env).to_contain_text("default")  # config.toml names no default_provider
    expect(env).to_contain_text("…7654")
    expect(env).to_contain_text("read-only")
    expect(env.get_by_role("button", name="Edit")).to_have_count(0)
    expect(env.get_by_role("button", name="Remove")).to_have_count(0)
    expect(lab.get_by_role("button", name="Edit")).to_have_count(1)
    assert KEY not in page.content()

    env.get_by_role("button", name="Test connection").click()
    expect(env.locator(".test-result")).to_contain_text("ok ·", timeout=30_000)
