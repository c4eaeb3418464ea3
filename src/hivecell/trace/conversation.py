"""Shrinking a model conversation for conversation.json: inline images become file references."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hivecell.trace.images import decode_base64, decode_data_url
from hivecell.trace.models import SCREENSHOTS_DIR

# Saves image bytes under screenshots/ and returns the file name it used.
SaveImage = Callable[[bytes], str]


def externalize_images(value: Any, save: SaveImage) -> Any:
    """A copy of ``value`` with image data URLs (OpenAI style) and base64 image sources
    (Anthropic style) replaced by ``screenshots/NAME`` references."""
    if isinstance(value, str):
        return _replace_data_url(value, save)
    if isinstance(value, list):
        return [externalize_images(item, save) for item in value]
    if isinstance(value, dict):
        return _replace_base64_source(value, save) or {
            key: externalize_images(item, save) for key, item in value.items()
        }
    return value


def _replace_data_url(value: str, save: SaveImage) -> str:
    data = decode_data_url(value) if value.startswith("data:image/") else None
    return value if data is None else f"{SCREENSHOTS_DIR}/{save(data)}"


def _replace_base64_source(value: dict[str, Any], save: SaveImage) -> dict[str, Any] | None:
    if value.get("type") != "base64" or not isinstance(value.get("data"), str):
        return None
    data = decode_base64(value["data"])
    if data is None:
        return None
    rest = {key: item for key, item in value.items() if key not in ("type", "data")}
    return rest | {"type": "file", "path": f"{SCREENSHOTS_DIR}/{save(data)}"}
