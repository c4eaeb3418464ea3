"""Screen, input, clipboard, settle and VNC tools against a real Xvfb + openbox display."""

from __future__ import annotations

import base64
import io
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image
from Xlib import XK, X

from hivecell.errors import InvalidParams, ToolFailed
from hivecell.guest.tools.input import parse_keys
from tests.guest.xdisplay import Guest, Probe, guest_services, of_type, x_display

pytestmark = pytest.mark.anyio
RED = 0xFF0000


@pytest.fixture
async def probe(display: str, guest: Guest) -> AsyncIterator[Probe]:
    """A red 400x300 window, focused, with no events recorded yet."""
    probe = Probe(display, 300, 200, 400, 300, RED)
    try:
        await guest.wait_window(lambda w: w["id"] == probe.id)
        await guest("activate_window", window_id=probe.id)
        probe.clear()
        yield probe
    finally:
        probe.close()


def decode(result: dict[str, object]) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(str(result["data"]))))


# --- screen ------------------------------------------------------------------------------
async def test_screen_size_and_full_png_screenshot(guest: Guest, probe: Probe) -> None:
    assert await guest("get_screen_size") == {"width": 1280, "height": 800}
    shot = await guest("screenshot")
    image = decode(shot)
    assert (image.format, image.size) == ("PNG", (1280, 800))
    assert (shot["width"], shot["height"], shot["scale"]) == (1280, 800, 1.0)
    assert (shot["screen_width"], shot["screen_height"]) == (1280, 800)
    px, py = probe.origin()
    assert image.convert("RGB").getpixel((px + 200, py + 150)) == (255, 0, 0)  # BGRX -> RGB


