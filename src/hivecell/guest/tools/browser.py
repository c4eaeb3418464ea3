"""Guest tools of the catalogue's browser domain: Chromium driven over the DevTools Protocol.

The agent starts its own Chromium with ``--remote-debugging-pipe``: DevTools speaks over two
inherited pipes (fd 3 in, fd 4 out), so no port and no socket exists that a page's script,
another process in the sandbox or anything outside could connect to. Only this agent holds
the other ends. One such browser per agent; its profile lives in the agent's run folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import anyio.to_thread

from hivecell.errors import InvalidParams, NotFound, NotSupported, Timeout, ToolFailed
from hivecell.guest.context import CallContext, Services
from hivecell.guest.dispatch import Router
from hivecell.guest.tools import desktop
from hivecell.guest.x11 import display_env
from hivecell.protocol import catalog as c
from hivecell.protocol import methods as m

router = Router()
CALL_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 30.0
START_TIMEOUT_S = 30.0
_BROWSERS: weakref.WeakKeyDictionary[Services, DevToolsBrowser] = weakref.WeakKeyDictionary()
_TEXT_JS = "document.body ? document.body.innerText : ''"


class DevToolsBrowser:
    """One Chromium and the DevTools pipe to it. Blocking; called on worker threads."""

    def __init__(self, process: Spawned, to_browser: int, from_browser: int):
        self.process = process
        self._out, self._in = to_browser, from_browser
        self._buffer = b""
        self._next_id = 0
        self._lock = threading.Lock()
        self._sessions: dict[str, str] = {}  # target id -> flat session id
        self._seen: dict[str, int] = {}  # target id -> order first seen (the tabs' order)
        self.active: str | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def call(self, method: str, params: dict[str, Any] | None = None, session: str = "") -> Any:
        with self._lock:
            self._next_id += 1
            message: dict[str, Any] = {"id": self._next_id, "method": method}
            message["params"] = params or {}
            if session:
                message["sessionId"] = session
            self._send(message)
            reply = self._until(lambda msg: msg.get("id") == self._next_id, CALL_TIMEOUT_S)
        if "error" in reply:
            raise ToolFailed(f"browser: {method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result", {})

    def call_and_wait(self, method: str, params: dict[str, Any], session: str, event: str) -> bool:
        """Send a command and wait for ``event`` on the same session (e.g. the page's load)."""
        with self._lock:
            self._next_id += 1
            call_id = self._next_id
            self._send({"id": call_id, "method": method, "params": params, "sessionId": session})
            replied: list[dict[str, Any]] = []

            def done(msg: dict[str, Any]) -> bool:
                if msg.get("id") == call_id:
                    replied.append(msg)
                    return "error" in msg
                return msg.get("method") == event and msg.get("sessionId") == session

            try:
                last = self._until(done, LOAD_TIMEOUT_S)
            except Timeout:
                return False  # a page still loading after the limit is shown as it is
        if "error" in last:
            raise ToolFailed(f"browser: {method}: {last['error'].get('message', last['error'])}")
        return True

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._out, data) :]
        except OSError:
            raise ToolFailed(
                "the DevTools browser has exited; the next browser call starts it"
            ) from None

    def _until(self, wanted: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, _, self._buffer = self._buffer.partition(b"\0")
                msg = json.loads(raw)
                if wanted(msg):
                    return msg
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise Timeout(f"the browser did not answer within {timeout:g} s")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise ToolFailed("the DevTools browser has exited; the next browser call starts it")
            self._buffer += chunk

    def session(self, target: str) -> str:
        if target not in self._sessions:
            result = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
            session = result["sessionId"]
            self.call("Page.enable", session=session)
            self._sessions[target] = session
        return self._sessions[target]

    def pages(self) -> list[dict[str, Any]]:
        """The page targets, oldest first: Target.getTargets has no stable order (a tab
        opened later can come first), and a model numbering tabs needs one."""
        infos = self.call("Target.getTargets")["targetInfos"]
        pages = [t for t in infos if t.get("type") == "page"]
        for page in pages:
            self.remember(page["targetId"])
        return sorted(pages, key=lambda page: self._seen[page["targetId"]])

    def remember(self, target: str) -> None:
        """Place a tab last in the tabs' order unless already placed."""
        self._seen.setdefault(target, len(self._seen))

    def close(self) -> None:
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):
                os.close(fd)


