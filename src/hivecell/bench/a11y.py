"""``hivecell bench a11y``: how long the accessibility tree of a browser page takes.

A real sandbox, Chromium on a file:// form page (the size of a typical login or search
page), timed from the host: the guest call, the AT-SPI walk of Chromium's window and page,
and the result's transfer. Goal: a median of at most 150 ms.
"""

from __future__ import annotations

import time

import anyio
from pydantic import BaseModel

from hivecell.bench.stats import Stats, timed
from hivecell.sandbox.base import SandboxProvider, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient

TARGET_MS = 150.0
PAGE_PATH = "/home/user/bench-a11y.html"
PAGE = (
    """<!doctype html><html><head><title>bench form</title></head><body>
<h1>Sign in</h1><nav><a href="#a">Home</a> <a href="#b">Help</a> <a href="#c">About</a></nav>
<form><label>Email <input name="email"></label><label>Password <input type="password"></label>
<label><input type="checkbox"> Remember me</label><select><option>en</option><option>de</option>
</select><button type="button">Sign in</button></form>
<p>Forgot your password? <a href="#r">Reset it</a>.</p>
<ul>"""
    + "".join(f"<li><a href='#{i}'>Item {i}</a></li>" for i in range(20))
    + """</ul>
</body></html>"""
)
READY_TIMEOUT_S = 60.0


class A11yReport(BaseModel):
    browser_tree: Stats
    nodes: int  # elements in the tree of the last run
    visited: int  # objects the walk asked about
    target_ms: float = TARGET_MS
    met: bool


async def measure_a11y(provider: SandboxProvider, *, runs: int = 20) -> A11yReport:
    info = await provider.create(SandboxSpec())
    try:
        async with await provider.connect(info.id) as guest:
            await _open_page(guest)
            last: dict[str, object] = {}

            async def tree() -> None:
                last.update(await guest.call("accessibility_tree", {}))

            stats = await timed(tree, runs)
    finally:
        with anyio.CancelScope(shield=True):
            await provider.destroy(info.id)
    nodes = last.get("nodes")
    visited = last.get("visited")
    return A11yReport(
        browser_tree=stats,
        nodes=len(nodes) if isinstance(nodes, list) else 0,
        visited=visited if isinstance(visited, int) else 0,
        met=stats.median_ms <= TARGET_MS,
    )


async def _open_page(guest: GuestClient) -> None:
    """Opens the page and waits until Chromium's tree shows its button (Chromium hands a
    page's tree to its browser process a moment after the window appears)."""
    await guest.call("write_file", {"path": PAGE_PATH, "content": PAGE})
    await guest.call("open_url", {"url": f"file://{PAGE_PATH}", "window_timeout": 30})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        result = await guest.call("accessibility_tree", {})
        if any(n["name"] == "Sign in" and n["role"] == "push button" for n in result["nodes"]):
            return
        await anyio.sleep(0.1)
    raise TimeoutError(f"the bench page did not show in the tree within {READY_TIMEOUT_S} s")
