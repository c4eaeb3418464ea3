"""Image bytes: format sniffing and data URLs."""

from __future__ import annotations

import base64
import binascii
import re

_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,(.*)$", re.DOTALL)
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
_MIME = {ext: mime for mime, ext in _EXTENSIONS.items()}


def sniff_extension(data: bytes) -> str:
    """File extension from the magic bytes; screenshots default to png."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return "png"


def mime_for(name: str) -> str:
    return _MIME.get(name.rpartition(".")[2].lower(), "application/octet-stream")


def decode_data_url(value: str) -> bytes | None:
    """The image bytes of a base64 image data URL, or None if ``value`` is not one."""
    match = _DATA_URL.match(value)
    return None if match is None else decode_base64(match.group(2))


def decode_base64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def data_url(name: str, data: bytes) -> str:
    return f"data:{mime_for(name)};base64,{base64.b64encode(data).decode()}"
