"""Guest tools of the catalogue's app and window domains: window states, tiling, whole apps.

Everything goes through the window manager (EWMH/ICCCM client messages), as a pager or a
taskbar would, and is confirmed by reading the properties back: a call returns once the WM
has done what was asked, so the next screenshot shows it.
"""

from __future__ import annotations

from typing import Any

from Xlib import X, Xatom

from hivecell.errors import InvalidParams, NotFound, ToolFailed
from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.guest.tools import desktop
from hivecell.guest.tools.screen import maybe_settle
from hivecell.guest.x11 import XSession
from hivecell.protocol import catalog as c
from hivecell.protocol import methods as m

router = Router()
STATE_TIMEOUT_S = 5.0
_ICONIC = 3  # ICCCM WM_CHANGE_STATE: IconicState
_ADD, _REMOVE = 1, 0  # _NET_WM_STATE actions
_MAXIMIZED = ("_NET_WM_STATE_MAXIMIZED_VERT", "_NET_WM_STATE_MAXIMIZED_HORZ")
_FULLSCREEN = "_NET_WM_STATE_FULLSCREEN"
# Fractions (x, y, width, height) of the work area for each tile position.
TILES: dict[str, tuple[float, float, float, float]] = {
    "left": (0, 0, 0.5, 1), "right": (0.5, 0, 0.5, 1),
    "top": (0, 0, 1, 0.5), "bottom": (0, 0.5, 1, 0.5),
    "top_left": (0, 0, 0.5, 0.5), "top_right": (0.5, 0, 0.5, 0.5),
    "bottom_left": (0, 0.5, 0.5, 0.5), "bottom_right": (0.5, 0.5, 0.5, 0.5),
    "center": (0.125, 0.125, 0.75, 0.75), "full": (0, 0, 1, 1),
}  # fmt: skip


# --- one window --------------------------------------------------------------------------
@router.method("get_window_state")
async def get_window_state(p: m.WindowParams, ctx: CallContext) -> c.WindowState:
    x = ctx.services.x
    return await x.run(state_sync, x, p.window_id)


def state_sync(x: XSession, window_id: str) -> c.WindowState:
    wid = _known(x, window_id)
    window = x.display.create_resource_object("window", wid)
    geometry = window.get_geometry()
    origin = x.root.translate_coords(window, 0, 0)
    return c.WindowState(
        id=window_id, states=_states(x, window), x=origin.x, y=origin.y,
        width=geometry.width, height=geometry.height,
    )  # fmt: skip


def _known(x: XSession, window_id: str) -> int:
    wid = desktop._parse_window_id(window_id)
    if wid not in desktop._client_ids(x):
        raise NotFound(f"no window {window_id}; call list_windows for the current ids")
    return wid


def _states(x: XSession, window: Any) -> list[str]:
    atoms = desktop._prop(x, window, "_NET_WM_STATE", Xatom.ATOM) or []
    names = (x.display.get_atom_name(int(atom)) for atom in atoms)
    return sorted(n.removeprefix("_NET_WM_STATE_").lower() for n in names)


@router.method("set_window_state")
async def set_window_state(p: c.SetWindowStateParams, ctx: CallContext) -> m.Ok:
    x = ctx.services.x
    await x.run(_request_state, x, p.window_id, p.state)
    if not await desktop._poll(lambda: _reached(x, p.window_id, p.state), STATE_TIMEOUT_S):
        raise ToolFailed(
            f"the window manager did not make window {p.window_id} {p.state} within "
            f"{STATE_TIMEOUT_S:g} s; the window may refuse it (see get_window_state)"
        )
    await maybe_settle(p, ctx)
    return m.Ok()


