"""The seed-002 command catalogue as model tools, grouped by domain (docs/tools.md).

Every tool outside ``CORE`` belongs to one domain; a task enables domains (RunSettings
``tool_domains``) and the model is offered only their tools. ``DEFAULT_DOMAINS`` keeps what
the model saw before the catalogue (mouse, keyboard, clipboard, apps, files, shell) and adds
the window, display and system domains; the browser (a second, DevTools-driven Chromium)
and media (needs a player on a session bus) are enabled per task.

Most tools call the guest method of the same name; ``ROUTES`` maps the others onto a guest
method with fixed extra params (e.g. ``maximize_window`` -> ``set_window_state``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hivecell.agent import tools
from hivecell.agent.tools import NoArgs, PathArgs, PointArgs, ToolDef, UrlArgs, _Args


class WindowArgs(_Args):
    window_id: str = Field(description="an id from list_windows, e.g. 0x01a00003")


class MoveResizeArgs(WindowArgs):
    x: int = Field(description="screen pixels")
    y: int
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class TileArgs(WindowArgs):
    position: Literal[
        "left", "right", "top", "bottom", "top_left", "top_right", "bottom_left",
        "bottom_right", "center", "full",
    ]  # fmt: skip


class AppArgs(_Args):
    name: str | None = Field(None, description="app name as list_apps shows it")
    pid: int | None = None


class ForceQuitArgs(AppArgs):
    pass


class RegionArgs(_Args):
    x: int = Field(ge=0, description="left, in screenshot pixels")
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    zoom: float = Field(2.0, ge=1, le=8, description="how much to enlarge the region")


class DiskArgs(_Args):
    path: str = Field(".", description="a path on the disk to measure (default: shared folder)")


class KillArgs(_Args):
    pid: int = Field(gt=1)
    signal: Literal["TERM", "KILL", "INT", "HUP", "STOP", "CONT"] = "TERM"


class NotifyArgs(_Args):
    title: str
    body: str = ""


class VolumeArgs(_Args):
    percent: int | None = Field(None, ge=0, le=150, description="absent: leave it")
    muted: bool | None = None


class SearchArgs(_Args):
    pattern: str = Field(description="glob on file names, case-insensitive, e.g. *.pdf")
    folder: str = Field("", description="where to search (default: the shared folder)")


class CopyArgs(_Args):
    source: str
    destination: str = Field(description="a new path, or a folder to copy into")
    overwrite: bool = Field(False, description="replace an existing destination (asks first)")


class TabArgs(_Args):
    tab_id: str = Field(description="an id from browser_tabs")


class PlayerArgs(_Args):
    player: str | None = Field(None, description="player name, e.g. vlc; absent: the first")


def _t(name: str, description: str, args: type[_Args], dangerous: bool = False) -> ToolDef:
    return ToolDef(name, description, args, dangerous=dangerous)


# Domain -> the tools it offers; existing tools are listed in the domain they belong to.
DOMAINS: dict[str, tuple[str, ...]] = {
    "mouse": ("mouse_click", "mouse_double_click", "mouse_triple_click", "mouse_move",
              "mouse_drag", "scroll", "cursor_position", "mouse_down", "mouse_up"),
    "keyboard": ("keyboard_type", "keyboard_key", "keyboard_hold"),
    "accessibility": ("accessibility_tree", "click_element", "set_element_text"),
    "clipboard": ("clipboard_read", "clipboard_write"),
    "app": ("open_app", "open_url", "list_apps", "frontmost_app", "activate_app", "hide_app",
            "quit_app", "force_quit_app"),
    "window": ("list_windows", "focus_window", "window_state", "minimize_window",
               "maximize_window", "fullscreen_window", "restore_window", "move_resize_window",
               "tile_window", "close_window"),
    "browser": ("browser_open", "browser_tabs", "browser_switch_tab",
                "browser_close_tab", "browser_navigate", "browser_back", "browser_forward",
                "browser_reload", "browser_page_text"),
    "display": ("screen_size", "zoom"),
    "system": ("run_shell", "system_info", "disk_usage", "list_processes", "kill_process",
               "notify", "set_volume"),
    "finder": ("read_file", "write_file", "edit_file", "list_directory", "move_file", "delete_file",
               "open_file", "file_info", "search_files", "copy_file", "make_directory",
               "trash_file", "empty_trash", "reveal_file"),
    "media": ("media_play", "media_pause", "media_play_pause", "media_next", "media_previous",
              "media_status"),
}  # fmt: skip
CORE = frozenset({"screenshot", "wait", "ask_user", "ask_user_choice"})
DEFAULT_DOMAINS = ("mouse", "keyboard", "accessibility", "clipboard", "app", "window", "display",
                   "system", "finder")  # fmt: skip

CATALOG: tuple[ToolDef, ...] = (
    _t("mouse_triple_click", "Triple-click at a point (selects a line or paragraph).", PointArgs),
    _t("cursor_position", "Where the mouse pointer is, in screenshot pixels.", NoArgs),
    _t("list_apps", "List running apps (processes with windows or that you started).", NoArgs),
    _t("frontmost_app", "The app that owns the active window, and that window's title.", NoArgs),
    _t("activate_app", "Bring an app's newest window to the front (un-minimises it).", AppArgs),
    _t("hide_app", "Minimise every window of an app.", AppArgs),
    _t("quit_app", "Quit an app by closing all its windows, as a person would.", AppArgs),
    _t("force_quit_app", "Kill an app (unsaved work is lost).", ForceQuitArgs, dangerous=True),
    _t("list_windows", "List top-level windows: id, title, app, position, size.", NoArgs),
    _t("focus_window", "Raise and focus a window.", WindowArgs),
    _t("window_state", "A window's state (hidden, maximized, fullscreen...) and size.", WindowArgs),
    _t("minimize_window", "Minimise a window.", WindowArgs),
    _t("maximize_window", "Maximise a window.", WindowArgs),
    _t("fullscreen_window", "Make a window fullscreen.", WindowArgs),
    _t("restore_window", "Restore a window to normal (un-minimise, un-maximise).", WindowArgs),
    _t("move_resize_window", "Move and resize a window (screen pixels).", MoveResizeArgs),
    _t("tile_window", "Fit a window to half, a quarter or all of the screen.", TileArgs),
    _t("close_window", "Ask a window to close.", WindowArgs),
    _t("browser_open", "Open a URL in a new tab of the controlled browser.", UrlArgs),
    _t("browser_tabs", "List the controlled browser's tabs.", NoArgs),
    _t("browser_switch_tab", "Bring a browser tab to the front.", TabArgs),
    _t("browser_close_tab", "Close a browser tab.", TabArgs),
    _t("browser_navigate", "Load a URL in the active browser tab.", UrlArgs),
    _t("browser_back", "Go back in the active browser tab.", NoArgs),
    _t("browser_forward", "Go forward in the active browser tab.", NoArgs),
    _t("browser_reload", "Reload the active browser tab.", NoArgs),
    _t("browser_page_text", "URL, title and visible text of the active browser tab.", NoArgs),
    _t("screen_size", "The screen size in pixels.", NoArgs),
    _t("zoom", "See a region of the latest screenshot enlarged (next image).", RegionArgs),
    _t("system_info", "OS, CPU, memory and user of the sandbox.", NoArgs),
    _t("disk_usage", "Total, used and free bytes of a disk.", DiskArgs),
    _t("list_processes", "List processes: pid, name, command, memory.", NoArgs),
    _t("kill_process", "Send a signal to a process.", KillArgs, dangerous=True),
    _t("notify", "Show a desktop notification.", NotifyArgs),
    _t("set_volume", "Read or set the sound volume.", VolumeArgs),
    _t("file_info", "Type, size, mode and modification time of a path.", PathArgs),
    _t("search_files", "Find files by name under a folder.", SearchArgs),
    _t("copy_file", "Copy a file or folder.", CopyArgs),
    _t("make_directory", "Create a folder (and its parents).", PathArgs),
    _t("trash_file", "Move a file or folder to the trash (restorable).", PathArgs),
    _t("empty_trash", "Delete everything in the trash for good.", NoArgs, dangerous=True),
    _t("reveal_file", "Show a file or folder in the file manager.", PathArgs),
    _t("media_play", "Start playback in a media player.", PlayerArgs),
    _t("media_pause", "Pause a media player.", PlayerArgs),
    _t("media_play_pause", "Toggle play/pause in a media player.", PlayerArgs),
    _t("media_next", "Skip to the next track.", PlayerArgs),
    _t("media_previous", "Go to the previous track.", PlayerArgs),
    _t("media_status", "Media players and what they play.", PlayerArgs),
)

# tool -> (guest method, params added to the tool's arguments)
ROUTES: dict[str, tuple[str, dict[str, Any]]] = {
    "mouse_triple_click": ("mouse_click", {"clicks": 3}),
    "list_apps": ("list_running_apps", {}),
    "frontmost_app": ("get_frontmost_app", {}),
    "activate_app": ("activate_app", {"settle": True}),
    "hide_app": ("hide_app", {"settle": True}),
    "quit_app": ("close_app", {"settle": True}),
    "force_quit_app": ("quit_app", {"force": True}),
    "focus_window": ("activate_window", {"settle": True}),
    "window_state": ("get_window_state", {}),
    "minimize_window": ("set_window_state", {"state": "minimized", "settle": True}),
    "maximize_window": ("set_window_state", {"state": "maximized", "settle": True}),
    "fullscreen_window": ("set_window_state", {"state": "fullscreen", "settle": True}),
    "restore_window": ("set_window_state", {"state": "normal", "settle": True}),
    "move_resize_window": ("move_resize_window", {"settle": True}),
    "tile_window": ("tile_window", {"settle": True}),
    "close_window": ("close_window", {"settle": True}),
    "browser_back": ("browser_go", {"action": "back"}),
    "browser_forward": ("browser_go", {"action": "forward"}),
    "browser_reload": ("browser_go", {"action": "reload"}),
    "screen_size": ("get_screen_size", {}),
    "system_info": ("get_system_info", {}),
    "disk_usage": ("get_disk_usage", {}),
    "file_info": ("stat_file", {}),
    "media_play": ("media_control", {"action": "play"}),
    "media_pause": ("media_control", {"action": "pause"}),
    "media_play_pause": ("media_control", {"action": "play_pause"}),
    "media_next": ("media_control", {"action": "next"}),
    "media_previous": ("media_control", {"action": "previous"}),
}
SCALED = {"move_resize_window": ("x", "y", "width", "height"), "mouse_triple_click": ("x", "y")}
# Tools after which the agent waits for the screen to settle, like the other GUI tools.
GUI = frozenset(
    {"mouse_triple_click", "activate_app", "hide_app", "quit_app", "force_quit_app", "browser_open",
     "browser_switch_tab", "browser_close_tab", "browser_navigate", "browser_back",
     "browser_forward", "browser_reload", "reveal_file", "media_play", "media_pause",
     "media_play_pause", "media_next", "media_previous"}
)  # fmt: skip


def tool_domain(name: str) -> str | None:
    return next((domain for domain, names in DOMAINS.items() if name in names), None)


def outside(domains: list[str] | tuple[str, ...]) -> frozenset[str]:
    """The tools a task with these domains enabled does not offer."""
    offered = set(CORE).union(*(DOMAINS[d] for d in domains))
    return frozenset(name for name in tools.TOOLS if name not in offered)


def guest_call(
    name: str, params: dict[str, Any], scale: float
) -> tuple[str, dict[str, Any]] | None:
    """The guest method and params for a catalogue tool; None: the same-named method."""
    route = ROUTES.get(name)
    if route is None:
        return None
    method, extra = route
    params = {k: v for k, v in params.items() if v is not None} | extra
    scaled = SCALED.get(name, ())  # the model gives screenshot pixels; the guest wants screen
    params.update({k: round(params[k] / scale) for k in scaled})
    return method, params


def region(args: RegionArgs, scale: float) -> dict[str, Any]:
    """screenshot_region params for a region given in screenshot pixels. The zoom counts
    from the screenshot the model saw, so a shrunken screenshot is enlarged from that size."""
    box = {k: max(1, round(getattr(args, k) / scale)) for k in ("width", "height")}
    origin = {k: round(getattr(args, k) / scale) for k in ("x", "y")}
    return {**origin, **box, "zoom": min(8.0, max(1.0, args.zoom * scale)), "format": "png"}


tools.TOOLS.update({t.name: t for t in CATALOG})
tools.GUI_TOOLS = tools.GUI_TOOLS | GUI
