"""``edit_file``: a text replacement or a line insertion, composed of the guest's read and write.

Anthropic's text editor tool edits files in place (``str_replace``, ``insert``); any model may
use it. The edit is refused, never guessed, when the text is missing or occurs more than once,
or when the file is too large to have been read whole (writing back a part would cut it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hivecell.errors import InvalidParams

GuestCall = Callable[[str, dict[str, Any]], Awaitable[Any]]
_OP = "edit_file"


async def edit_file(
    call: GuestCall, path: str, *, old_str: str | None, insert_line: int | None, new_str: str
) -> dict[str, Any]:
    if (old_str is None) == (insert_line is None):
        raise InvalidParams(
            "edit_file needs exactly one of old_str (to replace) or insert_line (to insert)",
            op=_OP,
        )
    text = await _read_whole(call, path)
    if old_str is not None:
        edited = replace_once(text, old_str, new_str, path)
    else:
        assert insert_line is not None
        edited = insert_after(text, insert_line, new_str, path)
    # overwrite: the file exists (it was just read), so this never creates one elsewhere.
    await call("write_file", {"path": path, "content": edited, "mode": "overwrite"})
    return {"path": path, "edited": True, "size": len(edited.encode())}


async def _read_whole(call: GuestCall, path: str) -> str:
    result = await call("read_file", {"path": path})
    if result.get("truncated"):
        raise InvalidParams(
            f"{path} is too large to edit in place (the guest read only part of it); "
            "edit it with a shell command (sed) instead",
            op=_OP,
            context={"path": path},
        )
    return str(result.get("content", ""))


def replace_once(text: str, old: str, new: str, path: str) -> str:
    if not old:
        raise InvalidParams("old_str is empty: give the exact text to replace", op=_OP)
    count = text.count(old)
    if count != 1:
        where = "does not occur" if count == 0 else f"occurs {count} times"
        raise InvalidParams(
            f"old_str {where} in {path}; it must match exactly one place (include more "
            "surrounding lines to make it unique, and copy whitespace exactly)",
            op=_OP,
            context={"path": path, "matches": count},
        )
    return text.replace(old, new, 1)


def insert_after(text: str, line: int, new: str, path: str) -> str:
    lines = text.splitlines(keepends=True)
    if line > len(lines):
        raise InvalidParams(
            f"insert_line {line} is past the end of {path} ({len(lines)} lines)",
            op=_OP,
            context={"path": path, "lines": len(lines)},
        )
    if line and not lines[line - 1].endswith("\n"):
        lines[line - 1] += "\n"  # inserting after a last line without its newline
    block = new if new.endswith("\n") else new + "\n"
    return "".join([*lines[:line], block, *lines[line:]])
