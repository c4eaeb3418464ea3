"""The runner's chat messages as an Anthropic Messages request.

What changes on the way: the system message becomes ``system``; an assistant's tool calls
become ``tool_use`` blocks with the model's own input; the ``role=tool`` results and the
screenshot message after them become ONE user turn whose ``tool_result`` blocks answer every
``tool_use`` of the turn before (the screenshot goes inside the computer tool's result, as
Anthropic's tool expects); ``data:`` image URLs become base64 image blocks, scaled down to
Anthropic's recommended size when larger. Cache breakpoints go on the system prompt, the tools
and the last user turn, so each step re-reads the conversation from cache.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from hivecell.agent.llm.claude_tools import COMPUTER, Display, native_tool

# Anthropic's guidance for computer use: at most ~1568 px on the long edge and ~1.15 MP;
# larger images are scaled down by the API, and clicks would then miss.
MAX_EDGE = 1568
MAX_PIXELS = 1_150_000
CACHE = {"type": "ephemeral"}
Block = dict[str, Any]


@dataclass
class Request:
    system: list[Block]
    messages: list[dict[str, Any]]
    display: Display | None = None  # the newest screenshot as sent


@dataclass
class _Builder:
    turns: list[dict[str, Any]] = field(default_factory=list)
    system: list[str] = field(default_factory=list)
    computer_ids: set[str] = field(default_factory=set)
    cursor_ids: set[str] = field(default_factory=set)  # cursor_position actions
    display: Display | None = None

    def add(self, role: str, blocks: list[Block]) -> None:
        if not blocks:
            return  # Anthropic refuses empty turns; an empty reply adds nothing
        if self.turns and self.turns[-1]["role"] == role:
            self.turns[-1]["content"].extend(blocks)
        else:
            self.turns.append({"role": role, "content": blocks})


def fit(width: int, height: int) -> tuple[int, int]:
    """The size Anthropic recommends for an image of this size (never larger)."""
    scale = min(1.0, MAX_EDGE / max(width, height), math.sqrt(MAX_PIXELS / (width * height)))
    if scale >= 1.0:
        return width, height
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def convert(messages: list[dict[str, Any]]) -> Request:
    """Blocking (images may be decoded and scaled): call it in a worker thread."""
    b = _Builder()
    for message in messages:
        role = message.get("role")
        if role == "system":
            b.system.append(_text_of(message.get("content")))
        elif role == "assistant":
            b.add("assistant", _assistant_blocks(message, b))
        elif role == "tool":
            b.add("user", [_tool_result(message, b)])
        else:
            _add_user(b, message.get("content"))
    turns = _answer_every_call(b.turns)
    _order_results_first(turns)
    _mark_last_user(turns)
    system = [{"type": "text", "text": "\n\n".join(b.system), "cache_control": CACHE}]
    return Request(system=system if b.system else [], messages=turns, display=b.display)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "\n".join(p.get("text", "") for p in parts if p.get("type") == "text")


def _assistant_blocks(message: dict[str, Any], b: _Builder) -> list[Block]:
    blocks: list[Block] = []
    text = _text_of(message.get("content"))
    if text.strip():
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function", {})
        name, raw = native_tool(function.get("name", ""), function.get("arguments") or "")
        if name == COMPUTER:
            b.computer_ids.add(call["id"])
            if isinstance(raw, dict) and raw.get("action") == "cursor_position":
                b.cursor_ids.add(call["id"])
        blocks.append({"type": "tool_use", "id": call["id"], "name": name, "input": raw})
    return blocks


def _tool_result(message: dict[str, Any], b: _Builder) -> Block:
    content = _text_of(message.get("content")) or "{}"
    try:
        value = json.loads(content)
    except json.JSONDecodeError:
        value = None
    failed = isinstance(value, dict) and set(value) == {"error"}
    if message.get("tool_call_id") in b.cursor_ids and not failed:
        content = _cursor_in_model_pixels(value, b.display) or content
    block: Block = {
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id", ""),
        "content": [{"type": "text", "text": content}],
    }
    if failed:
        block["is_error"] = True
    return block


def _cursor_in_model_pixels(value: Any, display: Display | None) -> str | None:
    """The pointer as the model's screenshot shows it (the runner answers in its own)."""
    if display is None or not isinstance(value, dict):
        return None
    x, y = value.get("x"), value.get("y")
    if not isinstance(x, int) or not isinstance(y, int):
        return None
    mx, my = display.from_runner(x, y)
    return f"X={mx},Y={my}"


