"""PNG encoding for screenshots, without a per-row filter search.

Pillow's PNG encoder tries the five PNG filters on every row and keeps the best (adaptive
filtering): on a 1280x800 screen that search is most of its ~20 ms, more than zlib's own
work at level 1. A desktop screenshot (flat areas, text, gradients) compresses about as
well with no filter at all and zlib's matching doing the work, so this writes every row with
filter 0 (None) and one zlib stream: the same pixels, any PNG decoder reads it.
"""

from __future__ import annotations

import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOUR_RGB = 2


def encode_rgb(rgb: bytes, width: int, height: int, level: int = 1) -> bytes:
    """``rgb``: 3 bytes per pixel, rows top to bottom (Pillow's ``tobytes()`` of an RGB image)."""
    stride = width * 3
    if width <= 0 or height <= 0 or len(rgb) != stride * height:
        raise ValueError(f"{len(rgb)} bytes are not {width}x{height} RGB pixels")
    # Each row is preceded by its filter type byte: 0 for every row.
    rows = bytearray((stride + 1) * height)
    for y in range(height):
        start = y * (stride + 1) + 1
        rows[start : start + stride] = rgb[y * stride : (y + 1) * stride]
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_RGB, 0, 0, 0)
    return b"".join(
        (
            SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows, level)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
