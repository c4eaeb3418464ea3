"""``mouse_button``: a press and a release as separate calls (Anthropic's left_mouse_down/up),
on a real Xvfb + openbox display, seen by a real X client window."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from Xlib import X

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
