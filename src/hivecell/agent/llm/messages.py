"""Building chat messages with images: PNG/JPEG bytes become ``data:`` URL content parts."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any, Literal

from hivecell.errors import InvalidParams

Detail = Literal["auto", "low", "high"]

_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}


def image_mime(data: bytes) -> str:
    """The MIME type from the file's magic bytes; only PNG and JPEG are accepted."""
    for magic, mime in _SIGNATURES.items():
        if data.startswith(magic):
            return mime
    raise InvalidParams(
        "image is neither PNG nor JPEG (checked the first bytes); convert it before sending",
        op="llm.image",
        context={"head": data[:8].hex()},
    )


def image_part(data: bytes, *, detail: Detail | None = None) -> dict[str, Any]:
    """An ``image_url`` content part carrying the image inline as a base64 ``data:`` URL."""
    url = f"data:{image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"
    image: dict[str, Any] = {"url": url}
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def user_message(
    text: str, images: Iterable[bytes] = (), *, detail: Detail | None = None
) -> dict[str, Any]:
    """A user message: the text first, then each image, in order."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts.extend(image_part(data, detail=detail) for data in images)
    return {"role": "user", "content": parts}
