from __future__ import annotations

import io

import pytest
from PIL import Image


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, "PNG")
    return buffer.getvalue()
