"""The terminal framing on the attach WebSocket and on each supervisor's unix socket.

One frame: ``type`` (1 byte), ``agent`` (2 bytes, the agent within the session: 0 today),
``length`` (4 bytes, big-endian), then ``length`` bytes of payload. Types are the seed's
``stdout``, ``stderr``, ``control`` and ``resize``, plus ``stdin`` for what a viewer types.
A resize payload is two big-endian u16 (cols, rows); a control payload is a JSON object.

Every frame is checked before anything acts on it: unknown type, a length over
``MAX_PAYLOAD``, a truncated or over-long message, a resize that is not exactly 4 bytes of
sane sizes, or control that is not a small JSON object raise ``BadFrame``.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any

from hivecell.errors import InvalidParams

HEADER = struct.Struct("!BHI")
RESIZE = struct.Struct("!HH")
MAX_PAYLOAD = 256 * 1024
MAX_CONTROL = 8 * 1024
MAX_CELLS = 1000  # cols or rows


class BadFrame(InvalidParams):
    code = "bad_frame"


class FrameType(enum.IntEnum):
    STDOUT = 1
    STDERR = 2
    CONTROL = 3
    RESIZE = 4
    STDIN = 5


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes
    agent: int = 0

    def control(self) -> dict[str, Any]:
        return parse_control(self.payload)

    def size(self) -> tuple[int, int]:
        return parse_resize(self.payload)


def encode(kind: FrameType, payload: bytes, agent: int = 0) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise BadFrame(f"payload of {len(payload)} bytes over {MAX_PAYLOAD}", op="encode_frame")
    return HEADER.pack(kind, agent, len(payload)) + payload


def control(message: dict[str, Any]) -> bytes:
    return encode(FrameType.CONTROL, json.dumps(message, separators=(",", ":")).encode())


def resize(cols: int, rows: int) -> bytes:
    return encode(FrameType.RESIZE, RESIZE.pack(cols, rows))


def parse_header(header: bytes) -> tuple[FrameType, int, int]:
    """(type, agent, length) of a 7-byte header; checks type and length before any payload."""
    if len(header) != HEADER.size:
        raise BadFrame(f"truncated header: {len(header)} of {HEADER.size} bytes", op="frame")
    kind, agent, length = HEADER.unpack(header)
    try:
        frame_type = FrameType(kind)
    except ValueError:
        raise BadFrame(f"unknown frame type {kind}", op="frame") from None
    if length > MAX_PAYLOAD:
        raise BadFrame(f"frame length {length} over {MAX_PAYLOAD}", op="frame")
    return frame_type, agent, length


def decode(message: bytes) -> Frame:
    """Exactly one frame (a WebSocket message): no bytes missing, none left over."""
    kind, agent, length = parse_header(message[: HEADER.size])
    payload = message[HEADER.size :]
    if len(payload) != length:
        raise BadFrame(f"frame says {length} payload bytes, message has {len(payload)}", op="frame")
    frame = Frame(kind, payload, agent)
    if kind is FrameType.RESIZE:
        parse_resize(payload)
    elif kind is FrameType.CONTROL:
        parse_control(payload)
    return frame


def parse_resize(payload: bytes) -> tuple[int, int]:
    if len(payload) != RESIZE.size:
        raise BadFrame(f"resize payload is {len(payload)} bytes, not 4", op="frame")
    cols, rows = RESIZE.unpack(payload)
    if not (1 <= cols <= MAX_CELLS and 1 <= rows <= MAX_CELLS):
        raise BadFrame(f"resize to {cols}x{rows}: each side 1..{MAX_CELLS}", op="frame")
    return cols, rows


def parse_control(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_CONTROL:
        raise BadFrame(f"control payload over {MAX_CONTROL} bytes", op="frame")
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadFrame("control payload is not JSON", op="frame") from None
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise BadFrame("control payload must be a JSON object with an 'op'", op="frame")
    return message
