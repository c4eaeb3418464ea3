"""The tools offered to the model and how each maps onto a guest agent call.

Tool names are public (traces and dashboards show them). Coordinates the model sends are in
screenshot pixels; ``ToolBox`` converts them to screen pixels with the last screenshot's
scale so clicks land where the model meant.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.edits import edit_file
from hivecell.errors import InvalidParams


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoArgs(_Args):
    pass


class PointArgs(_Args):
    x: int = Field(description="x in screenshot pixels")
    y: int = Field(description="y in screenshot pixels")


HOLD_HELP = "keys held down meanwhile, e.g. 'ctrl' (ctrl+click) or 'shift'"


class ClickArgs(PointArgs):
    button: str = Field("left", description="left | right | middle")
    clicks: int = Field(1, ge=1, le=3, description="3 selects a line or paragraph")
    hold: str | None = Field(None, description=HOLD_HELP)


class ButtonArgs(_Args):
    button: str = Field("left", description="left | right | middle")


class DragArgs(_Args):
    from_x: int
    from_y: int
    to_x: int
    to_y: int


class ScrollArgs(PointArgs):
    dx: int = Field(0, description="notches; positive scrolls right")
    dy: int = Field(0, description="notches; positive scrolls down")
    hold: str | None = Field(None, description=HOLD_HELP)


class TypeArgs(_Args):
    text: str


class KeyArgs(_Args):
    keys: str = Field(description="a key or combo, e.g. Return, ctrl+s, alt+F4, ctrl+shift+t")


class HoldArgs(KeyArgs):
    seconds: float = Field(gt=0, le=30, description="how long the keys stay down")


class ShellArgs(_Args):
    command: str = Field(description="a /bin/sh command line")
    timeout: float = Field(60, description="seconds")


class PathArgs(_Args):
    path: str


class WriteArgs(PathArgs):
    content: str


class EditArgs(PathArgs):
    old_str: str | None = Field(None, description="replace this text (must occur exactly once)")
    insert_line: int | None = Field(None, ge=0, description="or insert after this line (0: top)")
    new_str: str = Field("", description="the replacement or the inserted text")


class MoveArgs(_Args):
    source: str
    destination: str


class NameArgs(_Args):
    name: str = Field(description="app name, .desktop id or command, e.g. mousepad, xterm")


class UrlArgs(_Args):
    url: str


class TextArgs(_Args):
    text: str


class ElementArgs(_Args):
    id: str = Field(description="an element id from accessibility_tree, e.g. 1.9:214")


class ElementTextArgs(ElementArgs):
    text: str = Field(description="replaces the element's whole text")


class WaitArgs(_Args):
    seconds: float = Field(ge=0, le=60)


class AskArgs(_Args):
    question: str


class ChoiceArgs(AskArgs):
    options: list[str] = Field(min_length=2, max_length=10)


@dataclass(frozen=True)
class ToolDef:
    name: str
    description: str
    args: type[_Args]
    dangerous: bool = False

    def schema(self) -> dict[str, Any]:
        params = self.args.model_json_schema()
        params.pop("title", None)
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": params},
        }


TOOLS: dict[str, ToolDef] = {
    t.name: t
    for t in (
        ToolDef("screenshot", "Take a fresh screenshot of the desktop.", NoArgs),
        ToolDef("mouse_click", "Click at a point of the latest screenshot.", ClickArgs),
        ToolDef("mouse_double_click", "Double-click at a point.", PointArgs),
        ToolDef("mouse_move", "Move the pointer to a point.", PointArgs),
        ToolDef("mouse_drag", "Drag with the left button from one point to another.", DragArgs),
        ToolDef("mouse_down", "Press and hold a button where the pointer is.", ButtonArgs),
        ToolDef("mouse_up", "Release a held button where the pointer is.", ButtonArgs),
        ToolDef("scroll", "Scroll at a point.", ScrollArgs),
        ToolDef("keyboard_type", "Type text (any Unicode) into the focused window.", TypeArgs),
        ToolDef("keyboard_key", "Press a key or key combination.", KeyArgs),
        ToolDef("keyboard_hold", "Hold a key or combination down for some seconds.", HoldArgs),
        ToolDef("run_shell", "Run a shell command in the sandbox; returns its output.", ShellArgs),
        ToolDef("read_file", "Read a text file.", PathArgs),
        ToolDef("write_file", "Write a text file (creates parent folders).", WriteArgs),
        ToolDef("edit_file", "Replace a unique text in a file, or insert lines.", EditArgs),
        ToolDef("list_directory", "List a directory.", PathArgs),
        ToolDef("move_file", "Move or rename a file.", MoveArgs),
        ToolDef("delete_file", "Delete a file.", PathArgs, dangerous=True),
        ToolDef("open_app", "Start an application.", NameArgs),
        ToolDef("open_file", "Open a file with its default application.", PathArgs),
        ToolDef("open_url", "Open a URL in the browser.", UrlArgs),
        ToolDef("clipboard_read", "Read the clipboard text.", NoArgs),
        ToolDef("clipboard_write", "Put text on the clipboard.", TextArgs),
        ToolDef("wait", "Wait some seconds (e.g. for an app to load).", WaitArgs),
        ToolDef(
            "accessibility_tree", "List the visible UI elements (role, name, bounds, id).", NoArgs
        ),
        ToolDef(
            "click_element", "Click/activate an element by its accessibility_tree id.", ElementArgs
        ),
        ToolDef(
            "set_element_text", "Replace the text of an input by its element id.", ElementTextArgs
        ),
        ToolDef("ask_user", "Ask the person a question; returns their answer.", AskArgs),
        ToolDef("ask_user_choice", "Ask the person to pick one of several options.", ChoiceArgs),
    )
}
USER_TOOLS = frozenset({"ask_user", "ask_user_choice"})
GUI_TOOLS = frozenset(
    {
        "mouse_click",
        "mouse_double_click",
        "mouse_move",
        "mouse_drag",
        "mouse_down",
        "mouse_up",
        "scroll",
        "keyboard_type",
        "keyboard_key",
        "keyboard_hold",
        "open_app",
        "open_file",
        "open_url",
        "click_element",
        "set_element_text",
    }
)

# Launchers return as soon as the process runs; these ask the guest to wait for the new window
# too, or the step's screenshot often shows the desktop without it and the model opens it again.
LAUNCH_TOOLS = frozenset({"open_app", "open_file", "open_url"})
SCREENSHOT_NOTE = "a fresh screenshot follows this step"

GuestCall = Callable[[str, dict[str, Any]], Awaitable[Any]]


class ToolBox:
    """Executes model tool calls against one sandbox's guest agent."""

    def __init__(self, call: GuestCall, *, disabled: frozenset[str] = frozenset()) -> None:
        self._call = call
        self.disabled = disabled
        self.scale = 1.0  # screenshot px per screen px of the latest screenshot
        self.images: list[tuple[str, bytes]] = []  # zoomed regions for the next observation

    def schemas(self) -> list[dict[str, Any]]:
        return list(_schemas(self.disabled))

    def validate(self, name: str, arguments: dict[str, Any] | None) -> _Args:
        tool = TOOLS.get(name)
        if tool is None or name in self.disabled:
            available = ", ".join(n for n in TOOLS if n not in self.disabled)
            raise InvalidParams(
                f"unknown or disabled tool {name!r}; available: {available}", op=name
            )
        return tool.args.model_validate(arguments or {})

    def _screen(self, x: int, y: int) -> dict[str, int]:
        return {"x": round(x / self.scale), "y": round(y / self.scale)}

    async def execute(self, name: str, args: _Args) -> Any:
        """Run one (validated, non-user) tool; returns the guest result."""
        handler = getattr(self, f"_do_{name}", None)
        if handler is not None:
            return await handler(args)
        params = args.model_dump()
        if name in LAUNCH_TOOLS:
            params["settle"] = True
        if routed := catalog.guest_call(name, params, self.scale):
            return await self._call(*routed)
        return await self._call(name, params)

    def take_images(self) -> list[tuple[str, bytes]]:
        images, self.images = self.images, []
        return images

    async def _do_open_url(self, a: UrlArgs) -> Any:
        # With the browser domain on, a page opened here must be one browser_tabs and
        # browser_page_text can see: the controlled Chromium, not a second browser beside it.
        if "browser_open" not in self.disabled:
            return await self._call("browser_open", {"url": a.url})
        return await self._call("open_url", {"url": a.url, "settle": True})

    async def _do_zoom(self, a: Any) -> Any:
        shot = await self._call("screenshot_region", catalog.region(a, self.scale))
        text = f"Zoomed region x={a.x} y={a.y} {a.width}x{a.height} of the latest screenshot."
        self.images.append((text, base64.b64decode(shot["data"])))
        return {"note": "the zoomed image follows; click with the full screenshot's coordinates"}

    async def _do_screenshot(self, a: NoArgs) -> Any:
        # Every step ends with a screenshot the model sees as an image; the guest's base64
        # here would only reach it as text, cut to garbage by the result size cap.
        return {"note": SCREENSHOT_NOTE}

    async def _do_mouse_click(self, a: ClickArgs) -> Any:
        point = self._screen(a.x, a.y)
        params = {**point, "button": a.button, "clicks": a.clicks}
        return await self._call("mouse_click", params | _held(a.hold))

    async def _do_mouse_double_click(self, a: PointArgs) -> Any:
        return await self._call("mouse_click", {**self._screen(a.x, a.y), "clicks": 2})

    async def _do_cursor_position(self, a: NoArgs) -> Any:
        # In the screenshot's pixels, like every point the model gives.
        pos = await self._call("get_cursor_position", {})
        return {"x": round(pos["x"] * self.scale), "y": round(pos["y"] * self.scale)}

    async def _do_mouse_move(self, a: PointArgs) -> Any:
        return await self._call("mouse_move", self._screen(a.x, a.y))

    async def _do_mouse_down(self, a: ButtonArgs) -> Any:
        return await self._call("mouse_button", {"button": a.button, "down": True})

    async def _do_mouse_up(self, a: ButtonArgs) -> Any:
        return await self._call("mouse_button", {"button": a.button, "down": False})

    async def _do_scroll(self, a: ScrollArgs) -> Any:
        params = {**self._screen(a.x, a.y), "dx": a.dx, "dy": a.dy}
        return await self._call("scroll", params | _held(a.hold))

    async def _do_mouse_drag(self, a: DragArgs) -> Any:
        start, end = self._screen(a.from_x, a.from_y), self._screen(a.to_x, a.to_y)
        params = {"from_x": start["x"], "from_y": start["y"], "to_x": end["x"], "to_y": end["y"]}
        return await self._call("mouse_drag", params)

    async def _do_run_shell(self, a: ShellArgs) -> Any:
        return await self._call("run_shell", {"command": a.command, "timeout": a.timeout})

    async def _do_edit_file(self, a: EditArgs) -> Any:
        return await edit_file(
            self._call, a.path, old_str=a.old_str, insert_line=a.insert_line, new_str=a.new_str
        )

    async def _do_accessibility_tree(self, a: NoArgs) -> Any:
        return await self.tree_text()

    async def tree_text(self, budget_ms: int = 2000) -> dict[str, Any]:
        """The tree's text form only, in screenshot pixels (the nodes list would double it)."""
        params = {"scale": self.scale, "budget_ms": budget_ms}
        tree = await self._call("accessibility_tree", params)
        return {"tree": tree["text"], "truncated": tree["truncated"]}

    async def _do_delete_file(self, a: PathArgs) -> Any:
        return await self._call("delete_file", {"path": a.path})


@functools.cache
def _held(hold: str | None) -> dict[str, str]:
    return {"hold": hold} if hold else {}


@functools.cache
def _schemas(disabled: frozenset[str]) -> tuple[dict[str, Any], ...]:
    # Building them costs ~15 ms (pydantic JSON schemas of every tool) and the runner asks
    # every step, the first one included: uncached it was a quarter of a warm dispatch.
    return tuple(t.schema() for name, t in TOOLS.items() if name not in disabled)


# The seed-002 catalogue adds its tools to TOOLS and GUI_TOOLS (hivecell.agent.catalog).
from hivecell.agent import catalog  # noqa: E402
