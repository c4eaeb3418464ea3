"""hivecell's tools as Anthropic's native tools (claude_actions maps the calls back).

The GUI tools become ONE ``computer`` tool (the version the model was trained on, from
``TOOL_VERSIONS``), ``run_shell`` becomes ``bash`` and the file tools the text editor
(``str_replace_based_edit_tool``); every other tool (ask_user, open_app, clipboard, host
tools, ...) is offered as an ordinary custom tool with its own schema. ``native_tool`` turns
a hivecell call of the conversation back into the native tool_use the model made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

COMPUTER = "computer"
BASH = "bash"
EDITOR = "str_replace_based_edit_tool"

# hivecell tools the native tools replace (they are not offered as custom tools beside them).
COMPUTER_TOOLS = frozenset(
    {"mouse_click", "mouse_double_click", "mouse_move", "mouse_drag", "scroll"}
    | {"mouse_down", "mouse_up"}
    | {"keyboard_type", "keyboard_key", "keyboard_hold"}
)
COMPUTER_EXTRAS = frozenset({"screenshot", "wait", "cursor_position"})  # actions too
ZOOM = "zoom"  # an action of computer_20251124 when enabled; a custom tool otherwise
EDITOR_TOOLS = frozenset({"read_file", "write_file", "edit_file"})
EDITOR_COMMANDS = ("view", "create", "str_replace", "insert")


@dataclass(frozen=True)
class ToolVersions:
    computer: str
    beta: str
    bash: str = "bash_20250124"
    editor: str = "text_editor_20250728"
    zoom: bool = False


_V2511 = ToolVersions("computer_20251124", "computer-use-2025-11-24", zoom=True)
_V2501 = ToolVersions("computer_20250124", "computer-use-2025-01-24")
# Newest computer tool each model is documented to support, by model-name prefix (longest
# prefix wins, so dated snapshots match their family).
TOOL_VERSIONS: dict[str, ToolVersions] = {
    "claude-opus-4-6": _V2511,
    "claude-sonnet-4-6": _V2511,
    "claude-opus-4-5": _V2511,
    "claude-sonnet-4-5": _V2501,
    "claude-haiku-4-5": _V2501,
    "claude-opus-4-1": _V2501,
    "claude-opus-4": _V2501,
    "claude-sonnet-4": _V2501,
    "claude-3-7-sonnet": ToolVersions(
        "computer_20250124", "computer-use-2025-01-24", editor="text_editor_20250124"
    ),
}
DEFAULT_VERSIONS = _V2501  # any other claude-* model (and aliases a gateway may use)


def versions_for(model: str) -> ToolVersions:
    bare = model.rsplit("/", 1)[-1]  # "anthropic/claude-..." on gateways
    for prefix in sorted(TOOL_VERSIONS, key=len, reverse=True):
        if bare.startswith(prefix):
            return TOOL_VERSIONS[prefix]
    return DEFAULT_VERSIONS


@dataclass(frozen=True)
class Display:
    """The screenshot as the model sees it, and how its pixels map to the runner's."""

    width: int
    height: int
    source: tuple[int, int] | None = None  # the runner's screenshot size when scaled

    def to_runner(self, x: int, y: int) -> tuple[int, int]:
        if self.source is None:
            return x, y
        sw, sh = self.source
        # Per axis (rounding made the two ratios differ), never past the last pixel.
        return min(round(x * sw / self.width), sw - 1), min(round(y * sh / self.height), sh - 1)

    def from_runner(self, x: int, y: int) -> tuple[int, int]:
        if self.source is None:
            return x, y
        sw, sh = self.source
        return (
            min(round(x * self.width / sw), self.width - 1),
            min(round(y * self.height / sh), self.height - 1),
        )


def native_tools(
    schemas: list[dict[str, Any]], versions: ToolVersions, display: Display | None
) -> list[dict[str, Any]]:
    """The Anthropic tool list for the runner's (OpenAI-format) tool schemas."""
    functions = [s["function"] for s in schemas if s.get("type") == "function"]
    names = {f["name"] for f in functions}
    tools: list[dict[str, Any]] = []
    covered: set[str] = set()
    if names & COMPUTER_TOOLS and display is not None:
        zoom = versions.zoom and ZOOM in names  # only when the task offers zooming
        tools.append(_computer(versions, display, zoom=zoom))
        covered |= COMPUTER_TOOLS | COMPUTER_EXTRAS | ({ZOOM} if zoom else set())
    if "run_shell" in names:
        tools.append({"type": versions.bash, "name": BASH})
        covered.add("run_shell")
    if names & EDITOR_TOOLS:
        tools.append({"type": versions.editor, "name": _editor_name(versions)})
        covered |= EDITOR_TOOLS
    tools.extend(_custom(f) for f in functions if f["name"] not in covered)
    return tools


def _computer(versions: ToolVersions, display: Display, *, zoom: bool) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "type": versions.computer,
        "name": COMPUTER,
        "display_width_px": display.width,
        "display_height_px": display.height,
    }
    if versions.computer == "computer_20251124":
        tool["enable_zoom"] = zoom
    return tool


def _editor_name(versions: ToolVersions) -> str:
    # The Claude 3.7 editor kept its old name.
    return "str_replace_editor" if versions.editor == "text_editor_20250124" else EDITOR


def _custom(function: dict[str, Any]) -> dict[str, Any]:
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    return {
        "name": function["name"],
        "description": function.get("description", ""),
        "input_schema": schema,
    }


def native_tool(name: str, raw_arguments: str) -> tuple[str, Any]:
    """The native tool (and its input) behind a hivecell call in the conversation."""
    try:
        raw = json.loads(raw_arguments) if raw_arguments.strip() else {}
    except json.JSONDecodeError:
        raw = {"unparsed": raw_arguments}
    if isinstance(raw, dict):
        if "action" in raw and name in COMPUTER_TOOLS | COMPUTER_EXTRAS | {ZOOM}:
            return COMPUTER, raw
        if name == "run_shell" and ("command" in raw or "restart" in raw):
            return BASH, raw
        if name in EDITOR_TOOLS and raw.get("command") in EDITOR_COMMANDS:
            return EDITOR, raw
    return name, raw
