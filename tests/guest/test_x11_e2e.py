"""The X11 tools end to end: real agent on a unix socket, real client, real display."""

from __future__ import annotations

import base64
import io
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from PIL import Image
from Xlib import X

from hivecell.errors import InvalidParams
from hivecell.guest.context import GuestConfig, Services
from hivecell.guest.run import serve
from hivecell.sandbox.guest_client import GuestClient
from tests.guest.xdisplay import Probe, of_type

pytestmark = pytest.mark.anyio
X11_TOOLS = {
    "screenshot", "get_screen_size", "get_cursor_position", "wait_for_settle", "mouse_move",
    "mouse_click", "mouse_drag", "scroll", "keyboard_type", "keyboard_key", "clipboard_read",
    "clipboard_write", "list_windows", "activate_window", "move_resize_window", "close_window",
    "get_frontmost_app", "list_running_apps", "open_app", "open_file", "open_url", "quit_app",
    "start_vnc", "stop_vnc",
}  # fmt: skip


@pytest.fixture
async def client(display: str, tmp_path: Path) -> AsyncIterator[GuestClient]:
    with tempfile.TemporaryDirectory(prefix="hc") as folder:  # sun_path holds 108 bytes
        config = GuestConfig(display=display, roots=[tmp_path], run_dir=Path(folder))
        sock = Path(folder) / "g.sock"
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, Services(config), sock)
            await _until_listening(sock)
            async with GuestClient(f"unix:{sock}") as guest:
                yield guest
                await guest.call("shutdown")


async def _until_listening(sock: Path) -> None:
    with anyio.fail_after(5):
        while True:
            try:
                stream = await anyio.connect_unix(sock)
            except OSError:  # not bound yet, or bound but not listening yet
                await anyio.sleep(0.01)
                continue
            await stream.aclose()
            return


async def _until_managed(client: GuestClient, probe: Probe) -> None:
    with anyio.fail_after(10):
        while True:
            windows = (await client.call("list_windows"))["windows"]
            if any(w["id"] == probe.id for w in windows):
                return
            await anyio.sleep(0.02)


async def test_tools_over_the_wire(client: GuestClient, display: str) -> None:
    info = await client.call("get_agent_info")
    assert {tool["name"] for tool in info["tools"]} >= X11_TOOLS
    health = await client.call("health_check")
    assert health["checks"]["display"] == {"ok": True, "detail": "1280x800"}
    assert health["checks"]["input"] == {"ok": True, "detail": "XTest"}
    shot = await client.call("screenshot", {"scale": 0.5})
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
    assert image.size == (640, 400) and shot["scale"] == 0.5
    text = "wire ✓ 日本"
    await client.call("clipboard_write", {"text": text})
    assert await client.call("clipboard_read") == {"text": text}
    with pytest.raises(InvalidParams, match="1280x800"):
        await client.call("mouse_click", {"x": 4000, "y": 1})
    vnc = await client.call("start_vnc")
    assert await anyio.Path(vnc["socket"]).exists()  # the agent stops x11vnc at shutdown


async def test_many_clicks_land_in_order(client: GuestClient, display: str) -> None:
    # Speed is measured by `hivecell bench sandbox` (click median), not asserted here.
    probe = Probe(display, 200, 150, 300, 200, 0x0000FF)
    try:
        await _until_managed(client, probe)
        px, py = probe.origin()
        for _ in range(3):
            await _click_row(client, px + 10, py + 20)
        events = await probe.wait_for(lambda ev: len(of_type(ev, X.ButtonRelease)) == 300)
    finally:
        probe.close()
    clicks = [(e.root_x, e.root_y) for e in of_type(events, X.ButtonPress)]
    assert clicks == [(px + 10 + i, py + 20) for i in range(100)] * 3


async def _click_row(client: GuestClient, x: int, y: int) -> None:
    for i in range(100):
        await client.call("mouse_click", {"x": x + i, "y": y})
