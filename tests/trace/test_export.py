from __future__ import annotations

import base64
import json
from pathlib import Path

import anyio
import pytest

from hivecell.trace import (
    TRACE_FILE,
    Tokens,
    TraceWriter,
    export_html,
    export_json,
    export_markdown,
)
from tests.trace.conftest import png

pytestmark = pytest.mark.anyio

HOSTILE = "<script>alert('pwned')</script>"


@pytest.fixture
async def trace_dir(tmp_path: Path) -> Path:
    async with TraceWriter(tmp_path) as writer:
        shot = await writer.save_screenshot(1, png())
        await writer.record(0, "user", text="find the weather in Oslo")
        await writer.record(
            1,
            "tool",
            reasoning="Open the browser first",
            tool="launch_app",
            arguments={"name": "firefox"},
            result={"pid": 4242},
            screenshot=shot,
            tokens=Tokens(prompt=1500, completion=60),
            llm_latency_ms=900,
            tool_latency_ms=120,
        )
        await writer.record(2, "tool", tool="read_page", arguments={}, result=HOSTILE)
        await writer.record(3, "error", tool="click", error="element ``` not found")
    return tmp_path


async def test_json_export_has_every_step(trace_dir: Path) -> None:
    document = json.loads(export_json(trace_dir))
    assert [s["step"] for s in document["steps"]] == [0, 1, 2, 3]
    assert document["steps"][1]["arguments"] == {"name": "firefox"}
    assert document["steps"][1]["tokens"] == {"prompt": 1500, "completion": 60}
    assert document["screenshots"] == ["step-0001.png"]
    assert document["truncated"] is False


async def test_markdown_export(trace_dir: Path) -> None:
    text = export_markdown(trace_dir)
    for needle in (
        "## Step 0 · user",
        "find the weather in Oslo",
        "## Step 1 · tool · launch_app",
        "Open the browser first",
        '"name": "firefox"',
        '"pid": 4242',
        "tokens 1500 in / 60 out",
        "llm 900 ms",
        "tool 120 ms",
        "![step 1](screenshots/step-0001.png)",
        "## Step 3 · error · click",
    ):
        assert needle in text
    # The error text holds a ``` run, so its block needs a longer fence.
    assert "````\nelement ``` not found\n````" in text


async def test_html_export_is_self_contained(trace_dir: Path) -> None:
    page = export_html(trace_dir)
    for step in range(4):
        assert f'id="step-{step}"' in page
    for needle in ("launch_app", "Open the browser first", "&quot;pid&quot;: 4242", "900 ms"):
        assert needle in page
    assert "data:image/png;base64," + base64.b64encode(png()).decode() in page
    assert "screenshots/" not in page


async def test_html_escapes_trace_content(trace_dir: Path) -> None:
    page = export_html(trace_dir)
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page


async def test_exports_report_truncation_and_missing_screenshot(trace_dir: Path) -> None:
    (trace_dir / "screenshots" / "step-0001.png").unlink()
    async with await anyio.open_file(trace_dir / TRACE_FILE, "ab") as handle:
        await handle.write(b'{"step": 4, "ki')
    assert json.loads(export_json(trace_dir))["truncated"] is True
    assert "cut off" in export_markdown(trace_dir)
    page = export_html(trace_dir)
    assert "cut off" in page and "screenshot step-0001.png is missing" in page
