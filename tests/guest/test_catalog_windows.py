"""The catalogue's window and app tools on real Xvfb + openbox, checked through EWMH.

Every check reads the window manager's own properties (_NET_WM_STATE, _NET_FRAME_EXTENTS,
_NET_CLIENT_LIST) over a separate X connection, not the tool's answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from Xlib import Xatom
from Xlib.display import Display

from hivecell.errors import InvalidParams, NotFound
from tests.guest.xdisplay import SCREEN, Guest

pytestmark = pytest.mark.anyio


@pytest.fixture
def xconn(display: str) -> Iterator[Display]:
    conn = Display(display)
    yield conn
    conn.close()


def net_states(conn: Display, window_id: str) -> set[str]:
    window = conn.create_resource_object("window", int(window_id, 0))
    prop = window.get_full_property(conn.intern_atom("_NET_WM_STATE"), Xatom.ATOM)
    return {conn.get_atom_name(a) for a in (prop.value if prop else [])}


def frame(conn: Display, window_id: str) -> tuple[int, int, int, int]:
    """The window's outer frame (client area plus the WM's extents) in root coordinates."""
    window = conn.create_resource_object("window", int(window_id, 0))
    root = conn.screen().root
    origin = root.translate_coords(window, 0, 0)
    geometry = window.get_geometry()
    extents = window.get_full_property(conn.intern_atom("_NET_FRAME_EXTENTS"), Xatom.CARDINAL)
    left, right, top, bottom = extents.value if extents else (0, 0, 0, 0)
    border = geometry.border_width
    return (
        origin.x - left - border, origin.y - top - border,
        geometry.width + left + right + 2 * border, geometry.height + top + bottom + 2 * border,
    )  # fmt: skip


def client_ids(conn: Display) -> list[int]:
    root = conn.screen().root
    prop = root.get_full_property(conn.intern_atom("_NET_CLIENT_LIST"), Xatom.WINDOW)
    return list(prop.value) if prop else []


async def xterm(guest: Guest, title: str) -> dict[str, Any]:
    launched = await guest("open_app", name=f"xterm -T {title}", window_timeout=30)
    return await guest.wait_window(lambda w: w["pid"] == launched["pid"] and w["width"] > 100)


async def test_minimise_maximise_fullscreen_restore(guest: Guest, xconn: Display) -> None:
    window = await xterm(guest, "states")
    wid = window["id"]
    await guest("set_window_state", window_id=wid, state="maximized")
    assert {"_NET_WM_STATE_MAXIMIZED_VERT", "_NET_WM_STATE_MAXIMIZED_HORZ"} <= net_states(
        xconn, wid
    )
    assert frame(xconn, wid)[2] == SCREEN[0]  # the frame spans the screen's width
    await guest("set_window_state", window_id=wid, state="minimized")
    assert "_NET_WM_STATE_HIDDEN" in net_states(xconn, wid)
    state = await guest("get_window_state", window_id=wid)
    assert "hidden" in state["states"]
    await guest("set_window_state", window_id=wid, state="normal")
    assert not net_states(xconn, wid) & {
        "_NET_WM_STATE_HIDDEN", "_NET_WM_STATE_MAXIMIZED_VERT", "_NET_WM_STATE_MAXIMIZED_HORZ",
    }  # fmt: skip
    await guest("set_window_state", window_id=wid, state="fullscreen")
    assert "_NET_WM_STATE_FULLSCREEN" in net_states(xconn, wid)
    assert frame(xconn, wid) == (0, 0, *SCREEN)
    await guest("set_window_state", window_id=wid, state="normal")
    assert "_NET_WM_STATE_FULLSCREEN" not in net_states(xconn, wid)


@pytest.mark.parametrize(
    ("position", "box"),
    [
        ("left", (0, 0, 0.5, 1)),
        ("right", (0.5, 0, 0.5, 1)),
        ("bottom_right", (0.5, 0.5, 0.5, 0.5)),
    ],
)
async def test_tile_puts_the_frame_on_the_tile(
    guest: Guest, xconn: Display, position: str, box: tuple[float, ...]
) -> None:
    window = await xterm(guest, f"tile-{position}")
    await guest("set_window_state", window_id=window["id"], state="maximized")
    await guest("tile_window", window_id=window["id"], position=position)
    assert not net_states(xconn, window["id"]) & {"_NET_WM_STATE_MAXIMIZED_VERT"}
    fx, fy, fw, fh = frame(xconn, window["id"])
    tx, ty = round(SCREEN[0] * box[0]), round(SCREEN[1] * box[1])
    tw, th = round(SCREEN[0] * box[2]), round(SCREEN[1] * box[3])
    assert abs(fx - tx) <= 2 and abs(fy - ty) <= 2  # openbox puts xterm 1 px inside
    # xterm rounds its size down to whole character cells: within one cell of the tile
    assert tw - 20 < fw <= tw + 2 and th - 30 < fh <= th + 2


async def test_hide_activate_and_quit_a_whole_app(guest: Guest, xconn: Display) -> None:
    first = await xterm(guest, "app-one")
    second = await xterm(guest, "app-two")
    other = await xterm(guest, "other")
    pids = {first["pid"], second["pid"]}
    hidden = await guest("hide_app", pid=first["pid"])
    assert hidden["windows"] == [first["id"]]
    assert "_NET_WM_STATE_HIDDEN" in net_states(xconn, first["id"])
    assert "_NET_WM_STATE_HIDDEN" not in net_states(xconn, other["id"])
    activated = await guest("activate_app", pid=first["pid"])
    assert activated["windows"] == [first["id"]]
    assert "_NET_WM_STATE_HIDDEN" not in net_states(xconn, first["id"])
    front = await guest("get_frontmost_app")
    assert front["app"]["pid"] == first["pid"]
    closed = await guest("close_app", pid=second["pid"])
    assert closed["windows"] == [second["id"]]
    assert int(second["id"], 0) not in client_ids(xconn)
    assert int(other["id"], 0) in client_ids(xconn)
    assert pids  # both xterms were separate processes


async def test_app_tools_name_what_is_missing(guest: Guest) -> None:
    with pytest.raises(NotFound, match="no window of app"):
        await guest("hide_app", name="no-such-app")
    with pytest.raises(InvalidParams, match="name or its pid"):
        await guest("activate_app")
    with pytest.raises(NotFound, match="list_windows"):
        await guest("set_window_state", window_id="0x7fffffff", state="maximized")


async def test_region_screenshot_zooms(guest: Guest) -> None:
    shot = await guest("screenshot_region", x=10, y=20, width=100, height=50, zoom=3)
    assert (shot["width"], shot["height"]) == (300, 150)
    assert (shot["region_width"], shot["region_height"]) == (100, 50)
    clipped = await guest("screenshot_region", x=SCREEN[0] - 10, y=0, width=100, height=10)
    assert clipped["region_width"] == 10
    with pytest.raises(InvalidParams, match="off the"):
        await guest("screenshot_region", x=SCREEN[0], y=0, width=10, height=10)
