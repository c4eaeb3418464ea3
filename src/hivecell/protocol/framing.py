"""Newline-delimited JSON framing over any anyio byte stream.

The same reader serves unix sockets, TCP and virtio-serial character devices. A frame
that grows past the limit is skipped up to its newline and reported as ``Oversized``
so the peer gets an error instead of the agent running out of memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, ByteSendStream

from hivecell.errors import TooLarge

MAX_FRAME_BYTES = 64 * 1024 * 1024
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Oversized:
    """A frame longer than the limit; its bytes were discarded."""

    size: int


class FrameReader:
    """Yields each line (without the newline) or ``Oversized`` markers."""

    def __init__(self, stream: ByteReceiveStream, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._stream = stream
        self._max = max_bytes
        self._buf = bytearray()
        self._skipping = 0  # bytes discarded of the current oversized frame; 0 = not skipping
        self._searched = 0  # bytes of _buf known to hold no newline: rescanning is quadratic
        self._eof = False

    def __aiter__(self) -> FrameReader:
        return self

    async def __anext__(self) -> bytes | Oversized:
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            if self._eof:
                raise StopAsyncIteration
            await self._fill()

    def _take_frame(self) -> bytes | Oversized | None:
        idx = self._buf.find(b"\n", self._searched)
        self._searched = len(self._buf) if idx < 0 else 0
        if self._skipping:
            return self._skip(idx)
        if idx >= 0:
            line = bytes(self._buf[:idx])
            del self._buf[: idx + 1]
            return line if len(line) <= self._max else Oversized(len(line))
        if len(self._buf) > self._max:
            self._skipping = len(self._buf)
            self._buf.clear()
            self._searched = 0
        elif self._eof and self._buf:
            line = bytes(self._buf)  # last frame without trailing newline
            self._buf.clear()
            return line
        return None

    def _skip(self, idx: int) -> Oversized | None:
        if idx < 0:
            self._skipping += len(self._buf)
            self._buf.clear()
            self._searched = 0
            if not self._eof:
                return None
            size, self._skipping = self._skipping, 0
            return Oversized(size)
        size = self._skipping + idx
        del self._buf[: idx + 1]
        self._skipping = 0
        return Oversized(size)

    async def _fill(self) -> None:
        try:
            chunk = await self._stream.receive(_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._eof = True
            return
        self._buf += chunk


def encode(message: dict[str, Any]) -> bytes:
    """One compact JSON document plus the newline; JSON escapes keep it on one line.

    Strict JSON only: NaN and infinities raise ValueError (no JSON peer can read them).
    """
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (a peer may send "\\ud800" and see it echoed): UTF-8 cannot carry
        # it, ASCII escapes can, and the peer decodes the same string back.
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return text.encode() + b"\n"


class FrameWriter:
    """Serialises writes so concurrent responses never interleave on the wire."""

    def __init__(self, stream: ByteSendStream, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._stream = stream
        self._max = max_bytes
        self._lock = anyio.Lock()
        self.torn = False  # a write was interrupted: part of a frame may be on the wire

    async def send(self, message: dict[str, Any]) -> None:
        """Raises TooLarge, sending nothing, when the frame would exceed the peer's limit."""
        data = encode(message)
        if len(data) > self._max:
            raise TooLarge(
                f"message of {len(data)} bytes exceeds the {self._max}-byte frame limit; "
                "split it (e.g. read_file/write_file in chunks)",
                op=str(message.get("method", "")),
                context={"size": len(data), "limit": self._max},
            )
        async with self._lock:
            if self.torn:  # the peer would read our next frame glued to a half one
                raise anyio.BrokenResourceError("an earlier frame was cut off mid-write")
            try:
                await self._stream.send(data)
            except BaseException:
                self.torn = True
                raise
