"""The guest agent's public contract: every method's params and result as pydantic models.

Names and fields here are the wire contract documented in docs/protocol.md; change them
only together with that file and a protocol version bump.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = "1.0"

Coord = int  # screen pixels; validated against the screen size by the handler
MAX_TEXT = 1_000_000


# defer_build: validators are built on first use, not at import; the guest agent imports
# every model at boot and cold start is measured in milliseconds.
class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Empty(Params):
    pass


class Ok(Result):
    ok: Literal[True] = True


class ActionParams(Params):
    settle: bool = Field(False, description="wait until the screen stops changing before returning")


class Position(Result):
    x: int
    y: int


# --- session -----------------------------------------------------------------------------
class AuthenticateParams(Params):
    token: str = Field(min_length=1, max_length=512)


class CancelParams(Params):
    id: int | str = Field(description="id of the in-flight request to cancel")


class CancelResult(Result):
    cancelled: bool


class PingResult(Result):
    pong: Literal[True] = True
    time: float


class ToolSpec(Result):
    name: str
    description: str
    params_schema: dict[str, Any]
    result_schema: dict[str, Any]


class AgentInfo(Result):
    version: str
    protocol_version: str
    capabilities: list[str]
    tools: list[ToolSpec]


class CheckResult(Result):
    ok: bool
    detail: str = ""


class HealthResult(Result):
    healthy: bool
    checks: dict[str, CheckResult]


class SystemInfo(Result):
    hostname: str
    os: str
    kernel: str
    arch: str
    cpu_count: int
    memory_total: int
    memory_available: int
    uptime_s: float
    user: str
    home: str
    python: str


class InterfaceInfo(Result):
    name: str
    up: bool
    addresses: list[str]


class NetworkInfo(Result):
    interfaces: list[InterfaceInfo]
    has_default_route: bool


class DiskUsageParams(Params):
    path: str = "/shared"


class DiskUsage(Result):
    path: str
    total: int
    used: int
    free: int


# --- shell -------------------------------------------------------------------------------
class _ExecLimits(Params):
    cwd: str | None = None
    env: dict[str, str] | None = Field(None, description="added to the sandbox environment")
    stdin: str | None = Field(None, max_length=MAX_TEXT)
    timeout: float = Field(60.0, gt=0, le=3600, description="seconds before the process is killed")
    max_output: int = Field(
        1024 * 1024, ge=0, le=16 * 1024 * 1024, description="bytes kept per stream"
    )
    stream: bool = Field(False, description="send exec.output notifications while it runs")


class ExecParams(_ExecLimits):
    argv: list[str] = Field(
        min_length=1, max_length=4096, description="program and arguments; no shell"
    )


class RunShellParams(_ExecLimits):
    command: str = Field(min_length=1, max_length=MAX_TEXT, description="a /bin/sh command line")


class ExecResult(Result):
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool
    duration_ms: float


# --- files -------------------------------------------------------------------------------
Encoding = Literal["text", "base64"]
FileType = Literal["file", "dir", "symlink", "other"]


class PathParams(Params):
    path: str = Field(min_length=1, max_length=4096)


class ReadFileParams(PathParams):
    encoding: Encoding = "text"
    offset: int = Field(0, ge=0)
    length: int | None = Field(None, ge=0, description="bytes to read; default the whole file")


class ReadFileResult(Result):
    path: str
    encoding: Encoding
    content: str
    size: int
    truncated: bool


class WriteFileParams(PathParams):
    content: str
    encoding: Encoding = "text"
    mode: Literal["overwrite", "append", "create"] = "overwrite"
    make_parents: bool = True


class WriteFileResult(Result):
    path: str
    size: int


class ListDirectoryParams(PathParams):
    show_hidden: bool = False
    limit: int = Field(1000, ge=1, le=100_000)


class FileEntry(Result):
    name: str
    type: FileType
    size: int
    modified: float


class ListDirectoryResult(Result):
    path: str
    entries: list[FileEntry]
    truncated: bool


class MoveFileParams(Params):
    source: str = Field(min_length=1, max_length=4096)
    destination: str = Field(min_length=1, max_length=4096)
    overwrite: bool = False


class MoveFileResult(Result):
    source: str
    destination: str


class DeleteFileParams(PathParams):
    recursive: bool = False


class DeleteFileResult(Result):
    path: str


class StatResult(Result):
    path: str
    type: FileType
    size: int
    mode: str
    modified: float


# --- observe -----------------------------------------------------------------------------
class ScreenshotParams(Params):
    format: Literal["png", "jpeg", "webp"] = "png"
    quality: int = Field(80, ge=1, le=100, description="jpeg/webp quality")
    scale: float | None = Field(None, gt=0, le=1, description="shrink factor, e.g. 0.5")
    max_width: int | None = Field(None, ge=16, description="shrink so the width fits")


class ScreenshotResult(Result):
    format: Literal["png", "jpeg", "webp"]
    data: str = Field(description="base64 image bytes")
    width: int
    height: int
    screen_width: int
    screen_height: int
    scale: float = Field(description="screenshot px per screen px: screen_x = round(x / scale)")


class ScreenSize(Result):
    width: int
    height: int


class AppInfo(Result):
    pid: int
    name: str
    command: str
    windows: int = 0


class FrontmostApp(Result):
    app: AppInfo | None
    window_title: str | None = None


class AppList(Result):
    apps: list[AppInfo]


class WindowInfo(Result):
    id: str
    title: str
    pid: int
    app: str
    x: int
    y: int
    width: int
    height: int
    active: bool


class WindowList(Result):
    windows: list[WindowInfo]


# --- act ---------------------------------------------------------------------------------
Button = Literal["left", "right", "middle"]


class MouseMoveParams(ActionParams):
    x: Coord = Field(ge=0)
    y: Coord = Field(ge=0)


HELD_KEYS = "keys held down during the action, e.g. 'shift' or 'ctrl+shift'"


class MouseClickParams(MouseMoveParams):
    button: Button = "left"
    clicks: Literal[1, 2, 3] = 1
    hold: str | None = Field(None, min_length=1, max_length=200, description=HELD_KEYS)


class MouseButtonParams(ActionParams):
    button: Button = "left"
    down: bool = Field(description="true presses and holds, false releases; where the pointer is")


class MouseDragParams(ActionParams):
    from_x: Coord = Field(ge=0)
    from_y: Coord = Field(ge=0)
    to_x: Coord = Field(ge=0)
    to_y: Coord = Field(ge=0)
    button: Button = "left"
    steps: int = Field(10, ge=1, le=200, description="intermediate pointer positions")


class ScrollParams(MouseMoveParams):
    dx: int = Field(0, ge=-100, le=100, description="notches; positive scrolls right")
    dy: int = Field(0, ge=-100, le=100, description="notches; positive scrolls down")
    hold: str | None = Field(None, min_length=1, max_length=200, description=HELD_KEYS)


class KeyboardTypeParams(ActionParams):
    text: str = Field(min_length=1, max_length=100_000)
    delay_ms: int = Field(0, ge=0, le=1000, description="pause between characters")


class KeyboardKeyParams(ActionParams):
    keys: str = Field(min_length=1, max_length=200, description="e.g. 'ctrl+shift+t', 'Return'")
    repeat: int = Field(1, ge=1, le=100)


class KeyboardHoldParams(ActionParams):
    keys: str = Field(min_length=1, max_length=200, description="e.g. 'shift', 'Right'")
    seconds: float = Field(gt=0, le=30, description="how long the keys stay down")


class TypedResult(Result):
    characters: int


class ClipboardText(Result):
    text: str


class ClipboardWriteParams(Params):
    text: str = Field(max_length=MAX_TEXT * 10)


class LaunchParams(ActionParams):
    window_timeout: float | None = Field(
        None,
        gt=0,
        le=120,
        description="wait up to this many seconds for the app's window (or for the launcher "
        "to hand over to a running instance) and fail with `timeout` if none appears; "
        "unset: return once the process runs",
    )


class OpenAppParams(LaunchParams):
    name: str = Field(min_length=1, max_length=256, description="app name, .desktop id or command")


class OpenFileParams(LaunchParams):
    path: str = Field(min_length=1, max_length=4096)


class OpenUrlParams(LaunchParams):
    url: str = Field(min_length=1, max_length=8192)


class Launched(Result):
    pid: int
    command: list[str]


class WindowParams(ActionParams):
    window_id: str = Field(min_length=1, max_length=32)


class MoveResizeParams(WindowParams):
    x: int
    y: int
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class QuitAppParams(Params):
    name: str | None = Field(None, min_length=1, max_length=256)
    pid: int | None = Field(None, gt=1)
    force: bool = False


class QuitResult(Result):
    pids: list[int]


class SettleParams(Params):
    timeout: float = Field(5.0, gt=0, le=120)
    quiet_ms: int = Field(
        50, ge=10, le=10_000, description="how long the screen must stay unchanged"
    )


class SettleResult(Result):
    settled: bool
    waited_ms: float


class WaitParams(Params):
    seconds: float = Field(ge=0, le=600)


class WaitResult(Result):
    waited_ms: float


class VncResult(Result):
    socket: str


# --- accessibility tree (AT-SPI) ----------------------------------------------------------
class AccessibilityTreeParams(Params):
    max_nodes: int = Field(300, ge=1, le=5000, description="nodes returned at most")
    max_depth: int = Field(40, ge=1, le=200, description="levels below each app at most")
    budget_ms: int = Field(2000, ge=50, le=30_000, description="time the walk may take")
    scale: float = Field(
        1.0, gt=0, le=4, description="multiply the text form's coordinates by this "
        "(screenshot pixels per screen pixel); nodes keep screen pixels",
    )  # fmt: skip


class ElementInfo(Result):
    id: str = Field(description="stable while the element exists; pass to click_element")
    role: str
    name: str
    value: str | None = None
    states: list[str]
    x: int
    y: int
    width: int
    height: int
    depth: int
    actionable: bool
    editable: bool


class AccessibilityTree(Result):
    nodes: list[ElementInfo]
    text: str = Field(description="one line per node, for a model to read")
    truncated: str | None = Field(description="why the walk stopped early; None if complete")
    visited: int
    elapsed_ms: float


class ElementParams(ActionParams):
    id: str = Field(min_length=3, max_length=300, description="an id from accessibility_tree")


class SetElementTextParams(ElementParams):
    text: str = Field(max_length=100_000)


class ElementActed(Result):
    id: str
    how: str = Field(description="what was done, e.g. 'action click' or 'mouse click'")


# --- notifications (guest -> host) -------------------------------------------------------
class HeartbeatNote(Result):
    seq: int
    time: float


class ExecOutputNote(Result):
    request_id: int | str
    stream: Literal["stdout", "stderr"]
    data: str


@dataclass(frozen=True)
class MethodSpec:
    name: str
    params: type[Params]
    result: type[Result]
    description: str


def _specs(*rows: tuple[str, type[Params], type[Result], str]) -> dict[str, MethodSpec]:
    return {r[0]: MethodSpec(*r) for r in rows}


METHODS: dict[str, MethodSpec] = _specs(
    ("authenticate", AuthenticateParams, Ok, "first call on TCP: present the sandbox token"),
    ("cancel", CancelParams, CancelResult, "cancel an in-flight request by id"),
    ("ping", Empty, PingResult, "liveness check"),
    ("get_agent_info", Empty, AgentInfo, "version, capabilities and the tool list with schemas"),
    ("health_check", Empty, HealthResult, "display, input, shared folder and clipboard checks"),
    ("get_system_info", Empty, SystemInfo, "OS, CPU, memory and user"),
    ("get_network_info", Empty, NetworkInfo, "interfaces and whether a default route exists"),
    ("get_disk_usage", DiskUsageParams, DiskUsage, "disk usage of a path"),
    ("shutdown", Empty, Ok, "stop the sandbox"),
    ("reboot", Empty, Ok, "restart the sandbox (the local provider stops it)"),
    ("exec_command", ExecParams, ExecResult, "run a program with arguments (no shell)"),
    ("run_shell", RunShellParams, ExecResult, "run a /bin/sh command line"),
    ("read_file", ReadFileParams, ReadFileResult, "read a file as text or base64"),
    ("write_file", WriteFileParams, WriteFileResult, "write a file from text or base64"),
    ("list_directory", ListDirectoryParams, ListDirectoryResult, "list a directory"),
    ("move_file", MoveFileParams, MoveFileResult, "move or rename a file or directory"),
    ("delete_file", DeleteFileParams, DeleteFileResult, "delete a file or directory"),
    ("stat_file", PathParams, StatResult, "type, size, mode and mtime of a path"),
    ("screenshot", ScreenshotParams, ScreenshotResult, "capture the screen"),
    ("get_screen_size", Empty, ScreenSize, "screen size in pixels"),
    ("get_cursor_position", Empty, Position, "pointer position"),
    ("get_frontmost_app", Empty, FrontmostApp, "the app owning the active window"),
    ("list_running_apps", Empty, AppList, "processes that own windows or were launched"),
    ("list_windows", Empty, WindowList, "top-level windows"),
    ("mouse_move", MouseMoveParams, Position, "move the pointer"),
    ("mouse_click", MouseClickParams, Position, "click at a point"),
    ("mouse_drag", MouseDragParams, Position, "press, move and release"),
    ("mouse_button", MouseButtonParams, Position, "press or release a button where the pointer is"),
    ("scroll", ScrollParams, Position, "scroll at a point"),
    ("keyboard_type", KeyboardTypeParams, TypedResult, "type Unicode text"),
    ("keyboard_key", KeyboardKeyParams, Ok, "press a key or combo like ctrl+shift+t"),
    ("keyboard_hold", KeyboardHoldParams, Ok, "hold a key or combo down for some seconds"),
    ("clipboard_read", Empty, ClipboardText, "read the clipboard text"),
    ("clipboard_write", ClipboardWriteParams, Ok, "set the clipboard text"),
    ("open_app", OpenAppParams, Launched, "start an app by name, .desktop id or command"),
    ("open_file", OpenFileParams, Launched, "open a file with its default app"),
    ("open_url", OpenUrlParams, Launched, "open a URL in the browser"),
    ("activate_window", WindowParams, Ok, "raise and focus a window"),
    ("move_resize_window", MoveResizeParams, Ok, "move and resize a window"),
    ("close_window", WindowParams, Ok, "ask a window to close"),
    ("quit_app", QuitAppParams, QuitResult, "terminate an app by name or pid"),
    ("wait_for_settle", SettleParams, SettleResult, "wait until the screen stops changing"),
    ("wait", WaitParams, WaitResult, "sleep"),
    ("start_vnc", Empty, VncResult, "start the VNC server on a unix socket"),
    ("stop_vnc", Empty, Ok, "stop the VNC server"),
    ("accessibility_tree", AccessibilityTreeParams, AccessibilityTree, "visible UI elements"),
    ("click_element", ElementParams, ElementActed, "activate an element of the tree"),
    ("set_element_text", SetElementTextParams, ElementActed, "replace an element's text"),
)

NOTIFICATIONS: dict[str, type[Result]] = {
    "heartbeat": HeartbeatNote,
    "exec.output": ExecOutputNote,
}

# The seed-002 catalogue's methods join METHODS from their own module (docs/tools.md).
import hivecell.protocol.catalog  # noqa: E402, F401
