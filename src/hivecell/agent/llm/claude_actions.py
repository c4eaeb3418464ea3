"""The model's ``tool_use`` blocks as hivecell ``ToolCall``s (the other half of claude_tools).

A ``tool_use`` becomes a hivecell ``ToolCall`` whose ``arguments`` are hivecell's and whose
``raw_arguments`` are the model's own input, so the conversation sent back shows the model
exactly what it asked for (``claude_tools.native_tool`` recovers the native tool from the
call). An action hivecell cannot do comes back as a call with a ``parse_error``: the runner
answers it with an error the model reads, it is never dropped.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from hivecell.agent.llm.claude_tools import BASH, COMPUTER, EDITOR, EDITOR_COMMANDS, Display
from hivecell.agent.llm.response import ToolCall


# --- tool_use -> ToolCall ------------------------------------------------------------------
class BadAction(Exception):
    """The model's input cannot become a hivecell call; the message goes back to it."""


def to_call(call_id: str, name: str, raw: Any, display: Display | None) -> ToolCall:
    """Never raises: what cannot be done becomes a call carrying ``parse_error``."""
    text = json.dumps(raw)
    try:
        if not isinstance(raw, dict):
            raise BadAction(f"the input of {name} must be a JSON object")
        tool, arguments = _translate(name, raw, display)
    except BadAction as bad:
        return ToolCall(
            id=call_id, name=name, arguments=None, raw_arguments=text, parse_error=str(bad)
        )
    return ToolCall(id=call_id, name=tool, arguments=arguments, raw_arguments=text)


def _translate(
    name: str, raw: dict[str, Any], display: Display | None
) -> tuple[str, dict[str, Any]]:
    if name == COMPUTER:
        if display is None:
            raise BadAction("the computer tool was not offered in this step")
        return computer_action(raw, display)
    if name == BASH:
        return bash_command(raw)
    if name in (EDITOR, "str_replace_editor"):
        return editor_command(raw)
    return name, raw  # a custom tool: hivecell's own schema


# --- the computer tool -----------------------------------------------------------------------
_CLICKS: dict[str, tuple[str, dict[str, Any]]] = {
    "left_click": ("mouse_click", {}),
    "right_click": ("mouse_click", {"button": "right"}),
    "middle_click": ("mouse_click", {"button": "middle"}),
    "double_click": ("mouse_click", {"clicks": 2}),
    "triple_click": ("mouse_click", {"clicks": 3}),
}
_SCROLL = {"up": (0, -1), "down": (0, 1), "left": (-1, 0), "right": (1, 0)}
ACTIONS = (
    *_CLICKS,
    "mouse_move",
    "left_click_drag",
    "left_mouse_down",
    "left_mouse_up",
    "scroll",
    "type",
    "key",
    "hold_key",
    "wait",
    "screenshot",
    "cursor_position",
    "zoom",
)


def computer_action(raw: dict[str, Any], display: Display) -> tuple[str, dict[str, Any]]:
    action = raw.get("action")
    if action in _CLICKS:
        tool, extra = _CLICKS[action]
        return tool, {**_point(raw, "coordinate", display), **extra, **_held(raw)}
    if action in ("left_mouse_down", "left_mouse_up"):
        if raw.get("coordinate") is not None:
            raise BadAction(f"{action} presses where the pointer is: mouse_move there first")
        return ("mouse_down" if action == "left_mouse_down" else "mouse_up"), {}
    if action == "mouse_move":
        return "mouse_move", _point(raw, "coordinate", display)
    if action == "left_click_drag":
        start = _point(raw, "start_coordinate", display)
        end = _point(raw, "coordinate", display)
        return "mouse_drag", {
            "from_x": start["x"],
            "from_y": start["y"],
            "to_x": end["x"],
            "to_y": end["y"],
        }
    if action == "scroll":
        return "scroll", _scroll(raw, display)
    if action == "type":
        return "keyboard_type", {"text": _text(raw, action)}
    if action == "key":
        return "keyboard_key", {"keys": _keys(_text(raw, action))}
    if action == "hold_key":
        return "keyboard_hold", {"keys": _keys(_text(raw, action)), "seconds": raw.get("duration")}
    if action == "wait":
        return "wait", {"seconds": raw.get("duration", 1)}
    if action == "screenshot":
        return "screenshot", {}
    if action == "cursor_position":
        return "cursor_position", {}  # claude_messages maps the answer to the model's pixels
    if action == "zoom":
        return "zoom", _zoom(raw, display)
    raise BadAction(f"unknown computer action {action!r}; actions: {', '.join(ACTIONS)}")


def _point(raw: dict[str, Any], field: str, display: Display) -> dict[str, int]:
    value = raw.get(field)
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise BadAction(f"{raw.get('action')}: {field} must be [x, y] in integer pixels")
    x, y = value
    if not (0 <= x < display.width and 0 <= y < display.height):
        raise BadAction(
            f"{raw.get('action')}: {field} {[x, y]} is outside the screen "
            f"({display.width}x{display.height} pixels)"
        )
    sx, sy = display.to_runner(x, y)
    return {"x": sx, "y": sy}


