"""``computer_call`` actions of OpenAI's ``computer_use_preview`` tool as hivecell tool calls.

The runner executes hivecell's own tools (agent/tools.py); each action of the vendor tool maps
onto one of them, in the same screenshot-pixel coordinates (the tool's display size is the
screenshot the model sees, so ``ToolBox`` scales them to the screen as for any model). An
action that has no faithful mapping becomes a call whose ``parse_error`` says why: the runner
tells the model instead of doing something else than it asked.
"""

from __future__ import annotations

import json
from typing import Any

from hivecell.agent.llm.response import SafetyCheck, ToolCall

# hivecell tools the computer tool stands for: offered as functions they would be a second,
# competing way to act on the screen that the model was not trained on.
COMPUTER_TOOLS = frozenset(
    {
        "screenshot",
        "mouse_click",
        "mouse_double_click",
        "mouse_move",
        "mouse_drag",
        "scroll",
        "keyboard_type",
        "keyboard_key",
    }
)
# The vendor's scroll distances are pixels (Playwright's mouse.wheel); X scrolls in notches.
SCROLL_PX_PER_NOTCH = 100
WAIT_S = 2.0  # the action has no duration; OpenAI's reference loop sleeps about this long

_BUTTONS = {"left": "left", "right": "right", "middle": "middle", "wheel": "middle"}
# X has no back/forward buttons in hivecell's pointer; every browser and file manager binds
# them to these keys, which is what a person's side buttons do there.
_HISTORY_KEYS = {"back": "alt+Left", "forward": "alt+Right"}
# The vendor's key names (upper or lower case) -> names the guest's keyboard_key accepts.
_KEYS = {
    "alt": "alt", "option": "alt", "ctrl": "ctrl", "control": "ctrl", "shift": "shift",
    "cmd": "super", "command": "super", "meta": "super", "super": "super", "win": "super",
    "enter": "Return", "return": "Return", "esc": "Escape", "escape": "Escape",
    "space": "space", "backspace": "BackSpace", "tab": "Tab", "delete": "Delete",
    "del": "Delete", "insert": "Insert", "home": "Home", "end": "End", "pageup": "Prior",
    "pagedown": "Next", "arrowup": "Up", "up": "Up", "arrowdown": "Down", "down": "Down",
    "arrowleft": "Left", "left": "Left", "arrowright": "Right", "right": "Right",
    "capslock": "Caps_Lock", "+": "plus", "/": "slash", "\\": "backslash",
}  # fmt: skip


class BadAction(Exception):
    """The action cannot be run as asked; the message goes to the model."""


def computer_tool_call(item: dict[str, Any]) -> ToolCall:
    """The hivecell call for one ``computer_call`` output item; never raises."""
    call_id = str(item.get("call_id") or item.get("id") or "")
    checks = [SafetyCheck.model_validate(c) for c in item.get("pending_safety_checks") or []]
    action = _single_action(item)
    kind = str(action.get("type")) if isinstance(action, dict) else "?"
    raw = json.dumps(action)
    try:
        name, arguments = map_action(action)
    except BadAction as exc:
        return ToolCall(
            id=call_id,
            name=f"computer.{kind}",
            arguments=None,
            raw_arguments=raw,
            parse_error=f"computer action {raw} was not run: {exc}",
            safety_checks=checks,
        )
    return ToolCall(
        id=call_id,
        name=name,
        arguments=arguments,
        raw_arguments=json.dumps(arguments),
        safety_checks=checks,
    )


def _single_action(item: dict[str, Any]) -> Any:
    action = item.get("action")
    if action is None and isinstance(item.get("actions"), list) and len(item["actions"]) == 1:
        return item["actions"][0]
    return action


def map_action(action: Any) -> tuple[str, dict[str, Any]]:
    """(hivecell tool, its arguments) for one action; ``BadAction`` when there is none."""
    if not isinstance(action, dict):
        raise BadAction(
            "the computer_call has no single action object (batched actions are not supported)"
        )
    kind = action.get("type")
    mapper = _MAPPERS.get(str(kind))
    if mapper is None:
        raise BadAction(f"unknown action type {kind!r}; known: {', '.join(_MAPPERS)}")
    return mapper(action)