def _request_state(x: XSession, window_id: str, state: str) -> None:
    if state == "minimized":
        desktop._send_wm_request(x, window_id, "WM_CHANGE_STATE", [_ICONIC])
        return
    wanted = {"maximized": _MAXIMIZED, "fullscreen": (_FULLSCREEN,)}.get(state, ())
    for atom in (*_MAXIMIZED, _FULLSCREEN):
        if atom not in wanted:
            _net_state(x, window_id, _REMOVE, atom)
    for atom in wanted:
        _net_state(x, window_id, _ADD, atom)
    if "hidden" in state_sync(x, window_id).states:  # un-minimising is activating
        data = [desktop._PAGER_SOURCE, X.CurrentTime]
        desktop._send_wm_request(x, window_id, "_NET_ACTIVE_WINDOW", data)


def _net_state(x: XSession, window_id: str, action: int, atom: str) -> None:
    data = [action, x.display.intern_atom(atom), 0, desktop._PAGER_SOURCE]
    desktop._send_wm_request(x, window_id, "_NET_WM_STATE", data)


async def _reached(x: XSession, window_id: str, state: str) -> bool:
    """The WM sets _NET_WM_STATE before it moves the window: wait for the geometry too."""
    s = await x.run(state_sync, x, window_id)
    states = set(s.states)
    if state == "minimized":
        return "hidden" in states
    if state == "maximized":
        _, _, area_w, _ = await x.run(work_area, x)
        maximized = {"maximized_vert", "maximized_horz"} <= states and "hidden" not in states
        # Openbox resizes the client and rewrites its frame extents in separate steps: done
        # when the whole frame (client + extents + X border) spans the work area, not beyond.
        frame_w = await x.run(_frame_width, x, window_id)
        return maximized and area_w - 16 <= frame_w <= area_w
    if state == "fullscreen":
        width, height = await x.run(x.size_sync)
        return "fullscreen" in states and (s.x, s.y, s.width, s.height) == (0, 0, width, height)
    return not states & {"hidden", "maximized_vert", "maximized_horz", "fullscreen"}


def _frame_width(x: XSession, window_id: str) -> int:
    window = x.display.create_resource_object("window", _known(x, window_id))
    extents = desktop._prop(x, window, "_NET_FRAME_EXTENTS", Xatom.CARDINAL)
    left, right = (extents[0], extents[1]) if extents is not None else (0, 0)
    geometry = window.get_geometry()
    return int(geometry.width + left + right + 2 * geometry.border_width)


@router.method("tile_window")
async def tile_window(p: c.TileParams, ctx: CallContext) -> m.Ok:
    x = ctx.services.x
    await set_window_state(c.SetWindowStateParams(window_id=p.window_id, state="normal"), ctx)
    target = await x.run(_tile_request, x, p.window_id, p.position)
    if not await desktop._poll(lambda: _fits(x, p.window_id, target), STATE_TIMEOUT_S):
        raise ToolFailed(f"the window manager did not move window {p.window_id} to {p.position}")
    await maybe_settle(p, ctx)
    return m.Ok()


def _tile_request(x: XSession, window_id: str, position: str) -> tuple[int, int, int, int]:
    """Ask for the client area that puts the window's frame on the tile; returns where the
    client area (inside its own X border, as get_window_state reports it) will be."""
    area_x, area_y, area_w, area_h = work_area(x)
    fx, fy, fw, fh = TILES[position]
    window = x.display.create_resource_object("window", _known(x, window_id))
    extents = desktop._prop(x, window, "_NET_FRAME_EXTENTS", Xatom.CARDINAL)
    left, right, top, bottom = extents if extents is not None else (0, 0, 0, 0)
    border = window.get_geometry().border_width  # xterm keeps a 1 px border inside the frame
    tile_x, tile_y = area_x + round(area_w * fx), area_y + round(area_h * fy)
    width = max(1, round(area_w * fw) - left - right - 2 * border)
    height = max(1, round(area_h * fh) - top - bottom - 2 * border)
    flags = desktop._STATIC_GRAVITY | 0xF00 | (desktop._PAGER_SOURCE << 12)
    data = [flags, tile_x + left, tile_y + top, width, height]
    desktop._send_wm_request(x, window_id, "_NET_MOVERESIZE_WINDOW", data)
    return tile_x + left + border, tile_y + top + border, width, height