# --- starting the browser ----------------------------------------------------------------
class Spawned:
    """A child started with posix_spawn: Popen cannot place inherited fds at 3 and 4 (and
    dash, /bin/sh here, cannot redirect fds above 9)."""

    def __init__(self, argv: list[str], env: dict[str, str], fds: dict[int, int]) -> None:
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        ]
        actions += [(os.POSIX_SPAWN_DUP2, source, target) for target, source in fds.items()]
        self.pid = os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


async def browser_for(ctx: CallContext) -> DevToolsBrowser:
    current = _BROWSERS.get(ctx.services)
    if current is not None and current.alive:
        return current
    if current is not None:
        current.close()
    started = await anyio.to_thread.run_sync(start, ctx)
    _BROWSERS[ctx.services] = started
    return started


def start(ctx: CallContext) -> DevToolsBrowser:
    binary = next((shutil.which(n) for n in desktop._CHROMIUMS if shutil.which(n)), None)
    if binary is None:
        raise NotSupported("the browser tools need Chromium in the sandbox (apt install chromium)")
    profile = ctx.config.run_dir / "chromium-devtools"
    profile.mkdir(parents=True, exist_ok=True)
    to_read, to_write = _high_pipe()  # we write, Chromium reads (its fd 3)
    from_read, from_write = _high_pipe()  # Chromium writes (its fd 4), we read
    argv = [binary, *chromium_flags(profile), "about:blank"]
    env = display_env(ctx.config.display or ctx.services.x.name, ctx.config.env)
    try:
        process = Spawned(argv, env, {3: to_read, 4: from_write})
    finally:
        os.close(to_read)
        os.close(from_write)
    ctx.services.launched[process.pid] = argv
    browser = DevToolsBrowser(process, to_write, from_read)
    try:
        _await_page(browser)
    except BaseException:
        process.kill()
        browser.close()
        raise
    return browser


