"""A replay of a trace as a video: each screenshot held one second under a caption line.

PyAV (FFmpeg in its wheels) encodes H.264 into MP4 or VP9 into WebM. One frame per screenshot
at 1 frame per second keeps files small and makes "frame N" mean "step with screenshot N".
Blocking and CPU heavy: async callers run it in a worker thread.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Literal

import av
from PIL import Image, ImageDraw, ImageFont

from hivecell.trace.models import TraceStep
from hivecell.trace.reader import TraceReader

VideoFormat = Literal["mp4", "webm"]
# (container, codec) per format; both codecs ship in PyAV's wheels.
_CODECS: dict[str, tuple[str, str]] = {"mp4": ("mp4", "libx264"), "webm": ("webm", "libvpx-vp9")}
MEDIA_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
FRAME_SECONDS = 1
DEFAULT_MAX_FRAMES = 600  # ten minutes of replay
MAX_SIDE = 1920  # larger screenshots are scaled down to keep encoding time bounded
_CAPTION_CHARS = 140


def caption(step: TraceStep) -> str:
    """``step N · tool · arguments → result``, cut to one line."""
    parts = [f"step {step.step}"]
    if step.tool:
        parts.append(step.tool)
    if step.arguments:
        parts.append(_short(step.arguments))
    text = " · ".join(parts)
    outcome = step.error if step.error is not None else step.result
    if outcome is not None:
        text += f" → {_short(outcome)}"
    return text if len(text) <= _CAPTION_CHARS else text[: _CAPTION_CHARS - 1] + "…"


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return " ".join(text.split())[:60]


def frames(trace_dir: Path, max_frames: int) -> list[tuple[TraceStep, Image.Image]]:
    """(step, screenshot) for the first ``max_frames`` records that have a readable screenshot."""
    reader = TraceReader(trace_dir)
    picked: list[tuple[TraceStep, Image.Image]] = []
    for step in reader.load().steps:
        if len(picked) >= max_frames:
            break
        data = reader.screenshot(step.screenshot) if step.screenshot else None
        if data is None:
            continue
        with Image.open(io.BytesIO(data)) as image:
            picked.append((step, image.convert("RGB")))
    return picked


def frame_size(first: Image.Image) -> tuple[int, int]:
    """The video's size: the first screenshot's, scaled under MAX_SIDE, made even (yuv420p)."""
    scale = min(1.0, MAX_SIDE / max(first.size))
    width, height = (round(side * scale) for side in first.size)
    return max(2, width - width % 2), max(2, height - height % 2)


def render_frame(step: TraceStep, shot: Image.Image, size: tuple[int, int]) -> Image.Image:
    canvas = shot.resize(size) if shot.size != size else shot.copy()
    draw = ImageDraw.Draw(canvas)
    font_size = max(10, size[1] // 40)
    font = ImageFont.load_default(font_size)
    bar = font_size + font_size // 2
    draw.rectangle((0, size[1] - bar, size[0], size[1]), fill=(0, 0, 0))
    draw.text(
        (font_size // 2, size[1] - bar + font_size // 4), caption(step), fill="white", font=font
    )
    return canvas


def write_video(
    trace_dir: Path,
    dest: BinaryIO,
    *,
    format: VideoFormat = "mp4",
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> int:
    """Encode the replay into ``dest``; returns the number of frames (0: no screenshots, and
    then nothing is written)."""
    picked = frames(trace_dir, max_frames)
    if not picked:
        return 0
    container_format, codec = _CODECS[format]
    size = frame_size(picked[0][1])
    with av.open(dest, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=Fraction(1, FRAME_SECONDS))
        assert isinstance(stream, av.VideoStream)  # a video codec gives a video stream
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index, (step, shot) in enumerate(picked):
            frame = av.VideoFrame.from_image(render_frame(step, shot, size))
            frame.pts = index
            frame.time_base = Fraction(FRAME_SECONDS, 1)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return len(picked)
