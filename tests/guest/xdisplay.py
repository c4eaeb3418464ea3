"""Test support for the X11 tools: a real Xvfb + openbox display and a probe window.

The display number must be free in two places: the lock file in /tmp and the abstract
socket namespace (shared by every mount namespace on the host's network namespace, e.g.
bwrap sandboxes). libxcb clients try the abstract socket first, so a number that is only
free on disk would send openbox to someone else's server. Xvfb writes the number to
``-displayfd`` once it accepts connections.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from Xlib import X, Xatom, Xutil
from Xlib.display import Display

from hivecell.guest.agent import build_dispatcher
from hivecell.guest.context import CallContext, GuestConfig, Services
from hivecell.guest.tools import desktop

SCREEN = (1280, 800)
# What X and the window manager know, for a failure's message: the window tree (named ones)
# and openbox's client list. Shell, so it runs in a sandbox's run_shell as on the host.
X_STATE = (
    "xwininfo -root -tree | grep -v '(has no name)' | head -40; "
    "xprop -root _NET_CLIENT_LIST _NET_ACTIVE_WINDOW _NET_SUPPORTING_WM_CHECK"
)
START_TIMEOUT_S = 10.0


@contextmanager
def x_display() -> Iterator[str]:
    """Yields the name (":N") of a fresh 1280x800 display managed by openbox."""
    for number in _free_display_numbers():
        with _xvfb(number) as name:
            if name is None:
                continue  # lost a race for this number
            wm = _start(["openbox", "--sm-disable"], env={**os.environ, "DISPLAY": name})
            try:
                _wait_for_wm(name)
                yield name
            finally:
                _stop(wm)
            return
    raise RuntimeError("no free X display number for Xvfb")


def _free_display_numbers(tries: int = 5) -> Iterator[int]:
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    in_use = {line.split()[-1].lstrip("@") for line in lines if len(line.split()) > 7}
    start = 100 + os.getpid() % 800
    found = 0
    for number in range(start, start + 100):
        socket_name = f"/tmp/.X11-unix/X{number}"
        if Path(f"/tmp/.X{number}-lock").exists() or socket_name in in_use:
            continue
        yield number
        found += 1
        if found == tries:
            return


@contextmanager
def _xvfb(number: int) -> Iterator[str | None]:
    read_fd, write_fd = os.pipe()
    size = f"{SCREEN[0]}x{SCREEN[1]}x24"
    argv = ["Xvfb", f":{number}", "-screen", "0", size, "-nolisten", "tcp"]
    xvfb = _start([*argv, "-displayfd", str(write_fd)], pass_fds=(write_fd,))
    os.close(write_fd)
    try:
        number_text = _read_line(read_fd)
        yield f":{number_text}" if number_text else None
    finally:
        _stop(xvfb)
        os.close(read_fd)


def _start(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        **kwargs,
    )  # fmt: skip


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _read_line(fd: int) -> str:
    """The line Xvfb writes once it is ready; "" if it exited (display number taken)."""
    data = b""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise RuntimeError("Xvfb did not report its display number; is xvfb installed?")
        chunk = os.read(fd, 64)
        if not chunk:
            return ""
        data += chunk
    return data.decode().strip()


def _wait_for_wm(name: str) -> None:
    """Returns once openbox manages new windows.

    Its _NET_SUPPORTING_WM_CHECK appears before it handles map requests, and a window
    mapped in between stays unmanaged for good, so map a scratch window until it is managed.
    """
    display = Display(name)
    try:
        root = display.screen().root
        clients = display.intern_atom("_NET_CLIENT_LIST")
        scratch = root.create_window(0, 0, 1, 1, 0, X.CopyFromParent)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _managed(root, clients, scratch.id):
            if time.monotonic() > deadline:
                raise RuntimeError("openbox did not start managing windows on the test display")
            scratch.unmap()
            scratch.map()
            display.sync()
            time.sleep(0.05)
        scratch.destroy()
        display.sync()
        while _managed(root, clients, scratch.id) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        display.close()


def _managed(root: Any, clients: int, wid: int) -> bool:
    prop = root.get_full_property(clients, Xatom.WINDOW)
    return prop is not None and wid in prop.value


class Probe:
    """A real X client window that records the pointer and key events it receives."""

    MASK = (
        X.KeyPressMask | X.KeyReleaseMask | X.ButtonPressMask | X.ButtonReleaseMask
        | X.PointerMotionMask | X.StructureNotifyMask
    )  # fmt: skip

    def __init__(self, name: str, x: int, y: int, width: int, height: int, color: int) -> None:
        self.display = Display(name)
        root = self.display.screen().root
        self.window = root.create_window(
            x, y, width, height, 0, X.CopyFromParent, X.InputOutput, X.CopyFromParent,
            background_pixel=color, event_mask=self.MASK,
        )  # fmt: skip
        self._set_hints(x, y, width, height)
        self.window.map()
        self.display.sync()
        self.events: list[Any] = []

    def _set_hints(self, x: int, y: int, width: int, height: int) -> None:
        self.window.set_wm_name("hivecell-probe")
        self.window.set_wm_hints(flags=Xutil.InputHint, input=1)
        flags = Xutil.USPosition | Xutil.USSize
        self.window.set_wm_normal_hints(flags=flags, x=x, y=y, width=width, height=height)
        pid_atom = self.display.intern_atom("_NET_WM_PID")
        self.window.change_property(pid_atom, Xatom.CARDINAL, 32, [os.getpid()])

    @property
    def id(self) -> str:
        return f"0x{self.window.id:08x}"

    def origin(self) -> tuple[int, int]:
        """Where the window's (0, 0) is on the screen (the WM adds a frame around it)."""
        root = self.display.screen().root
        coords = root.translate_coords(self.window, 0, 0)
        return coords.x, coords.y

    def drain(self) -> list[Any]:
        while self.display.pending_events():
            event = self.display.next_event()
            if event.type == X.MappingNotify:  # the agent bound a spare keycode
                self.display.refresh_keyboard_mapping(event)
            self.events.append(event)
        return self.events

    async def wait_for(self, done: Callable[[list[Any]], bool], timeout: float = 3.0) -> list[Any]:
        """Events received so far, once ``done(events)`` holds (AssertionError on timeout)."""
        with anyio.move_on_after(timeout):
            while True:
                if done(self.drain()):
                    return self.events
                await anyio.sleep(0.01)
        raise AssertionError(f"probe saw only {[type(e).__name__ for e in self.events]}")

    def clear(self) -> None:
        self.drain()
        self.events.clear()

    def keysym(self, event: Any) -> int:
        return int(self.display.keycode_to_keysym(event.detail, 1 if event.state & 1 else 0))

    def close(self) -> None:
        self.window.destroy()
        self.display.close()