def _high_pipe() -> tuple[int, int]:
    """A pipe whose fds are >= 10 and close-on-exec, so the shell's 3/4 moves never collide."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


def chromium_flags(profile: Path) -> list[str]:
    flags = [f for f in desktop._chromium_flags() if not f.startswith("--user-data-dir=")]
    return [
        *flags, "--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
        "--no-default-browser-check", "--disable-back-forward-cache",
    ]  # fmt: skip


def _await_page(browser: DevToolsBrowser) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not browser.alive:
            raise ToolFailed(
                f"Chromium exited with code {browser.process.returncode} at start; "
                "run it with exec_command to see its error output"
            )
        pages = browser.pages()
        if pages:
            browser.active = pages[0]["targetId"]
            return
        time.sleep(0.05)  # no event announces the first tab to a fresh pipe client
    raise Timeout(f"Chromium opened no tab within {START_TIMEOUT_S:g} s")


# --- tabs --------------------------------------------------------------------------------
def _tab(info: dict[str, Any], active: str | None) -> c.Tab:
    return c.Tab(
        id=info["targetId"], url=info.get("url", ""), title=info.get("title", ""),
        active=info["targetId"] == active,
    )  # fmt: skip


def _active(browser: DevToolsBrowser) -> str:
    pages = browser.pages()
    if not pages:
        raise NotFound("the browser has no tab open; call browser_open")
    if browser.active not in {p["targetId"] for p in pages}:
        browser.active = pages[0]["targetId"]
    assert browser.active is not None
    return browser.active


def _info(browser: DevToolsBrowser, target: str) -> c.Tab:
    info = browser.call("Target.getTargetInfo", {"targetId": target})["targetInfo"]
    return _tab(info, browser.active)


def _safe_url(url: str) -> str:
    url = desktop.normalize_url(url)
    if url.lower().startswith(("chrome:", "devtools:", "view-source:")):
        raise InvalidParams(f"{url!r}: browser-internal pages are not opened by the agent")
    return url


async def _run(ctx: CallContext, fn: Any, *args: Any) -> Any:
    browser = await browser_for(ctx)
    return await anyio.to_thread.run_sync(fn, browser, *args)


@router.method("browser_open")
async def browser_open(p: c.BrowserUrlParams, ctx: CallContext) -> c.Tab:
    return await _run(ctx, _open_sync, _safe_url(p.url))


def _open_sync(browser: DevToolsBrowser, url: str) -> c.Tab:
    pages = browser.pages()
    if len(pages) == 1 and pages[0].get("url") == "about:blank":
        target = pages[0]["targetId"]  # the fresh browser's empty first tab
        browser.active = target
        return _navigate(browser, target, url)
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    browser.remember(target)
    browser.active = target
    return _navigate(browser, target, url)


def _navigate(browser: DevToolsBrowser, target: str, url: str) -> c.Tab:
    session = browser.session(target)
    browser.call("Target.activateTarget", {"targetId": target})
    browser.call_and_wait("Page.navigate", {"url": url}, session, "Page.loadEventFired")
    return _info(browser, target)


@router.method("browser_tabs")
async def browser_tabs(p: m.Empty, ctx: CallContext) -> c.TabList:
    return await _run(ctx, _tabs_sync)


def _tabs_sync(browser: DevToolsBrowser) -> c.TabList:
    active = _active(browser)
    return c.TabList(tabs=[_tab(info, active) for info in browser.pages()])


@router.method("browser_switch_tab")
async def browser_switch_tab(p: c.TabParams, ctx: CallContext) -> c.Tab:
    return await _run(ctx, _switch_sync, p.tab_id)


def _known_tab(browser: DevToolsBrowser, tab_id: str) -> str:
    if tab_id not in {page["targetId"] for page in browser.pages()}:
        raise NotFound(f"no tab {tab_id!r}; call browser_tabs for the current ids")
    return tab_id


def _switch_sync(browser: DevToolsBrowser, tab_id: str) -> c.Tab:
    target = _known_tab(browser, tab_id)
    browser.call("Target.activateTarget", {"targetId": target})
    browser.active = target
    return _info(browser, target)


@router.method("browser_close_tab")
async def browser_close_tab(p: c.TabParams, ctx: CallContext) -> m.Ok:
    return await _run(ctx, _close_sync, p.tab_id)


def _close_sync(browser: DevToolsBrowser, tab_id: str) -> m.Ok:
    target = _known_tab(browser, tab_id)
    browser.call("Target.closeTarget", {"targetId": target})
    browser._sessions.pop(target, None)
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while target in {page["targetId"] for page in browser.pages()}:
        if time.monotonic() > deadline:
            raise Timeout(f"tab {tab_id} did not close")
        time.sleep(0.02)  # closeTarget answers before the target list drops it
    return m.Ok()


@router.method("browser_navigate")
async def browser_navigate(p: c.BrowserUrlParams, ctx: CallContext) -> c.Tab:
    url = _safe_url(p.url)
    return await _run(ctx, lambda b: _navigate(b, _active(b), url))


@router.method("browser_go")
async def browser_go(p: c.BrowserGoParams, ctx: CallContext) -> c.Tab:
    return await _run(ctx, _go_sync, p.action)


def _go_sync(browser: DevToolsBrowser, action: str) -> c.Tab:
    target = _active(browser)
    session = browser.session(target)
    if action == "reload":
        browser.call_and_wait("Page.reload", {}, session, "Page.loadEventFired")
        return _info(browser, target)
    history = browser.call("Page.getNavigationHistory", session=session)
    index = history["currentIndex"] + (1 if action == "forward" else -1)
    if not 0 <= index < len(history["entries"]):
        raise InvalidParams(f"the tab has no page to go {action} to")
    entry = history["entries"][index]["id"]
    browser.call_and_wait(
        "Page.navigateToHistoryEntry", {"entryId": entry}, session, "Page.loadEventFired"
    )
    return _info(browser, target)


@router.method("browser_page_text")
async def browser_page_text(p: c.PageTextParams, ctx: CallContext) -> c.PageText:
    return await _run(ctx, _text_sync, p.max_chars)


def _text_sync(browser: DevToolsBrowser, max_chars: int) -> c.PageText:
    target = _active(browser)
    session = browser.session(target)
    params = {"expression": _TEXT_JS, "returnByValue": True}
    value = browser.call("Runtime.evaluate", params, session=session)["result"].get("value")
    text = value if isinstance(value, str) else ""
    info = _info(browser, target)
    return c.PageText(
        url=info.url, title=info.title, text=text[:max_chars], truncated=len(text) > max_chars
    )
