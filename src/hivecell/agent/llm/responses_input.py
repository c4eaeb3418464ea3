"""The runner's chat-format history as Responses API input items, rebuilt on every request.

Why the whole input every time, not ``previous_response_id``: the runner's history is the
record of the task. It prunes old screenshots, a person's instructions are inserted into it,
the completion check sends it with one extra question that is then dropped, a paused task
resends it after hours, and a retry after an outage sends the same list again. A chain of
server-side responses would hold a different conversation from the one the trace shows, and
would depend on the vendor keeping it (``store``). So requests go with ``store: false`` and the
vendor's own items (reasoning with its encrypted content, the ``computer_call`` as it came)
travel in the history, on the assistant message (``provider_items``), and are sent back as
they are.

How a step reads: the assistant message's items, then for a ``computer_call`` a
``computer_call_output`` carrying the step's screenshot (the user image message the runner
adds after the tool results) and the acknowledged safety checks, for a ``function_call`` a
``function_call_output`` with the result. A ``computer_call`` that did not run because its
safety checks were not approved is left out with its reasoning, and the model is told why in
a message: sending its output would claim an action that never happened.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from hivecell.agent.llm.responses_actions import COMPUTER_TOOLS
from hivecell.errors import InvalidParams

Item = dict[str, Any]
ENVIRONMENT = "linux"


def _placeholder_png() -> bytes:
    """A 1x1 grey PNG: the screenshot of a step whose image the history pruned. The API
    wants an image in every ``computer_call_output``; a note beside it says it was omitted."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    pixels = zlib.compress(b"\x00\x80")
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


OMITTED_URL = "data:image/png;base64," + base64.b64encode(_placeholder_png()).decode()
OMITTED_NOTE = "[older screenshot omitted]"


@dataclass
class Request:
    instructions: str | None = None
    input: list[Item] = field(default_factory=list)
    has_computer_calls: bool = False


def build_input(messages: list[dict[str, Any]]) -> Request:
    """Input items for ``messages`` (the runner's history, maybe plus one question)."""
    request = Request()
    calls: dict[str, Item] = {}  # call_id -> the computer_call or function_call sent
    used_images: set[int] = set()  # user messages turned into computer_call_output images
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "system":
            _system(request, message)
        elif role == "assistant":
            _assistant(request, message, messages[index + 1 :], calls)
        elif role == "tool":
            _tool_result(request, message, messages, index, calls, used_images)
        elif role == "user" and index not in used_images:
            request.input.append({"role": "user", "content": _user_content(message["content"])})
    request.has_computer_calls = any(c["type"] == "computer_call" for c in calls.values())
    return request


def _system(request: Request, message: dict[str, Any]) -> None:
    text = _text_of(message.get("content"))
    if request.instructions is None:
        request.instructions = text
    else:
        request.input.append({"role": "developer", "content": text})


def _assistant(
    request: Request, message: dict[str, Any], rest: list[dict[str, Any]], calls: dict[str, Item]
) -> None:
    items = message.get("provider_items")
    if not items:
        _plain_assistant(request, message, calls)
        return
    not_run = _unapproved(items, rest)
    for item in items:
        if item.get("type") == "reasoning" and not_run:
            # A reasoning item must be followed by the item it led to; with that one gone,
            # the API would refuse it.
            continue
        if item.get("type") == "computer_call" and item.get("call_id") in not_run:
            continue
        request.input.append(item)
        if item.get("type") in ("computer_call", "function_call"):
            calls[str(item["call_id"])] = item
    for call_id in not_run:
        calls[call_id] = {"type": "dropped", "call_id": call_id}


def _unapproved(items: list[Item], rest: list[dict[str, Any]]) -> set[str]:
    """computer_calls with safety checks whose result carries no acknowledgement."""
    acknowledged = {
        m.get("tool_call_id")
        for m in rest
        if m.get("role") == "tool" and m.get("acknowledged_safety_checks")
    }
    return {
        str(item["call_id"])
        for item in items
        if item.get("type") == "computer_call"
        and item.get("pending_safety_checks")
        and item.get("call_id") not in acknowledged
    }


def _plain_assistant(request: Request, message: dict[str, Any], calls: dict[str, Item]) -> None:
    text = _text_of(message.get("content"))
    if text:
        request.input.append({"role": "assistant", "content": text})
    for call in message.get("tool_calls") or []:
        item = {
            "type": "function_call",
            "call_id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"].get("arguments") or "{}",
        }
        request.input.append(item)
        calls[str(call["id"])] = item