def _add_user(b: _Builder, content: Any) -> None:
    parts: list[Block] = (
        [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    )
    blocks: list[Block] = []
    for part in parts:
        if part.get("type") == "text" and part.get("text", "").strip():
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url":
            image, display = _image(part["image_url"]["url"])
            b.display = display or b.display
            if not _into_computer_result(b, image):
                blocks.append(image)
    b.add("user", blocks)


def _into_computer_result(b: _Builder, image: Block) -> bool:
    """Put a screenshot inside the computer tool's last result of this turn, if any."""
    if not b.turns or b.turns[-1]["role"] != "user":
        return False
    for block in reversed(b.turns[-1]["content"]):
        if block.get("type") == "tool_result" and block["tool_use_id"] in b.computer_ids:
            block["content"].append(image)
            return True
    return False


def _image(url: str) -> tuple[Block, Display | None]:
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}, None
    header, _, data = url.partition(",")
    mime = header[5:].split(";")[0] or "image/png"
    data, width, height, original = _scaled(data, mime)
    display = Display(width, height, original) if width else None
    block = {"type": "base64", "media_type": mime, "data": data}
    return {"type": "image", "source": block}, display


@functools.lru_cache(maxsize=8)
def _scaled(data: str, mime: str) -> tuple[str, int, int, tuple[int, int] | None]:
    """(base64, width, height, the original size if scaled); cached: each screenshot is sent
    several times (it stays in the history for keep_screenshots steps)."""
    raw = base64.b64decode(data)
    size = _png_size(raw) if mime == "image/png" else None
    if size is None:
        with Image.open(io.BytesIO(raw)) as img:
            size = img.size
    width, height = size
    target = fit(width, height)
    if target == (width, height):
        return data, width, height, None
    with Image.open(io.BytesIO(raw)) as img:
        out = io.BytesIO()
        img.resize(target, Image.Resampling.LANCZOS).save(out, format=img.format or "PNG")
    return base64.b64encode(out.getvalue()).decode("ascii"), *target, (width, height)


def _png_size(raw: bytes) -> tuple[int, int] | None:
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", raw[16:24])
    return int(width), int(height)


def _answer_every_call(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Anthropic refuses a tool_use without a tool_result in the next user turn (a run
    stopped between a reply and its results leaves one): answer those as not run."""
    out: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        out.append(turn)
        if turn["role"] != "assistant":
            continue
        ids = [b["id"] for b in turn["content"] if b.get("type") == "tool_use"]
        following = turns[i + 1] if i + 1 < len(turns) else None
        if not ids or following is None:
            continue  # the newest assistant turn is answered by the request being built
        answered = {
            b.get("tool_use_id") for b in following["content"] if b.get("type") == "tool_result"
        }
        missing = [
            {"type": "tool_result", "tool_use_id": id_, "is_error": True,
             "content": [{"type": "text", "text": '{"error": "not run"}'}]}
            for id_ in ids if id_ not in answered
        ]  # fmt: skip
        if missing and following["role"] == "user":
            following["content"][:0] = missing
        elif missing:
            out.append({"role": "user", "content": missing})
    return out


def _order_results_first(turns: list[dict[str, Any]]) -> None:
    # tool_result blocks must open their user turn; text and images come after.
    for turn in turns:
        if turn["role"] == "user":
            turn["content"].sort(key=lambda block: block.get("type") != "tool_result")


def _mark_last_user(turns: list[dict[str, Any]]) -> None:
    for turn in reversed(turns):
        if turn["role"] == "user":
            turn["content"][-1] = {**turn["content"][-1], "cache_control": CACHE}
            return
