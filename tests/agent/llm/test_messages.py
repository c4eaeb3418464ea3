"""Image content parts for vision prompts."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from hivecell.agent.llm import image_part, user_message
from hivecell.errors import InvalidParams


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_png_and_jpeg_become_data_urls() -> None:
    jpeg = encoded("JPEG")
    part = image_part(jpeg, detail="low")
    assert part["image_url"]["detail"] == "low"
    prefix, data = part["image_url"]["url"].split(",", 1)
    assert prefix == "data:image/jpeg;base64" and base64.b64decode(data) == jpeg
    message = user_message("look", [encoded("PNG"), jpeg])
    kinds = [p["type"] for p in message["content"]]
    assert message["role"] == "user" and kinds == ["text", "image_url", "image_url"]
    assert message["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_other_formats_are_refused_with_a_typed_error() -> None:
    with pytest.raises(InvalidParams, match="neither PNG nor JPEG"):
        image_part(encoded("GIF"))