def work_area(x: XSession) -> tuple[int, int, int, int]:
    """The first desktop's work area (the screen less panels), or the whole screen."""
    value = desktop._prop(x, x.root, "_NET_WORKAREA", Xatom.CARDINAL)
    if value is not None and len(value) >= 4:
        return int(value[0]), int(value[1]), int(value[2]), int(value[3])
    width, height = x.size_sync()
    return 0, 0, width, height


async def _fits(x: XSession, window_id: str, target: tuple[int, int, int, int]) -> bool:
    """At the target origin (openbox may place a client a pixel inside it) and no larger
    than asked: apps with size increments (terminals) round their size down to whole cells."""
    s = await x.run(state_sync, x, window_id)
    tx, ty, tw, th = target
    near = abs(s.x - tx) <= 2 and abs(s.y - ty) <= 2
    return near and tw - 64 < s.width <= tw and th - 64 < s.height <= th


# --- whole apps --------------------------------------------------------------------------
async def app_windows(p: c.AppParams, ctx: CallContext) -> list[m.WindowInfo]:
    if (p.name is None) == (p.pid is None):
        raise InvalidParams("pass the app's name or its pid (see list_running_apps)")
    x = ctx.services.x
    windows = await x.run(desktop.windows_sync, x)
    wanted = (p.name or "").lower()
    found = [w for w in windows if w.pid == p.pid or (wanted and _named(w, wanted))]
    if not found:
        names = ", ".join(sorted({w.app for w in windows})) or "none"
        raise NotFound(f"no window of app {p.name or p.pid!r}; apps with windows: {names}")
    return found


def _named(window: m.WindowInfo, wanted: str) -> bool:
    program = desktop._program(desktop.proc_command(window.pid)) if window.pid else ""
    return wanted in (window.app.lower(), program)


@router.method("activate_app")
async def activate_app(p: c.AppActionParams, ctx: CallContext) -> c.WindowIds:
    newest = max(await app_windows(p, ctx), key=lambda w: int(w.id, 0))
    x = ctx.services.x
    if "hidden" in (await x.run(state_sync, x, newest.id)).states:
        await set_window_state(c.SetWindowStateParams(window_id=newest.id, state="normal"), ctx)
    await desktop.activate_window(m.WindowParams(window_id=newest.id, settle=p.settle), ctx)
    return c.WindowIds(windows=[newest.id])


@router.method("hide_app")
async def hide_app(p: c.AppActionParams, ctx: CallContext) -> c.WindowIds:
    ids = [w.id for w in await app_windows(p, ctx)]
    for window_id in ids:
        await set_window_state(c.SetWindowStateParams(window_id=window_id, state="minimized"), ctx)
    await maybe_settle(p, ctx)
    return c.WindowIds(windows=ids)


@router.method("close_app")
async def close_app(p: c.AppActionParams, ctx: CallContext) -> c.WindowIds:
    """Quit the way a person does (Cmd+Q / closing each window): the app may ask to save."""
    x = ctx.services.x
    ids = [w.id for w in await app_windows(p, ctx)]
    for window_id in ids:
        await x.run(
            desktop._send_wm_request, x, window_id, "_NET_CLOSE_WINDOW",
            [X.CurrentTime, desktop._PAGER_SOURCE],
        )  # fmt: skip

    async def gone() -> bool:
        return not set(ids) & {w.id for w in await x.run(desktop.windows_sync, x)}

    if not await desktop._poll(gone, desktop.QUIT_GRACE_S, every=0.05):
        raise ToolFailed(
            f"windows of {p.name or p.pid!r} are still open {desktop.QUIT_GRACE_S:g} s after "
            "being asked to close (an unsaved-changes dialog?); look at the screen, or use "
            "force_quit_app"
        )
    await maybe_settle(p, ctx)
    return c.WindowIds(windows=ids)
