"""``mouse_button`` (a press and a release as separate calls, Anthropic's left_mouse_down/up)
and ``keyboard_hold`` (hold_key), on a real Xvfb + openbox display, seen by a real X window."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from Xlib import XK, X

from hivecell.errors import InvalidParams
from tests.guest.xdisplay import Guest, Probe, of_type

pytestmark = pytest.mark.anyio


@pytest.fixture
async def probe(display: str, guest: Guest) -> AsyncIterator[Probe]:
    probe = Probe(display, 300, 200, 400, 300, 0x00AA00)
    try:
        await guest.wait_window(lambda w: w["id"] == probe.id)
        await guest("activate_window", window_id=probe.id)
        probe.clear()
        yield probe
    finally:
        probe.close()


async def test_press_move_release_is_a_drag(guest: Guest, probe: Probe) -> None:
    px, py = probe.origin()
    await guest("mouse_move", x=px + 10, y=py + 20)
    assert await guest("mouse_button", button="left", down=True) == {"x": px + 10, "y": py + 20}
    await guest("mouse_move", x=px + 110, y=py + 70)
    assert await guest("mouse_button", button="left", down=False) == {"x": px + 110, "y": py + 70}
    events = await probe.wait_for(lambda ev: bool(of_type(ev, X.ButtonRelease)))
    (press,), (release,) = of_type(events, X.ButtonPress), of_type(events, X.ButtonRelease)
    assert (press.detail, press.root_x - px, press.root_y - py) == (1, 10, 20)
    assert (release.detail, release.root_x - px, release.root_y - py) == (1, 110, 70)
    held = [e for e in of_type(events, X.MotionNotify) if e.state & X.Button1Mask]
    assert (held[-1].root_x - px, held[-1].root_y - py) == (110, 70)
    # released for real: the next move carries no button
    await guest("mouse_move", x=px + 120, y=py + 80)
    events = await probe.wait_for(
        lambda ev: any(e.root_x - px == 120 for e in of_type(ev, X.MotionNotify))
    )
    assert not of_type(events, X.MotionNotify)[-1].state & X.Button1Mask


async def test_the_right_button_too(guest: Guest, probe: Probe) -> None:
    px, py = probe.origin()
    await guest("mouse_move", x=px + 30, y=py + 30)
    await guest("mouse_button", button="right", down=True)
    await guest("mouse_button", button="right", down=False)
    events = await probe.wait_for(lambda ev: bool(of_type(ev, X.ButtonRelease)))
    assert [e.detail for e in of_type(events, X.ButtonPress)] == [3]


async def test_keyboard_hold_keeps_keys_down_then_releases_them(guest: Guest, probe: Probe) -> None:
    started = anyio.current_time()
    assert await guest("keyboard_hold", keys="shift+a", seconds=0.3) == {"ok": True}
    took = anyio.current_time() - started
    events = await probe.wait_for(lambda ev: len(of_type(ev, X.KeyRelease)) >= 2)
    presses, releases = of_type(events, X.KeyPress), of_type(events, X.KeyRelease)
    assert probe.keysym(presses[0]) in (XK.XK_Shift_L, XK.XK_Shift_R)
    # the last release (shift, pressed first) comes after every press, 0.3 s after the first
    assert releases[-1].time - presses[0].time >= 300 and took >= 0.3
    assert max(e.time for e in presses) <= releases[-1].time


async def test_a_cancelled_hold_still_releases(guest: Guest, probe: Probe) -> None:
    with anyio.move_on_after(0.2) as scope:
        await guest("keyboard_hold", keys="ctrl", seconds=30)
    assert scope.cancelled_caught
    events = await probe.wait_for(lambda ev: bool(of_type(ev, X.KeyRelease)))
    [release] = of_type(events, X.KeyRelease)
    assert probe.keysym(release) in (XK.XK_Control_L, XK.XK_Control_R)


async def test_clicks_and_scrolls_with_held_keys(guest: Guest, probe: Probe) -> None:
    px, py = probe.origin()
    await guest("mouse_click", x=px + 20, y=py + 20, hold="shift")
    await guest("mouse_click", x=px + 40, y=py + 40, hold="ctrl+shift", clicks=2)
    await guest("scroll", x=px + 60, y=py + 60, dy=1, hold="ctrl")
    await guest("mouse_click", x=px + 80, y=py + 80)  # and nothing is left held afterwards
    events = await probe.wait_for(lambda ev: len(of_type(ev, X.ButtonRelease)) == 5)
    states = [(e.detail, e.state & (X.ShiftMask | X.ControlMask))
              for e in of_type(events, X.ButtonPress)]  # fmt: skip
    both = X.ShiftMask | X.ControlMask
    assert states == [(1, X.ShiftMask), (1, both), (1, both), (5, X.ControlMask), (1, 0)]
    assert len(of_type(events, X.KeyRelease)) == len(of_type(events, X.KeyPress)) == 4


async def test_held_keys_are_released_when_the_click_fails(guest: Guest, probe: Probe) -> None:
    with pytest.raises(InvalidParams, match="outside the 1280x800 screen"):
        await guest("mouse_click", x=5000, y=10, hold="shift")
    with pytest.raises(InvalidParams, match="unknown key 'hyper7'"):
        await guest("mouse_click", x=10, y=10, hold="hyper7")  # nothing pressed, nothing clicked
    events = await probe.wait_for(lambda ev: bool(of_type(ev, X.KeyRelease)))
    assert len(of_type(events, X.KeyPress)) == len(of_type(events, X.KeyRelease)) == 1
    assert not of_type(events, X.ButtonPress)