def _scroll(raw: dict[str, Any], display: Display) -> dict[str, Any]:
    direction = raw.get("scroll_direction")
    amount = raw.get("scroll_amount", 3)
    if direction not in _SCROLL:
        raise BadAction("scroll: scroll_direction must be up, down, left or right")
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount <= 100:
        raise BadAction("scroll: scroll_amount must be a whole number of notches, 0 to 100")
    dx, dy = _SCROLL[direction]
    point = _point(raw, "coordinate", display)
    return {**point, "dx": dx * amount, "dy": dy * amount, **_held(raw)}


def _held(raw: dict[str, Any]) -> dict[str, str]:
    """A click's or scroll's ``text``: the keys held meanwhile (shift+click, ctrl+wheel)."""
    text = raw.get("text")
    if text is None or text == "":
        return {}
    if not isinstance(text, str):
        raise BadAction(f"{raw.get('action')}: text (the keys to hold) must be a string")
    return {"hold": _keys(text)}


def _zoom(raw: dict[str, Any], display: Display) -> dict[str, Any]:
    """``region`` [x0, y0, x1, y1] in the model's pixels -> hivecell's zoom tool, enlarged
    so the region fills about one screenshot (never below the screen's own resolution)."""
    region = raw.get("region")
    if (
        not isinstance(region, list | tuple)
        or len(region) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in region)
    ):
        raise BadAction("zoom: region must be [x0, y0, x1, y1] in integer pixels")
    x0, y0, x1, y1 = region
    if not (0 <= x0 < x1 <= display.width and 0 <= y0 < y1 <= display.height):
        raise BadAction(
            f"zoom: region {list(region)} must have x0 < x1 and y0 < y1 inside the screen "
            f"({display.width}x{display.height} pixels)"
        )
    sw, sh = display.source or (display.width, display.height)
    left, top = round(x0 * sw / display.width), round(y0 * sh / display.height)
    right, bottom = round(x1 * sw / display.width), round(y1 * sh / display.height)
    width, height = max(1, min(right, sw) - left), max(1, min(bottom, sh) - top)
    enlarge = min(display.width / (x1 - x0), display.height / (y1 - y0))
    runner_per_model = width / (x1 - x0)  # the zoom tool counts from the runner's screenshot
    zoom = min(8.0, max(1.0, enlarge / runner_per_model))
    return {"x": left, "y": top, "width": width, "height": height, "zoom": zoom}


def _text(raw: dict[str, Any], action: str) -> str:
    text = raw.get("text")
    if not isinstance(text, str) or not text:
        raise BadAction(f"{action}: text is required")
    return text


def _keys(text: str) -> str:
    # xdotool takes several combos separated by spaces; hivecell presses one per call.
    combos = text.split()
    if len(combos) != 1:
        raise BadAction(
            f"key: {text!r} is {len(combos)} key presses; send one combination per key "
            "action (e.g. 'ctrl+s', 'Return')"
        )
    return combos[0]


# --- bash and the text editor ----------------------------------------------------------------
def bash_command(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if raw.get("restart"):
        raise BadAction(
            "bash restart is not needed: every command runs in a fresh shell (state such as "
            "cd or variables does not carry over; chain commands with &&)"
        )
    command = raw.get("command")
    if not isinstance(command, str) or not command.strip():
        raise BadAction("bash: command is required")
    return "run_shell", {"command": command}


def editor_command(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    command, path = raw.get("command"), raw.get("path")
    if command not in EDITOR_COMMANDS:
        raise BadAction(
            f"text editor command {command!r} is not supported; commands: "
            f"{', '.join(EDITOR_COMMANDS)} (undo_edit is not: edit the file again)"
        )
    if not isinstance(path, str) or not path:
        raise BadAction(f"{command}: path is required")
    if command == "view":
        if raw.get("view_range") is not None:
            return "run_shell", {"command": _lines_command(path, raw["view_range"])}
        return "read_file", {"path": path}
    if command == "create":
        return "write_file", {"path": path, "content": _string(raw, "file_text", command)}
    if command == "str_replace":
        old, new = _string(raw, "old_str", command), raw.get("new_str") or ""
        return "edit_file", {"path": path, "old_str": old, "new_str": new}
    line = raw.get("insert_line")
    # text_editor_20250728 names the text insert_text; the older versions new_str.
    text = raw.get("insert_text", raw.get("new_str"))
    if not isinstance(text, str):
        raise BadAction("insert: insert_text is required")
    return "edit_file", {"path": path, "insert_line": line, "new_str": text}


def _lines_command(path: str, view_range: Any) -> str:
    """``view`` of some lines, numbered like Anthropic's editor shows them: composed from
    ``run_shell`` (``read_file`` reads whole files), so it is traced and approved as one."""
    if (
        not isinstance(view_range, list)
        or len(view_range) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in view_range)
        or view_range[0] < 1
        or not (view_range[1] == -1 or view_range[1] >= view_range[0])
    ):
        raise BadAction("view: view_range must be [first, last] line numbers (last -1: to the end)")
    first, last = view_range
    end = "$" if last == -1 else str(last)
    return f"sed -n '{first},{end}{{=;p}}' -- {shlex.quote(path)} | sed 'N;s/\\n/\\t/'"


def _string(raw: dict[str, Any], field: str, command: str) -> str:
    value = raw.get(field)
    if not isinstance(value, str):
        raise BadAction(f"{command}: {field} is required")
    return value
