"""The task page's export buttons in Chromium: each format is offered, and the ZIP downloads."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.server.browser.conftest import Hivecell
from tests.server.browser.test_dashboard import call, wait_for_status, write_script

pytestmark = pytest.mark.slow


@pytest.fixture
def export_script(script_file: Path) -> Path:
    write_script(script_file, [
        call(("write_file", {"path": "/shared/outbox/answer.txt", "content": "blue"})),
        {"kind": "reply", "text": "Done."},
    ])  # fmt: skip
    return script_file


def test_export_buttons_and_zip_download(
    export_script: Path, hivecell: Hivecell, page: Page
) -> None:
    page.goto(hivecell.url)  # sets the session cookie
    expect(page).to_have_url(f"{hivecell.base}/")
    task_id = hivecell.api("POST", "/tasks", {"description": "write the answer"})["id"]
    wait_for_status(hivecell, task_id, "completed")
    page.goto(f"{hivecell.base}/tasks/{task_id}")
    buttons = page.locator("#exports a")
    expect(buttons).to_have_text(["JSON", "Markdown", "HTML", "ZIP", "Video"])
    formats = [buttons.nth(i).get_attribute("data-export") for i in range(5)]
    assert formats == ["json", "md", "html", "zip", "mp4"]

    with page.expect_download() as info:
        page.locator("#exports a[data-export=zip]").click()
    download = info.value
    assert download.suggested_filename == f"{task_id}.zip"
    archive = zipfile.ZipFile(io.BytesIO(Path(download.path()).read_bytes()))
    assert archive.read("outputs/answer.txt") == b"blue"
    steps = [json.loads(line) for line in archive.read("trace.jsonl").splitlines()]
    assert any(step.get("tool") == "write_file" for step in steps)