async def test_screenshot_scale_formats_and_max_width(guest: Guest, probe: Probe) -> None:
    half = await guest("screenshot", scale=0.5, format="jpeg", quality=70)
    image = decode(half)
    assert (image.format, image.size, half["scale"]) == ("JPEG", (640, 400), 0.5)
    px, py = probe.origin()
    r, g, b = image.convert("RGB").getpixel(((px + 200) // 2, (py + 150) // 2))
    assert r > 200 and g < 60 and b < 60
    narrow = await guest("screenshot", format="webp", max_width=1000)
    assert decode(narrow).format == "WEBP"
    assert (narrow["width"], narrow["height"], narrow["scale"]) == (1000, 625, 0.78125)
    both = await guest("screenshot", scale=0.25, max_width=1000)
    assert (both["width"], both["height"], both["scale"]) == (320, 200, 0.25)
    wide = await guest("screenshot", max_width=4000)  # never upscales
    assert (wide["width"], wide["scale"]) == (1280, 1.0)


async def test_unchanged_screen_reuses_its_encoding_and_one_changed_pixel_is_seen(
    guest: Guest, probe: Probe
) -> None:
    """The guest hands out the last encoding while the pixels are the same; a change of one
    pixel, or other parameters, must never get the stale image."""
    first = await guest("screenshot")
    assert (await guest("screenshot"))["data"] == first["data"]
    # Repaint one pixel of the probe: new background, cleared in a 1x1 area only.
    probe.window.change_attributes(background_pixel=0x00FF00)
    probe.window.clear_area(x=10, y=10, width=1, height=1)
    probe.display.sync()
    changed = await guest("screenshot")
    assert changed["data"] != first["data"]
    px, py = probe.origin()
    image = decode(changed).convert("RGB")
    assert image.getpixel((px + 10, py + 10)) == (0, 255, 0)
    assert image.getpixel((px + 11, py + 10)) == (255, 0, 0)  # its neighbour was not repainted
    half = await guest("screenshot", scale=0.5)
    assert (half["width"], decode(half).size) == (640, (640, 400))
    jpeg = await guest("screenshot", format="jpeg", quality=50)
    assert decode(jpeg).format == "JPEG"
    assert (await guest("screenshot", format="jpeg", quality=90))["data"] != jpeg["data"]


async def test_wait_for_settle_returns_settled_on_a_static_screen(guest: Guest) -> None:
    # How quickly is a benchmark figure (bench sandbox: settle_static), not a test's.
    await guest("wait_for_settle")
    results = [await guest("wait_for_settle", timeout=30) for _ in range(3)]
    assert all(r["settled"] is True for r in results), results
    assert all(r["waited_ms"] >= 50 for r in results)  # at least one quiet period


async def test_wait_for_settle_times_out_while_the_screen_changes(
    guest: Guest, display: str
) -> None:
    probe = Probe(display, 100, 100, 200, 200, RED)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_flash, probe)
            busy = await guest("wait_for_settle", timeout=0.4, quiet_ms=100)
            tg.cancel_scope.cancel()
    finally:
        probe.close()
    assert busy["settled"] is False
    assert 400 <= busy["waited_ms"] < 20_000  # ended at its timeout (generous: loaded CI)
    calm = await guest("wait_for_settle", timeout=5, quiet_ms=100)
    assert calm["settled"] is True


async def _flash(probe: Probe) -> None:
    """Repaint the probe in a new colour every 10 ms, like an animation."""
    for step in range(10_000):
        probe.window.change_attributes(background_pixel=(step * 0x3F1F0F) & 0xFFFFFF)
        probe.window.clear_area()
        probe.display.flush()
        await anyio.sleep(0.01)


async def test_action_with_settle_waits_for_the_screen(guest: Guest, probe: Probe) -> None:
    px, py = probe.origin()
    with anyio.fail_after(5):
        assert await guest("mouse_move", x=px + 5, y=py + 5, settle=True) == {
            "x": px + 5,
            "y": py + 5,
        }


async def test_unreachable_display_is_a_clear_error(tmp_path: Path) -> None:
    with guest_services(":4093", tmp_path) as services:
        guest = Guest(services)
        with pytest.raises(ToolFailed, match=r"cannot connect to X display ':4093' \(DISPLAY\)"):
            await guest("get_screen_size")
        health = await guest("health_check")
        assert health["checks"]["display"]["ok"] is False


# --- pointer -----------------------------------------------------------------------------
async def test_mouse_click_buttons_and_double_click(guest: Guest, probe: Probe) -> None:
    px, py = probe.origin()
    assert await guest("mouse_click", x=px + 40, y=py + 30) == {"x": px + 40, "y": py + 30}
    assert await guest("get_cursor_position") == {"x": px + 40, "y": py + 30}
    await guest("mouse_click", x=px + 50, y=py + 60, button="right")
    await guest("mouse_click", x=px + 70, y=py + 80, button="middle", clicks=2)
    events = await probe.wait_for(lambda ev: len(of_type(ev, X.ButtonRelease)) == 4)
    presses = of_type(events, X.ButtonPress)
    assert [(e.detail, e.root_x - px, e.root_y - py) for e in presses] == [
        (1, 40, 30),
        (3, 50, 60),
        (2, 70, 80),
        (2, 70, 80),
    ]


async def test_coordinates_outside_the_screen_are_rejected(guest: Guest) -> None:
    with pytest.raises(InvalidParams, match="1280x800"):
        await guest("mouse_click", x=1280, y=10)
    with pytest.raises(InvalidParams, match="outside the 1280x800 screen"):
        await guest("mouse_move", x=10, y=800)
    with pytest.raises(InvalidParams, match="1280x800"):
        await guest("mouse_drag", from_x=10, from_y=10, to_x=5000, to_y=10)
    with pytest.raises(InvalidParams, match="1280x800"):
        await guest("scroll", x=2000, y=2000, dy=1)
    assert await guest("get_cursor_position") != {"x": 5000, "y": 10}


async def test_mouse_drag_presses_moves_and_releases(guest: Guest, probe: Probe) -> None:
    px, py = probe.origin()
    result = await guest(
        "mouse_drag", from_x=px + 10, from_y=py + 20, to_x=px + 210, to_y=py + 120, steps=5
    )
    assert result == {"x": px + 210, "y": py + 120}
    events = await probe.wait_for(lambda ev: bool(of_type(ev, X.ButtonRelease)))
    (press,), (release,) = of_type(events, X.ButtonPress), of_type(events, X.ButtonRelease)
    assert (press.detail, press.root_x - px, press.root_y - py) == (1, 10, 20)
    assert (release.root_x - px, release.root_y - py) == (210, 120)
    held = [e for e in of_type(events, X.MotionNotify) if e.state & X.Button1Mask]
    dragged = [(e.root_x - px, e.root_y - py) for e in held]
    assert dragged[-5:] == [(50, 40), (90, 60), (130, 80), (170, 100), (210, 120)]


async def test_scroll_sends_one_wheel_click_per_notch(guest: Guest, probe: Probe) -> None:
    px, py = probe.origin()
    await guest("scroll", x=px + 100, y=py + 100, dy=3)
    await guest("scroll", x=px + 100, y=py + 100, dy=-2, dx=1)
    await guest("scroll", x=px + 100, y=py + 100, dx=-1)
    events = await probe.wait_for(lambda ev: len(of_type(ev, X.ButtonRelease)) == 7)
    assert [e.detail for e in of_type(events, X.ButtonPress)] == [5, 5, 5, 4, 4, 7, 6]
    with pytest.raises(InvalidParams, match="dy=3"):
        await guest("scroll", x=10, y=10)


# --- keyboard ----------------------------------------------------------------------------
def _pressed(probe: Probe, events: list[Any]) -> list[tuple[int, int]]:
    """(keysym, modifier state) of each key press."""
    return [(probe.keysym(e), e.state) for e in of_type(events, X.KeyPress)]


async def test_keyboard_key_combos_reach_the_focused_window(guest: Guest, probe: Probe) -> None:
    await guest("keyboard_key", keys="ctrl+shift+t")
    await guest("keyboard_key", keys="Return")
    await guest("keyboard_key", keys="CONTROL+A")  # names are case-insensitive in combos
    await guest("keyboard_key", keys="Page_Down", repeat=2)
    await guest("keyboard_key", keys="alt+F5")
    await guest("keyboard_key", keys="super")
    await guest("keyboard_key", keys="ctrl++")
    events = await probe.wait_for(lambda ev: len(of_type(ev, X.KeyRelease)) >= 14)
    presses = _pressed(probe, events)
    modifiers = {XK.XK_Control_L, XK.XK_Shift_L, XK.XK_Alt_L, XK.XK_Super_L}
    shift, ctrl, alt = X.ShiftMask, X.ControlMask, X.Mod1Mask
    assert [p for p in presses if p[0] not in modifiers] == [
        (XK.XK_T, ctrl | shift),
        (XK.XK_Return, 0),
        (XK.XK_a, ctrl),
        (XK.XK_Page_Down, 0),
        (XK.XK_Page_Down, 0),
        (XK.XK_F5, alt),
        (XK.XK_plus, ctrl | shift),
    ]
    assert (XK.XK_Super_L, 0) in presses
    assert len(of_type(events, X.KeyPress)) == len(of_type(events, X.KeyRelease))  # none held


async def test_unknown_keys_are_rejected_with_examples(guest: Guest) -> None:
    with pytest.raises(InvalidParams, match=r"unknown key 'hyperdrive'.*ctrl\+c"):
        await guest("keyboard_key", keys="ctrl+hyperdrive")
    with pytest.raises(InvalidParams, match="empty key name"):
        await guest("keyboard_key", keys="ctrl+ +t")
    with pytest.raises(InvalidParams, match="has no key"):
        await guest("keyboard_type", text="bell\x07")


def test_parse_keys_aliases_and_modifiers() -> None:
    assert parse_keys("ctrl+shift+t") == [XK.XK_Control_L, XK.XK_Shift_L, XK.XK_t]
    assert parse_keys("Win+e") == parse_keys("super+e") == parse_keys("cmd+E")
    assert parse_keys("enter") == parse_keys("Return") == [XK.XK_Return]
    assert parse_keys("pgdn") == parse_keys("page_down") == [XK.XK_Page_Down]
    assert parse_keys("+") == [XK.XK_plus]
    assert parse_keys("T") == [XK.XK_T]  # alone, a letter types itself
    assert parse_keys("alt+F4") == [XK.XK_Alt_L, XK.XK_F4]


async def test_keyboard_type_sends_unicode_keysyms(guest: Guest, probe: Probe) -> None:
    text = "aZ é✓日"
    assert await guest("keyboard_type", text=text) == {"characters": len(text)}
    events = await probe.wait_for(lambda ev: len(of_type(ev, X.KeyRelease)) >= 7)
    typed = [probe.keysym(e) for e in of_type(events, X.KeyPress)]
    # é and ✓ share one scratch keycode (plain and shifted): one keymap change for two.
    shift = XK.XK_Shift_L
    assert typed == [ord("a"), shift, ord("Z"), ord(" "), 0xE9, shift, 0x1002713, 0x10065E5]


# --- clipboard ---------------------------------------------------------------------------
async def test_clipboard_round_trip_with_unicode(guest: Guest) -> None:
    text = "héllo wörld ✓ 日本\nsecond line\ttab"
    assert await guest("clipboard_write", text=text) == {"ok": True}
    assert await guest("clipboard_read") == {"text": text}
    await guest("clipboard_write", text="replaced")
    assert await guest("clipboard_read") == {"text": "replaced"}


async def test_empty_clipboard_reads_as_empty_text(tmp_path: Path) -> None:
    with x_display() as fresh, guest_services(fresh, tmp_path) as services:
        assert await Guest(services)("clipboard_read") == {"text": ""}


# --- vnc ---------------------------------------------------------------------------------
async def test_vnc_listens_only_on_the_unix_socket(guest: Guest) -> None:
    sock = guest.services.config.vnc_socket
    started = await guest("start_vnc")
    try:
        assert started == {"socket": str(sock)} and sock.exists()
        process = guest.services.vnc
        assert await guest("start_vnc") == started and guest.services.vnc is process
        assert await _rfb_banner(sock) == b"RFB 003.008\n"
        assert _tcp_listeners(process.pid) == set()
    finally:
        assert await guest("stop_vnc") == {"ok": True}
    assert process.returncode is not None and not sock.exists()
    assert guest.services.vnc is None


async def _rfb_banner(sock: Path) -> bytes:
    with anyio.fail_after(5):
        async with await anyio.connect_unix(sock) as stream:
            return await stream.receive(12)


def _tcp_listeners(pid: int) -> set[int]:
    """Inodes of TCP sockets in LISTEN state owned by pid."""
    links = [_readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    inodes = {link[8:-1] for link in links if link.startswith("socket:[")}
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                listening.add(int(fields[9]))
    return listening


def _readlink(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except FileNotFoundError:  # closed meanwhile, e.g. the fd that listed the directory
        return ""


def test_tcp_listener_helper_sees_a_real_listener() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert _tcp_listeners(os.getpid())
