"""The conversation sent to the model, with old screenshots pruned so long runs fit."""

from __future__ import annotations

import base64
from typing import Any

Message = dict[str, Any]


def image_message(text: str, png: bytes, *, mime: str = "image/png") -> Message:
    url = f"data:{mime};base64,{base64.b64encode(png).decode()}"
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


class History:
    def __init__(self, system: str, task: str, *, keep_images: int = 3) -> None:
        self.messages: list[Message] = [
            {"role": "system", "content": system},
            {"role": "user", "content": task},
        ]
        self.keep_images = keep_images

    def add(self, message: Message) -> None:
        self.messages.append(message)
        self._prune()

    def _prune(self) -> None:
        """Replace all but the newest ``keep_images`` screenshots with a placeholder."""
        seen = 0
        for message in reversed(self.messages):
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for i, part in enumerate(content):
                if part.get("type") != "image_url":
                    continue
                seen += 1
                if seen > self.keep_images:
                    content[i] = {"type": "text", "text": "[older screenshot omitted]"}

    def image_count(self) -> int:
        return sum(
            1
            for m in self.messages
            if isinstance(m.get("content"), list)
            for p in m["content"]
            if p.get("type") == "image_url"
        )
