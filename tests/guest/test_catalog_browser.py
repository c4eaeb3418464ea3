"""The browser domain: a real Chromium on Xvfb driven over the DevTools pipe.

Pages come from a server on 127.0.0.1 that this test runs; a hostile page tries to reach
DevTools and reports what it got back to that server.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import anyio
import pytest

from hivecell.errors import InvalidParams, NotFound
from hivecell.guest.tools import browser
from tests.guest.xdisplay import Guest

pytestmark = pytest.mark.anyio

PAGES = {
    "/a": "<title>Page A</title><p>alpha text</p>",
    "/b": "<title>Page B</title><p>bravo text</p>",
    "/c": "<title>Page C</title><p>charlie</p>",
}
# Tries what a page could do to reach DevTools: the usual ports over HTTP and WebSocket.
HOSTILE = """<title>hostile</title><script>
const ports = [9222, 9229, 9223, location.port];
async function probe(port) {
  if (!port) return 'skip';
  // no-cors: an answering server resolves (opaque), only a refused connection rejects
  try { await fetch('http://127.0.0.1:' + port + '/json/version', {mode: 'no-cors'});
        return 'open'; }
  catch (e) { return 'closed'; }
}
function ws(port) {
  return new Promise(done => {
    try { const s = new WebSocket('ws://127.0.0.1:' + port + '/devtools/browser');
          s.onopen = () => done('open'); s.onerror = () => done('closed'); }
    catch (e) { done('closed'); }
  });
}
(async () => {
  const out = [];
  for (const p of ports) { out.push(p + '=' + await probe(p) + '/' + (p ? await ws(p) : '')); }
  out.push('chrome=' + typeof window.chrome?.debugger + ',' + typeof window.cdp);
  await fetch('/report?r=' + encodeURIComponent(out.join(';')));
})();
</script>"""


class Site:
    def __init__(self) -> None:
        self.reports: list[str] = []
        self.reported = threading.Event()


@pytest.fixture
def site() -> Iterator[tuple[str, Site]]:
    state = Site()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/report":
                state.reports.extend(parse_qs(url.query).get("r", []))
                state.reported.set()
                body = "ok"
            else:
                body = HOSTILE if url.path == "/hostile" else PAGES.get(url.path, "nothing")
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


@pytest.fixture
def bguest(guest: Guest) -> Iterator[Guest]:
    yield guest
    found = browser._BROWSERS.pop(guest.services, None)
    if found is not None:
        found.process.kill()
        found.close()


async def test_tabs_navigation_title_and_text(bguest: Guest, site: tuple[str, Site]) -> None:
    base, _ = site
    first = await bguest("browser_open", url=f"{base}/a")
    assert (first["url"], first["title"], first["active"]) == (f"{base}/a", "Page A", True)
    second = await bguest("browser_open", url=f"{base}/b")
    assert second["title"] == "Page B" and second["id"] != first["id"]
    third = await bguest("browser_open", url=f"{base}/c")
    # tabs are listed in the order they were opened, whichever one is active or was used last
    tabs = (await bguest("browser_tabs"))["tabs"]
    assert [(t["id"], t["title"], t["active"]) for t in tabs] == [
        (first["id"], "Page A", False),
        (second["id"], "Page B", False),
        (third["id"], "Page C", True),
    ]
    await bguest("browser_switch_tab", tab_id=first["id"])
    order = [t["id"] for t in (await bguest("browser_tabs"))["tabs"]]
    assert order == [first["id"], second["id"], third["id"]]
    await bguest("browser_close_tab", tab_id=third["id"])
    await bguest("browser_switch_tab", tab_id=second["id"])
    navigated = await bguest("browser_navigate", url=f"{base}/c")
    assert (navigated["id"], navigated["title"]) == (second["id"], "Page C")
    back = await bguest("browser_go", action="back")
    assert (back["url"], back["title"]) == (f"{base}/b", "Page B")
    forward = await bguest("browser_go", action="forward")
    assert forward["title"] == "Page C"
    reloaded = await bguest("browser_go", action="reload")
    assert reloaded["url"] == f"{base}/c"
    text = await bguest("browser_page_text")
    assert (text["title"], text["text"].strip(), text["truncated"]) == ("Page C", "charlie", False)
    switched = await bguest("browser_switch_tab", tab_id=first["id"])
    assert switched["active"] and switched["title"] == "Page A"
    assert "alpha text" in (await bguest("browser_page_text"))["text"]
    await bguest("browser_close_tab", tab_id=second["id"])
    assert [t["id"] for t in (await bguest("browser_tabs"))["tabs"]] == [first["id"]]
    # the browser's window is on the agent's display, where a screenshot sees it
    await bguest.wait_window(lambda w: w["title"].startswith("Page A"), timeout=30)


async def test_browser_refuses_what_it_should(bguest: Guest, site: tuple[str, Site]) -> None:
    base, _ = site
    await bguest("browser_open", url=f"{base}/a")
    with pytest.raises(InvalidParams, match="no page to go forward"):
        await bguest("browser_go", action="forward")
    with pytest.raises(NotFound, match="browser_tabs"):
        await bguest("browser_switch_tab", tab_id="NOPE")
    for url in ("chrome://settings", "devtools://devtools/bundled/inspector.html"):
        with pytest.raises(InvalidParams, match="browser-internal"):
            await bguest("browser_navigate", url=url)


def _listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = str(fd.readlink())
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    return inodes


def _process_group(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    pids.append(int(entry.name))
    return pids


async def test_a_hostile_page_cannot_reach_devtools(bguest: Guest, site: tuple[str, Site]) -> None:
    base, state = site
    await bguest("browser_open", url=f"{base}/hostile")
    with anyio.fail_after(30):
        await anyio.to_thread.run_sync(state.reported.wait)
    report = state.reports[0]
    # the probe works: the page's own server (last) answers; the debugging ports do not
    assert report.startswith("9222=closed/closed;9229=closed/closed;9223=closed/closed;"), report
    assert f"{base.rsplit(':', 1)[1]}=open/" in report, report
    assert "chrome=undefined,undefined" in report
    found = browser._BROWSERS[bguest.services]
    pids = _process_group(found.process.pid)
    assert len(pids) > 1  # Chromium's helpers are in the group too
    # No process of this Chromium listens on TCP at all, and it wrote no DevToolsActivePort.
    assert not _socket_inodes(pids) & _listening_tcp_inodes()
    profile = bguest.services.config.run_dir / "chromium-devtools"
    assert not await anyio.Path(profile / "DevToolsActivePort").exists()
    cmdline = await anyio.Path(f"/proc/{found.process.pid}/cmdline").read_text()
    assert "--remote-debugging-pipe" in cmdline and "remote-debugging-port" not in cmdline
