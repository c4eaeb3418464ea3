"""ZIP bundle, self-contained Markdown and replay video of a trace."""

from __future__ import annotations

import base64
import io
import os
import re
import zipfile
from pathlib import Path

import av
import pytest
from PIL import Image

from hivecell.errors import TooLarge
from hivecell.trace import TraceWriter, export_markdown
from hivecell.trace.bundle import write_bundle
from hivecell.trace.video import caption, write_video

pytestmark = pytest.mark.anyio

SECRET = b"host secret, never in an export\n"


def screenshot(color: tuple[int, int, int], size: tuple[int, int] = (320, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
async def trace_dir(tmp_path: Path) -> Path:
    trace = tmp_path / "trace"
    async with TraceWriter(trace) as writer:
        await writer.record(0, "user", text="click three times")
        for step, color in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200)], start=1):
            shot = await writer.save_screenshot(step, screenshot(color))
            await writer.record(
                step, "tool", tool="click", arguments={"x": step}, result="ok", screenshot=shot
            )
        await writer.write_conversation([{"role": "user", "content": "click three times"}])
    (trace / "network.jsonl").write_text('{"host": "example.org", "allowed": true}\n')
    return trace


@pytest.fixture
def hostile_outputs(tmp_path: Path) -> Path:
    """An output folder as an untrusted sandbox could leave it: links to host files and dirs."""
    secret_dir = tmp_path / "host"
    secret_dir.mkdir()
    (secret_dir / "secret.txt").write_bytes(SECRET)
    outputs = tmp_path / "outputs"
    (outputs / "sub").mkdir(parents=True)
    (outputs / "report.txt").write_bytes(b"the report\n")
    (outputs / "sub" / "data.csv").write_bytes(b"a,b\n1,2\n")
    (outputs / "leak.txt").symlink_to(secret_dir / "secret.txt")
    (outputs / "sub" / "hostdir").symlink_to(secret_dir, target_is_directory=True)
    os.mkfifo(outputs / "pipe")  # would hang a plain open()
    return outputs


def bundle(trace_dir: Path, outputs: Path | None, **kwargs: int) -> zipfile.ZipFile:
    buffer = io.BytesIO()
    write_bundle(trace_dir, outputs, buffer, **kwargs)
    return zipfile.ZipFile(io.BytesIO(buffer.getvalue()))


async def test_zip_has_trace_screenshots_conversation_network_and_outputs(
    trace_dir: Path, hostile_outputs: Path
) -> None:
    archive = bundle(trace_dir, hostile_outputs)
    assert sorted(archive.namelist()) == [
        "conversation.json",
        "network.jsonl",
        "outputs/report.txt",
        "outputs/sub/data.csv",
        "screenshots/step-0001.png",
        "screenshots/step-0002.png",
        "screenshots/step-0003.png",
        "trace.jsonl",
        "trace.md",
    ]
    assert archive.read("outputs/report.txt") == b"the report\n"
    assert archive.read("trace.jsonl") == (trace_dir / "trace.jsonl").read_bytes()
    assert archive.read("screenshots/step-0002.png") == screenshot((0, 200, 0))
    # Inside the zip the Markdown links the screenshots next to it, and each link resolves.
    links = re.findall(r"!\[[^]]*\]\(([^)]*)\)", archive.read("trace.md").decode())
    assert links and all(link in archive.namelist() for link in links)


async def test_zip_never_follows_links_planted_in_outputs(
    trace_dir: Path, hostile_outputs: Path
) -> None:
    archive = bundle(trace_dir, hostile_outputs)
    assert not any("leak" in n or "hostdir" in n or "pipe" in n for n in archive.namelist())
    assert all(SECRET not in archive.read(name) for name in archive.namelist())


async def test_zip_refuses_an_output_folder_that_is_itself_a_link(
    trace_dir: Path, hostile_outputs: Path, tmp_path: Path
) -> None:
    linked = tmp_path / "linked-outputs"
    linked.symlink_to(tmp_path / "host", target_is_directory=True)
    names = bundle(trace_dir, linked).namelist()
    assert not any(name.startswith("outputs/") for name in names)


async def test_zip_is_capped(trace_dir: Path, tmp_path: Path) -> None:
    outputs = tmp_path / "big"
    outputs.mkdir()
    (outputs / "big.bin").write_bytes(b"\0" * 200_000)
    with pytest.raises(TooLarge) as caught:
        bundle(trace_dir, outputs, max_bytes=100_000)
    assert caught.value.context["name"] == "outputs/big.bin"


async def test_markdown_can_be_self_contained(trace_dir: Path) -> None:
    text = export_markdown(trace_dir, embed_images=True)
    assert "screenshots/" not in text
    uris = re.findall(r"!\[step \d+\]\((data:image/png;base64,[A-Za-z0-9+/=]+)\)", text)
    assert len(uris) == 3
    decoded = base64.b64decode(uris[1].partition(",")[2])
    assert decoded == screenshot((0, 200, 0))


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
async def test_video_has_one_captioned_second_per_screenshot(trace_dir: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    assert write_video(trace_dir, buffer, format=fmt) == 3  # type: ignore[arg-type]
    buffer.seek(0)
    with av.open(buffer) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        duration = float(container.duration or 0) / av.time_base
    assert len(frames) == 3 and abs(duration - 3.0) < 0.05
    assert frames[0].size == (320, 200)
    # Each frame is its step's screenshot (checked above the caption bar) ...
    for frame, channel in zip(frames, range(3), strict=True):
        pixel = frame.getpixel((160, 40))
        assert isinstance(pixel, tuple) and pixel[channel] > 150
        assert sum(pixel) - pixel[channel] < 80
    # ... with a black caption bar carrying light text at the bottom.
    bar = frames[0].crop((0, 190, 320, 200)).convert("L")
    assert bar.getextrema()[0] < 30 and bar.getextrema()[1] > 120


async def test_video_is_capped_and_captions_are_one_short_line(trace_dir: Path) -> None:
    buffer = io.BytesIO()
    assert write_video(trace_dir, buffer, max_frames=2) == 2
    buffer.seek(0)
    with av.open(buffer) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2
    from hivecell.trace import TraceStep

    step = TraceStep(step=7, kind="tool", tool="type_text", arguments={"text": "x" * 500})
    line = caption(step)
    assert line.startswith("step 7 · type_text · ") and len(line) <= 140 and "\n" not in line


async def test_video_of_a_trace_without_screenshots_is_empty(tmp_path: Path) -> None:
    async with TraceWriter(tmp_path) as writer:
        await writer.record(0, "user", text="nothing to see")
    buffer = io.BytesIO()
    assert write_video(tmp_path, buffer) == 0 and buffer.getvalue() == b""
