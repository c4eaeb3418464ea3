from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from hivecell.errors import InvalidParams
from hivecell.trace import (
    CONVERSATION_FILE,
    TRACE_FILE,
    StepKind,
    Tokens,
    TraceCorrupt,
    TraceNotFound,
    TraceReader,
    TraceStep,
    TraceWriter,
)
from tests.trace.conftest import png

pytestmark = pytest.mark.anyio


async def test_records_round_trip(tmp_path: Path) -> None:
    async with TraceWriter(tmp_path) as writer:
        shot = await writer.save_screenshot(1, png())
        written = [
            await writer.record(0, "user", text="open the calculator"),
            await writer.record(
                1,
                StepKind.TOOL,
                reasoning="I will click the menu",
                tool="click",
                arguments={"x": 10, "y": 20},
                result={"ok": True},
                screenshot=shot,
                tokens=Tokens(prompt=1200, completion=40),
                llm_latency_ms=812.5,
                tool_latency_ms=33,
            ),
            await writer.record(2, "error", tool="type", error="window vanished"),
        ]
    assert TraceReader(tmp_path).steps() == written
    assert len((tmp_path / TRACE_FILE).read_text().splitlines()) == 3


async def test_reopened_writer_appends(tmp_path: Path) -> None:
    async with TraceWriter(tmp_path) as writer:
        await writer.record(0, "status", text="running")
    async with TraceWriter(tmp_path) as writer:
        await writer.record(1, "status", text="resumed")
    assert [s.text for s in TraceReader(tmp_path).steps()] == ["running", "resumed"]


async def test_concurrent_writes_stay_whole_lines(tmp_path: Path) -> None:
    async with TraceWriter(tmp_path) as writer, anyio.create_task_group() as group:
        for step in range(40):
            group.start_soon(partial(writer.record, step, "observation", text="x" * 5000))
    assert sorted(s.step for s in TraceReader(tmp_path).steps()) == list(range(40))


def test_step_model_is_strict() -> None:
    with pytest.raises(ValidationError):
        TraceStep.model_validate({"step": 1, "kind": "llm", "colour": "red"})
    with pytest.raises(ValidationError):
        TraceStep(step=1, kind=StepKind.TOOL, screenshot="../../etc/passwd")
    with pytest.raises(ValidationError):
        TraceStep.model_validate({"step": 1, "kind": "dance"})


async def test_screenshot_names(tmp_path: Path) -> None:
    async with TraceWriter(tmp_path) as writer:
        first = await writer.save_screenshot(3, png((1, 2, 3)))
        second = await writer.save_screenshot(3, png((4, 5, 6)))
        same_again = await writer.save_screenshot(4, png((1, 2, 3)))
    assert (first, second) == ("step-0003.png", "step-0003-2.png")
    # An unchanged screen is stored once.
    assert same_again == first
    reader = TraceReader(tmp_path)
    assert reader.screenshot(first) == png((1, 2, 3))
    assert reader.screenshot_names() == ["step-0003-2.png", "step-0003.png"]
    assert reader.screenshot("../trace.jsonl") is None


async def test_conversation_images_become_file_references(tmp_path: Path) -> None:
    seen, fresh = png((9, 9, 9)), png((0, 90, 0))
    seen_url = "data:image/png;base64," + base64.b64encode(seen).decode()
    messages = [
        {"role": "user", "content": "do it"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": seen_url}}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": base64.b64encode(fresh).decode(),
                    },
                }
            ],
        },
    ]
    async with TraceWriter(tmp_path) as writer:
        shot = await writer.save_screenshot(1, seen)
        await writer.write_conversation(messages)
        await writer.write_conversation(messages)
    saved = json.loads((tmp_path / CONVERSATION_FILE).read_text())
    assert saved[0] == messages[0]
    assert saved[1]["content"][0]["image_url"]["url"] == f"screenshots/{shot}"
    source = saved[2]["content"][0]["source"]
    assert source["type"] == "file" and source["media_type"] == "image/png"
    assert (tmp_path / source["path"]).read_bytes() == fresh
    assert len(TraceReader(tmp_path).screenshot_names()) == 2
    assert "base64" not in (tmp_path / CONVERSATION_FILE).read_text()
    assert TraceReader(tmp_path).conversation() == saved


