"""The seed-002 command catalogue's guest methods: params and results (docs/tools.md).

Kept apart from ``methods`` so the catalogue grows without touching the core contract; its
rows join ``methods.METHODS`` at import (either module may be imported first).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hivecell.protocol import methods
from hivecell.protocol.methods import ActionParams, Empty, MethodSpec, Ok, Params, Result


# --- windows and apps --------------------------------------------------------------------
class AppParams(Params):
    name: str | None = Field(None, min_length=1, max_length=256, description="app name")
    pid: int | None = Field(None, gt=1)


class AppActionParams(AppParams, ActionParams):
    pass


class WindowState(Result):
    id: str
    states: list[str] = Field(description="EWMH _NET_WM_STATE names, e.g. hidden, maximized")
    x: int
    y: int
    width: int
    height: int


WindowStateName = Literal["normal", "minimized", "maximized", "fullscreen"]


class SetWindowStateParams(methods.WindowParams):
    state: WindowStateName


Tile = Literal[
    "left", "right", "top", "bottom", "top_left", "top_right", "bottom_left", "bottom_right",
    "center", "full",
]  # fmt: skip


class TileParams(methods.WindowParams):
    position: Tile


class WindowIds(Result):
    windows: list[str]


# --- display -----------------------------------------------------------------------------
class RegionParams(Params):
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    zoom: float = Field(1.0, ge=1, le=8, description="scale the region up by this factor")
    format: Literal["png", "jpeg"] = "png"


class RegionShot(Result):
    format: Literal["png", "jpeg"]
    data: str = Field(description="base64 image bytes")
    width: int
    height: int
    x: int = Field(description="region in screen pixels (clipped to the screen)")
    y: int
    region_width: int
    region_height: int


# --- system ------------------------------------------------------------------------------
class ProcessInfo(Result):
    pid: int
    ppid: int
    name: str
    command: str
    state: str
    rss_kb: int


class ProcessList(Result):
    processes: list[ProcessInfo]


class KillParams(Params):
    pid: int = Field(gt=1)
    signal: Literal["TERM", "KILL", "INT", "HUP", "STOP", "CONT"] = "TERM"


class NotifyParams(Params):
    title: str = Field(min_length=1, max_length=256)
    body: str = Field("", max_length=4096)


class VolumeParams(Params):
    percent: int | None = Field(None, ge=0, le=150)
    muted: bool | None = None


class Volume(Result):
    percent: int
    muted: bool


# --- finder ------------------------------------------------------------------------------
class SearchParams(Params):
    pattern: str = Field(min_length=1, max_length=256, description="glob on names, e.g. *.pdf")
    folder: str = Field("", max_length=4096, description="where to start (default: first root)")
    max_results: int = Field(100, ge=1, le=1000)


class SearchResult(Result):
    paths: list[str]
    truncated: bool


class CopyParams(Params):
    source: str = Field(min_length=1, max_length=4096)
    destination: str = Field(min_length=1, max_length=4096)
    overwrite: bool = False


class CopyResult(Result):
    source: str
    destination: str


class PathOnly(Params):
    path: str = Field(min_length=1, max_length=4096)


class PathResult(Result):
    path: str


class TrashResult(Result):
    path: str = Field(description="where the item now lies, in Trash/files")
    info: str = Field(description="its .trashinfo file")


class TrashEmptied(Result):
    removed: int


# --- browser (Chrome DevTools Protocol over a pipe) --------------------------------------
class BrowserUrlParams(Params):
    url: str = Field(min_length=1, max_length=8192)


class TabParams(Params):
    tab_id: str = Field(min_length=1, max_length=64)


class BrowserGoParams(Params):
    action: Literal["back", "forward", "reload"]


class Tab(Result):
    id: str
    url: str
    title: str
    active: bool


class TabList(Result):
    tabs: list[Tab]


class PageTextParams(Params):
    max_chars: int = Field(20_000, ge=1, le=methods.MAX_TEXT)


class PageText(Result):
    url: str
    title: str
    text: str
    truncated: bool


# --- media (MPRIS over D-Bus) ------------------------------------------------------------
class MediaParams(Params):
    action: Literal["play", "pause", "play_pause", "stop", "next", "previous"]
    player: str | None = Field(None, max_length=200, description="bus name suffix, e.g. vlc")


class MediaStatusParams(Params):
    player: str | None = Field(None, max_length=200)


class Player(Result):
    name: str
    status: str
    title: str
    artist: str


class MediaStatus(Result):
    players: list[Player]


CATALOG_METHODS: dict[str, MethodSpec] = methods._specs(
    ("activate_app", AppActionParams, WindowIds, "raise and focus an app's newest window"),
    ("hide_app", AppActionParams, WindowIds, "minimise every window of an app"),
    ("close_app", AppActionParams, WindowIds, "ask every window of an app to close"),
    ("get_window_state", methods.WindowParams, WindowState, "a window's EWMH state and frame"),
    ("set_window_state", SetWindowStateParams, Ok, "minimise, maximise, fullscreen or restore"),
    ("tile_window", TileParams, Ok, "fit a window to a half, quarter or all of the work area"),
    (
        "screenshot_region",
        RegionParams,
        RegionShot,
        "part of the screen, optionally zoomed",
    ),
    ("list_processes", Empty, ProcessList, "every process the agent can see"),
    ("kill_process", KillParams, Ok, "send a signal to a process"),
    ("notify", NotifyParams, Ok, "show a desktop notification"),
    ("set_volume", VolumeParams, Volume, "read or set the output volume"),
    ("search_files", SearchParams, SearchResult, "find files by name under a folder"),
    ("copy_file", CopyParams, CopyResult, "copy a file or folder"),
    ("make_directory", PathOnly, PathResult, "create a folder and its parents"),
    ("trash_file", PathOnly, TrashResult, "move to the freedesktop trash"),
    ("empty_trash", Empty, TrashEmptied, "delete everything in the trash"),
    ("reveal_file", PathOnly, methods.Launched, "show a file in the file manager"),
    ("browser_open", BrowserUrlParams, Tab, "open a URL in a new tab of the DevTools browser"),
    ("browser_tabs", Empty, TabList, "the browser's tabs"),
    ("browser_switch_tab", TabParams, Tab, "bring a tab to the front"),
    ("browser_close_tab", TabParams, Ok, "close a tab"),
    ("browser_navigate", BrowserUrlParams, Tab, "load a URL in the active tab"),
    ("browser_go", BrowserGoParams, Tab, "back, forward or reload in the active tab"),
    ("browser_page_text", PageTextParams, PageText, "URL, title and visible text of the tab"),
    ("media_control", MediaParams, MediaStatus, "play, pause, skip on an MPRIS player"),
    ("media_status", MediaStatusParams, MediaStatus, "MPRIS players and what they play"),
)
methods.METHODS.update(CATALOG_METHODS)