def _click(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    button = a.get("button", "left")
    if button in _HISTORY_KEYS:
        _no_held_keys(a)
        return "keyboard_key", {"keys": _HISTORY_KEYS[button]}
    if button not in _BUTTONS:
        raise BadAction(f"unknown button {button!r}; use left, right, wheel, back or forward")
    return "mouse_click", {**_point(a), "button": _BUTTONS[button], **_held(a)}


def _double_click(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "mouse_click", {**_point(a), "clicks": 2, **_held(a)}


def _move(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    _no_held_keys(a)
    return "mouse_move", _point(a)


def _drag(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    _no_held_keys(a)
    path = a.get("path")
    if not isinstance(path, list) or len(path) < 2:
        raise BadAction("drag needs a path of at least two points [{x, y}, {x, y}]")
    if len(path) > 2:
        # The guest drags in a straight line; bending it through the points silently would
        # be a different gesture (a lasso is not a line).
        raise BadAction(
            f"drag paths of {len(path)} points are not supported, only straight drags: "
            "send a path of two points (start and end)"
        )
    start, end = (_point(p) if isinstance(p, dict) else _point({}) for p in path)
    return "mouse_drag", {
        "from_x": start["x"],
        "from_y": start["y"],
        "to_x": end["x"],
        "to_y": end["y"],
    }


def _scroll(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    dx, dy = _int(a, "scroll_x", 0), _int(a, "scroll_y", 0)
    return "scroll", {**_point(a), "dx": notches(dx), "dy": notches(dy), **_held(a)}


def notches(pixels: int) -> int:
    """Pixels -> wheel notches, at least one for any non-zero distance."""
    if pixels == 0:
        return 0
    count = max(1, round(abs(pixels) / SCROLL_PX_PER_NOTCH))
    return count if pixels > 0 else -count


def _type(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    text = a.get("text")
    if not isinstance(text, str) or not text:
        raise BadAction("type needs a non-empty text")
    return "keyboard_type", {"text": text}


def _keypress(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    keys = a.get("keys")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise BadAction('keypress needs a non-empty list of key names, e.g. ["CTRL", "S"]')
    return "keyboard_key", {"keys": "+".join(key_name(k) for k in keys)}


def key_name(key: str) -> str:
    """A vendor key name as the guest names it: CTRL -> ctrl, ENTER -> Return, A -> a."""
    lowered = key.lower()
    if lowered in _KEYS:
        return _KEYS[lowered]
    if len(key) == 1:
        return lowered if key.isalpha() else key
    if lowered[0] == "f" and lowered[1:].isdigit():
        return f"F{lowered[1:]}"
    return key  # an X keysym name already (Page_Down, KP_Enter, ...): the guest checks it


def _wait(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "wait", {"seconds": WAIT_S}


def _screenshot(a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "screenshot", {}


def _point(a: dict[str, Any]) -> dict[str, int]:
    return {"x": _int(a, "x"), "y": _int(a, "y")}


def _int(a: dict[str, Any], key: str, default: int | None = None) -> int:
    value = a.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = a.get("type", "action")
        raise BadAction(f"{kind} needs an integer {key} (screenshot pixels), got {value!r}")
    return round(value)


def _held(a: dict[str, Any]) -> dict[str, str]:
    """``keys`` on a click or scroll: held down meanwhile (shift+click, ctrl+wheel)."""
    keys = a.get("keys")
    if not keys:
        return {}
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise BadAction('keys held during an action must be a list of key names, e.g. ["SHIFT"]')
    return {"hold": "+".join(key_name(k) for k in keys)}


def _no_held_keys(a: dict[str, Any]) -> None:
    if a.get("keys"):
        raise BadAction(
            f"holding keys {a['keys']} during {a.get('type')} is not supported: "
            "press modifiers with a keypress, or use another way"
        )


_MAPPERS = {
    "click": _click,
    "double_click": _double_click,
    "drag": _drag,
    "move": _move,
    "scroll": _scroll,
    "type": _type,
    "keypress": _keypress,
    "wait": _wait,
    "screenshot": _screenshot,
}
