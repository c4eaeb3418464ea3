"""The screenshot PNG writer: any decoder reads back exactly the pixels given."""

from __future__ import annotations

import io
import random
import zlib

import pytest
from PIL import Image

from hivecell.guest.pngenc import encode_rgb


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (7, 5), (1280, 800), (641, 1)])
def test_pixels_come_back_unchanged(size: tuple[int, int]) -> None:
    width, height = size
    rng = random.Random(width * 1000 + height)
    rgb = (
        bytes(rng.randrange(256) for _ in range(width * height * 3))
        if width < 100
        else (bytes(range(256)) * (width * height * 3 // 256 + 1))[: width * height * 3]
    )
    image = Image.open(io.BytesIO(encode_rgb(rgb, width, height)))
    image.load()
    assert (image.mode, image.size) == ("RGB", size)
    assert image.tobytes() == rgb


def test_chunks_carry_valid_checksums() -> None:
    data = encode_rgb(b"\x10\x20\x30" * 4, 2, 2)
    offset = 8
    kinds = []
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        crc = int.from_bytes(data[offset + 8 + length : offset + 12 + length], "big")
        assert crc == zlib.crc32(kind + body), kind
        kinds.append(kind)
        offset += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]


@pytest.mark.parametrize(("length", "width", "height"), [(5, 1, 2), (6, 0, 2), (0, 0, 0)])
def test_a_wrong_size_is_refused(length: int, width: int, height: int) -> None:
    with pytest.raises(ValueError, match="RGB pixels"):
        encode_rgb(b"\x00" * length, width, height)
