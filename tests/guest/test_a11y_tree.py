"""The accessibility tree in a real local sandbox: a real GTK app and Chromium on a file://
page, read over the sandbox's own AT-SPI bus; clicks and text land in the real apps."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from hivecell.errors import InvalidParams, NotFound
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox.conftest import short_tmp

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.xdist_group("a11y")]

HOME = "/home/user"
GTK_APP = """
import gi, sys
gi.require_version("Gtk", "3.0")
from gi.repository import Gtk
w = Gtk.Window(title="a11y-gtk")
box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)
button = Gtk.Button(label="Push me")
entry = Gtk.Entry()
button.connect("clicked", lambda *_: open(sys.argv[1], "w").write("pushed"))
tap = Gtk.EventBox(); tap.add(Gtk.Label(label="tap here"))
tap.get_accessible().set_name("Tap area")  # no Action interface: clicked with the mouse
tap.connect("button-press-event", lambda *_: open(sys.argv[1] + ".tap", "w").write("tapped"))
box.add(button); box.add(entry); box.add(tap); w.add(box); w.set_default_size(300, 120)
w.connect("destroy", Gtk.main_quit); w.show_all(); Gtk.main()
"""
PAGE = """<!doctype html><html><head><title>a11y page</title></head><body>
<h1>Form</h1>
<button id="go" onclick="document.title = 'clicked ' + document.getElementById('who').value">
Send it</button>
<input id="who" aria-label="Your name">
</body></html>"""
GONE = """<title>gone</title>
<button onclick="this.remove(); document.title = 'removed'">Vanish</button>"""
HOSTILE_WIDE = """<!doctype html><html><head><title>wide</title></head><body><script>
const f = document.createDocumentFragment();
for (let i = 0; i < 50000; i++) { const b = document.createElement('button');
  b.textContent = 'b' + i; f.appendChild(b); }
document.body.appendChild(f); document.title = 'wide ready';
</script></body></html>"""
HOSTILE_DEEP = """<!doctype html><html><head><title>deep</title></head><body><script>
let n = document.body;
for (let i = 0; i < 400; i++) { const d = document.createElement('div');
  d.setAttribute('role', 'group'); d.setAttribute('aria-label', 'g' + i);
  n.appendChild(d); n = d; }
n.appendChild(document.createElement('button')).textContent = 'bottom';
document.title = 'deep ready';
</script></body></html>"""

# GTK (python3-gi, gir1.2-gtk-3.0) and chromium come from scripts/setup.sh: no skip when
# they are missing, a broken set-up must fail.


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def box() -> AsyncIterator[Any]:
    """One sandbox for the module: booting Chromium per test would dominate the run."""
    home = short_tmp("hc-a11y-")
    provider = LocalProvider(home)
    info = await provider.create(SandboxSpec())
    try:
        async with await provider.connect(info.id) as guest:
            yield guest
    finally:
        await provider.destroy(info.id)
        shutil.rmtree(home, ignore_errors=True)


async def write(guest: Any, name: str, text: str) -> str:
    path = f"{HOME}/{name}"
    await guest.call("write_file", {"path": path, "content": text})
    return path


async def tree(guest: Any, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = await guest.call("accessibility_tree", params)
    return result


async def find(
    guest: Any, role: str, name: str, *states: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Waits on the tree itself until the element shows up (apps register, and Chromium
    sends a page's tree to its browser process, asynchronously)."""
    with anyio.fail_after(timeout):
        while True:
            for node in (await tree(guest))["nodes"]:
                if (
                    role in (node["role"], "*")
                    and node["name"] == name
                    and set(states) <= set(node["states"])
                ):
                    return node
            await anyio.sleep(0.1)


# Waits bound a hang, not a speed: CI runs these beside emulated VMs on 2 cores.
async def window_titled(guest: Any, title: str, timeout: float = 120.0) -> None:
    with anyio.fail_after(timeout):
        while not any(w["title"].startswith(title) for w in await windows(guest)):  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def windows(guest: Any) -> list[dict[str, Any]]:
    return list((await guest.call("list_windows", {}))["windows"])