def of_type(events: list[Any], kind: int) -> list[Any]:
    return [e for e in events if e.type == kind]


@contextmanager
def guest_services(display: str, folder: Path) -> Iterator[Services]:
    """Agent state on ``display``; kills the apps it launched when the test ends."""
    services = Services(GuestConfig(display=display, roots=[folder], run_dir=folder / "run"))
    try:
        yield services
    finally:
        pids = list(services.launched)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(desktop.alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)  # alive() reaps the children we killed
        services.close()


async def _ignore(method: str, params: dict[str, Any]) -> None:
    return None


class Guest:
    """Calls tools through the real dispatcher, in-process."""

    dispatcher = build_dispatcher()

    def __init__(self, services: Services) -> None:
        self.services = services
        self.ctx = CallContext(services, 1, _ignore)

    async def __call__(self, method: str, **params: Any) -> Any:
        return await self.dispatcher.call(method, params, self.ctx)

    async def wait_window(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        # A cap, not a wait: it returns once the window is there. An app's first window took
        # over 15 s once while the other test worker booted VMs under TCG.
        windows: list[dict[str, Any]] = []
        with anyio.move_on_after(timeout):
            while True:
                windows = (await self("list_windows"))["windows"]
                found = [w for w in windows if match(w)]
                if found:
                    return found[0]
                await anyio.sleep(0.05)
        shown = await anyio.to_thread.run_sync(self.describe)
        raise AssertionError(
            f"no matching window within {timeout} s; list_windows gave {windows}; "
            f"the display shows:\n{shown}"
        )

    def describe(self) -> str:
        """Where a missing window is stuck, for a failure's message: the launched apps, their
        children and the window manager (state, kernel wait channel), the windows X knows and
        openbox's list."""
        env = {**os.environ, "DISPLAY": self.services.config.display or ""}
        ps = subprocess.run(
            ["ps", "-eo", "pid,ppid,pgid,stat,wchan:32,etime,args"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        launched = {str(pid) for pid in self.services.launched}
        rows = ps.stdout.splitlines()
        kept = [
            row[:200] for row in rows[1:]
            if set(row.split()[:3]) & launched or any(n in row for n in ("openbox", "Xvfb"))
        ]  # fmt: skip
        shown = subprocess.run(
            ["sh", "-c", X_STATE], env=env, capture_output=True, text=True, timeout=30
        )
        return "\n".join([rows[0] if rows else "", *kept, shown.stdout + shown.stderr])

    async def wait_gone(self, window_id: str, timeout: float = 10.0) -> None:
        with anyio.move_on_after(timeout):
            while True:
                windows = (await self("list_windows"))["windows"]
                if all(w["id"] != window_id for w in windows):
                    return
                await anyio.sleep(0.05)
        raise AssertionError(f"window {window_id} still open after {timeout} s")