def _tool_result(
    request: Request,
    message: dict[str, Any],
    messages: list[dict[str, Any]],
    index: int,
    calls: dict[str, Item],
    used_images: set[int],
) -> None:
    call_id = str(message.get("tool_call_id"))
    content = str(message.get("content") or "")
    call = calls.get(call_id)
    kind = call["type"] if call else "function_call"
    if kind == "function_call":
        result = {"type": "function_call_output", "call_id": call_id, "output": content}
        request.input.append(result)
        return
    if kind == "dropped":
        note = f"Your computer action (call {call_id}) was not run: {_error_of(content)}"
        request.input.append({"role": "user", "content": note})
        return
    shot_index, url = _next_screenshot(messages, index)
    if shot_index is not None:
        used_images.add(shot_index)
    output: Item = {
        "type": "computer_call_output",
        "call_id": call_id,
        "output": {"type": "computer_screenshot", "image_url": url},
    }
    if message.get("acknowledged_safety_checks"):
        output["acknowledged_safety_checks"] = message["acknowledged_safety_checks"]
    request.input.append(output)
    if url == OMITTED_URL:
        request.input.append({"role": "user", "content": f"{OMITTED_NOTE} (call {call_id})"})
    error = _error_of(content)
    if error:  # the screenshot alone would not say that the action failed, or why
        request.input.append({"role": "user", "content": f"The computer action failed: {error}"})


def _next_screenshot(messages: list[dict[str, Any]], index: int) -> tuple[int | None, str]:
    """The step's screenshot after the tool results at ``index``: its message and URL."""
    for later in range(index + 1, len(messages)):
        message = messages[later]
        if message.get("role") == "tool":
            continue
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            break
        for part in message["content"]:
            if part.get("type") == "image_url":
                return later, str(part["image_url"]["url"])
        return later, OMITTED_URL  # pruned: only its text placeholder is left
    return None, OMITTED_URL


def _error_of(content: str) -> str | None:
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return str(value["error"]) if isinstance(value, dict) and value.get("error") else None


def _user_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") == "image_url":
            image = part["image_url"]
            parts.append(
                {
                    "type": "input_image",
                    "image_url": image["url"],
                    "detail": image.get("detail", "auto"),
                }
            )
        else:
            parts.append({"type": "input_text", "text": str(part.get("text", ""))})
    return parts


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return ""


# --- tools ---------------------------------------------------------------------------------
def build_tools(
    tools: list[dict[str, Any]] | None, messages: list[dict[str, Any]], *, history_calls: bool
) -> list[Item]:
    """hivecell's function tools -> the computer tool (for the GUI tools) + function tools.

    The completion check sends no tools; the computer tool is still declared when the input
    holds computer calls, so the input refers to a tool the request knows."""
    names = {t["function"]["name"] for t in tools or []}
    out: list[Item] = []
    if names & COMPUTER_TOOLS or (not tools and history_calls):
        width, height = screenshot_size(messages)
        out.append(
            {
                "type": "computer_use_preview",
                "display_width": width,
                "display_height": height,
                "environment": ENVIRONMENT,
            }
        )
    for tool in tools or []:
        function = tool["function"]
        if function["name"] in COMPUTER_TOOLS:
            continue
        out.append(
            {
                "type": "function",
                "name": function["name"],
                "description": function.get("description", ""),
                "parameters": function.get("parameters", {"type": "object", "properties": {}}),
                "strict": False,
            }
        )
    return out


def screenshot_size(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """Width and height of the newest screenshot in ``messages``: the display the model
    sees, so its coordinates are screenshot pixels like every other model's."""
    for message in reversed(messages):
        content = message.get("content")
        for part in reversed(content) if isinstance(content, list) else ():
            if part.get("type") == "image_url":
                return _png_size(str(part["image_url"]["url"]))
    raise InvalidParams(
        "no screenshot in the conversation: the computer tool needs one to know the display "
        "size (the runner sends one first; a caller must too)",
        op="llm.responses",
    )


def _png_size(url: str) -> tuple[int, int]:
    try:
        head = base64.b64decode(url.split(",", 1)[1][:48])
    except (IndexError, binascii.Error) as exc:
        raise InvalidParams(
            f"screenshot is not a base64 data URL: {exc}", op="llm.responses"
        ) from exc
    if not head.startswith(b"\x89PNG\r\n\x1a\n") or len(head) < 24:
        raise InvalidParams("screenshot is not a PNG (the runner sends PNGs)", op="llm.responses")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)
