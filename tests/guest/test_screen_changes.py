"""A cached screenshot is handed out only while the X server reports no change (DAMAGE).

The guest answers a look at an unchanged screen without grabbing it; these tests try every
way another client can change the screen, and a painter racing the looks, and compare each
answer with an independent grab of the real screen.
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import mss
import pytest
from PIL import Image
from Xlib import X
from Xlib.display import Display

from tests.guest.xdisplay import Guest, Probe

pytestmark = pytest.mark.anyio
RED, GREEN, BLUE = 0xFF0000, 0x00FF00, 0x0000FF


@pytest.fixture
def probe(display: str) -> Iterator[Probe]:
    probe = Probe(display, 200, 150, 300, 200, RED)
    try:
        yield probe
    finally:
        probe.close()


def pixels(shot: dict[str, Any]) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB").tobytes()


def real_screen(display: str) -> bytes:
    """The screen as a separate client grabs it now."""
    with mss.MSS(display=display) as grabber:
        shot = grabber.grab(grabber.monitors[0])
        return Image.frombytes("RGB", shot.size, shot.rgb).tobytes()


async def quiet_screen(display: str) -> None:
    """Until two grabs by a separate client 150 ms apart agree (openbox redraws a frame after
    a move): the guest's own grabs play no part in deciding the screen is quiet."""
    with anyio.fail_after(30):
        last = real_screen(display)
        while True:
            await anyio.sleep(0.15)
            if (now := real_screen(display)) == last:
                return
            last = now


async def shows_the_real_screen(guest: Guest, display: str) -> bytes:
    await quiet_screen(display)
    seen = pixels(await guest("screenshot"))
    assert seen == real_screen(display)
    return seen


async def test_an_unchanged_screen_is_answered_without_grabbing_it(
    guest: Guest, display: str, probe: Probe
) -> None:
    await guest.wait_window(lambda w: w["id"] == probe.id)
    assert (await guest("wait_for_settle", timeout=30))["settled"]
    first = await guest("screenshot")
    x = guest.services.x
    await x.release_grabber()  # as the idle agent does
    assert (await guest("screenshot"))["data"] == first["data"]
    assert not x.grabber_open  # answered from the DAMAGE reports alone
    # Other parameters are another image: that one is grabbed and encoded.
    assert (await guest("screenshot", scale=0.5))["width"] == 640
    assert x.grabber_open


def _fill(probe: Probe) -> None:
    gc = probe.window.create_gc(foreground=BLUE)
    probe.window.fill_rectangle(gc, 5, 5, 3, 2)
    gc.free()


def _put_image(probe: Probe) -> None:
    gc = probe.window.create_gc()
    probe.window.put_image(gc, 40, 40, 2, 2, X.ZPixmap, 24, 0, b"\x00\xff\x00\x00" * 4)
    gc.free()


def _child(probe: Probe) -> None:
    child = probe.window.create_window(
        60, 60, 7, 7, 0, X.CopyFromParent, X.InputOutput, X.CopyFromParent,
        background_pixel=GREEN,
    )  # fmt: skip
    child.map()


def _move(probe: Probe) -> None:
    probe.window.configure(x=230, y=170)


def _unmap(probe: Probe) -> None:
    probe.window.unmap()  # uncovers the root window's background


CHANGES: dict[str, Callable[[Probe], None]] = {
    "fill": _fill,
    "put_image": _put_image,
    "child_window": _child,
    "move": _move,
    "unmap": _unmap,
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_each_kind_of_change_by_another_client_is_seen(
    guest: Guest, display: str, probe: Probe, change: str
) -> None:
    await guest.wait_window(lambda w: w["id"] == probe.id)
    # Settled: openbox may still be drawing the new window's frame.
    assert (await guest("wait_for_settle", timeout=30))["settled"]
    before = await shows_the_real_screen(guest, display)
    await guest.services.x.release_grabber()
    CHANGES[change](probe)
    probe.display.sync()  # the X server has drawn it
    assert await shows_the_real_screen(guest, display) != before


async def test_a_painter_racing_the_looks_never_leaves_a_stale_answer(
    guest: Guest, display: str
) -> None:
    """Another client repaints as fast as it can while the agent looks; every time it stops,
    the next look shows its last colour (a report lost at a re-arm would show an older one)."""
    painter = Display(display)
    window = painter.screen().root.create_window(
        20, 20, 50, 50, 0, X.CopyFromParent, X.InputOutput, X.CopyFromParent,
        background_pixel=RED, override_redirect=1,
    )  # fmt: skip
    window.map()
    painter.sync()
    try:
        for burst in range(15):
            stop = threading.Event()

            def paint(burst: int = burst, stop: threading.Event = stop) -> None:
                step = 0
                while not stop.is_set():
                    step += 1
                    window.change_attributes(background_pixel=(burst * 7919 + step) & 0xFFFFFF)
                    window.clear_area()
                    painter.sync()

            thread = threading.Thread(target=paint)
            thread.start()
            try:
                for _ in range(3):
                    await guest("screenshot")
            finally:
                stop.set()
                thread.join()
            await shows_the_real_screen(guest, display)
    finally:
        window.destroy()
        painter.close()