async def read(guest: Any, path: str) -> str | None:
    result = await guest.call("run_shell", {"command": f"cat {path} 2>/dev/null"})
    return str(result["stdout"]) if result["exit_code"] == 0 else None


def inside(node: dict[str, Any], win: dict[str, Any]) -> bool:
    cx, cy = node["x"] + node["width"] // 2, node["y"] + node["height"] // 2
    return win["x"] <= cx < win["x"] + win["width"] and win["y"] <= cy < win["y"] + win["height"]


async def test_gtk_button_and_entry(box: Any) -> None:
    app = await write(box, "app.py", GTK_APP)
    marker = f"{HOME}/pushed.txt"
    await box.call("open_app", {"name": f"/usr/bin/python3 {app} {marker}", "window_timeout": 120})
    button = await find(box, "push button", "Push me")
    entry = next(n for n in (await tree(box))["nodes"] if n["role"] == "text" and n["editable"])
    win = next(w for w in await windows(box) if w["title"] == "a11y-gtk")
    assert inside(button, win) and inside(entry, win)
    assert button["width"] > 10 and button["height"] > 10 and button["actionable"]
    assert button["y"] < entry["y"]  # the button sits above the entry in the box
    second = await tree(box)
    assert button["id"] in {n["id"] for n in second["nodes"]}  # ids are stable

    acted = await box.call("click_element", {"id": button["id"]})
    assert acted["how"].startswith("action")
    with anyio.fail_after(10):
        while await read(box, marker) != "pushed":  # noqa: ASYNC110 - a file in the box, polled
            await anyio.sleep(0.05)

    tap = await find(box, "*", "Tap area")
    assert not tap["actionable"]
    tapped = await box.call("click_element", {"id": tap["id"]})
    assert tapped["how"].startswith("mouse click")
    with anyio.fail_after(10):
        while await read(box, marker + ".tap") != "tapped":  # noqa: ASYNC110 - polled file
            await anyio.sleep(0.05)

    await box.call("set_element_text", {"id": entry["id"], "text": "héllo gtk"})
    with anyio.fail_after(10):
        while _by_id(await tree(box), entry["id"]).get("value") != "héllo gtk":  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def test_chromium_page(box: Any) -> None:
    page = await write(box, "page.html", PAGE)
    await box.call("open_url", {"url": f"file://{page}", "window_timeout": 120})
    button = await find(box, "push button", "Send it")
    field = await find(box, "entry", "Your name", "editable")
    win = next(w for w in await windows(box) if w["title"].startswith("a11y page"))
    assert inside(button, win) and inside(field, win)
    assert field["editable"] and field["x"] > 0 and field["width"] > 20

    await box.call("set_element_text", {"id": field["id"], "text": "Ada"})
    await box.call("click_element", {"id": button["id"]})
    await window_titled(box, "clicked Ada")  # the page saw both the text and the click
    assert (await tree(box))["elapsed_ms"] < 2000


async def test_stale_and_bad_ids(box: Any) -> None:
    with pytest.raises(NotFound, match="fresh accessibility_tree"):
        await box.call("click_element", {"id": "1.999:123456"})
    with pytest.raises(InvalidParams, match="not an element id"):
        await box.call("click_element", {"id": "org.freedesktop.DBus:/x"})
    page = await write(box, "gone.html", GONE)
    await box.call("open_url", {"url": f"file://{page}", "window_timeout": 120})
    vanish = await find(box, "push button", "Vanish")
    await box.call("click_element", {"id": vanish["id"]})  # the page removes the button
    await window_titled(box, "removed")
    with pytest.raises(NotFound, match="fresh accessibility_tree"):
        with anyio.fail_after(20):
            while True:  # Chromium drops the object once the page's change reaches it
                await box.call("click_element", {"id": vanish["id"]})
                await anyio.sleep(0.1)


def _by_id(result: dict[str, Any], element: str) -> dict[str, Any]:
    return next((n for n in result["nodes"] if n["id"] == element), {})


def _dump(result: dict[str, Any]) -> str:  # for assertion messages while debugging
    return json.dumps(result["text"])