async def test_conversation_must_be_json(tmp_path: Path) -> None:
    async with TraceWriter(tmp_path) as writer:
        with pytest.raises(InvalidParams):
            await writer.write_conversation([{"role": "user", "content": object()}])


async def test_truncated_last_line_is_dropped(tmp_path: Path) -> None:
    async with TraceWriter(tmp_path) as writer:
        for step in range(3):
            await writer.record(step, "llm", reasoning=f"thought {step}")
    async with await anyio.open_file(tmp_path / TRACE_FILE, "ab") as handle:
        await handle.write(b'{"ts":"2025-01-01T00:00:00Z","step":3,"kind":"ll')
    loaded = TraceReader(tmp_path).load()
    assert [s.step for s in loaded.steps] == [0, 1, 2]
    assert loaded.truncated
    # A writer resuming the trace cuts the fragment off instead of gluing onto it.
    async with TraceWriter(tmp_path) as writer:
        await writer.record(3, "llm", reasoning="thought 3")
    loaded = TraceReader(tmp_path).load()
    assert [s.step for s in loaded.steps] == [0, 1, 2, 3] and not loaded.truncated


async def test_damage_before_the_last_line_is_an_error(tmp_path: Path) -> None:
    async with TraceWriter(tmp_path) as writer:
        await writer.record(0, "llm")
    async with await anyio.open_file(tmp_path / TRACE_FILE, "ab") as handle:
        await handle.write(b"not json\n")
    async with TraceWriter(tmp_path) as writer:
        await writer.record(1, "llm")
    with pytest.raises(TraceCorrupt) as info:
        TraceReader(tmp_path).steps()
    assert info.value.context == {"line": 2}


def test_missing_trace(tmp_path: Path) -> None:
    assert TraceReader(tmp_path).steps() == []
    with pytest.raises(TraceNotFound):
        TraceReader(tmp_path / "nope")


_ENDLESS_WRITER = """
import sys, anyio
from pathlib import Path
from hivecell.trace import TraceWriter

async def main():
    writer = TraceWriter(Path(sys.argv[1]))
    step = 0
    while True:
        await writer.record(step, "tool", tool="click", arguments={"n": step}, result="x" * 3000)
        step += 1

anyio.run(main)
"""


def test_killed_writer_leaves_readable_trace(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", _ENDLESS_WRITER, str(tmp_path)])
    try:
        _wait_for_lines(tmp_path / TRACE_FILE, 50, child)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    steps = TraceReader(tmp_path).steps()
    assert len(steps) >= 50
    assert [s.step for s in steps] == list(range(len(steps)))
    assert all(s.arguments == {"n": s.step} for s in steps)


def _wait_for_lines(path: Path, count: int, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and child.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"writer produced fewer than {count} records (exit {child.poll()})")


async def test_records_are_fsynced_by_sync_and_close_not_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record is readable at once (a killed process keeps it); the disk flush waits for
    ``sync``, which the runner calls while the model thinks, or ``close``."""
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    writer = TraceWriter(tmp_path)
    await writer.record(0, "user", text="a")
    await writer.record(1, "user", text="b")
    assert [s.step for s in TraceReader(tmp_path).steps()] == [0, 1]
    assert synced == []
    await writer.sync()
    assert len(synced) == 2  # the file, and its new entry in the folder
    await writer.sync()  # nothing new: no second disk flush
    assert len(synced) == 2
    await writer.record(2, "user", text="c")
    await writer.close()
    assert len(synced) == 3
    assert [s.step for s in TraceReader(tmp_path).steps()] == [0, 1, 2]
