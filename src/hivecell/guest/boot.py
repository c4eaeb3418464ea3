"""``python -m hivecell.guest.boot``: the first process inside a local sandbox.

Starts the X display (Xvfb) and a window manager (openbox), then serves the guest agent on
the unix socket the host passes as ``--listen-fd`` (bound outside the box; without it, on
``/run/hivecell/guest.sock``). It listens only once the display is up, so a host that can
ping the agent knows the desktop is ready. When the agent stops (``shutdown`` or
``reboot``) the display and window manager are stopped and the process exits, which ends
the sandbox.

The agent runs in a forked child and this process supervises it: an agent that dies without
being asked to stop (killed, crashed) is started again on the same listening socket, so the
host reconnects to a box whose desktop and apps are untouched (see ``supervise``).

Xvfb starts before the agent's heavy imports so the two overlap. Every sandbox has its own
network namespace and /tmp, so every sandbox uses display :0.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import resource
import select
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

DISPLAY = ":0"
DISPLAY_TIMEOUT = 15.0
# An agent that keeps dying is a bug, not a fault to ride out: after this many restarts in
# RESTART_WINDOW_S the box ends (the host then reports the sandbox as gone).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
AGENT_STOPPED = 0  # the child's exit code after a requested shutdown or reboot
# Set by the sandbox launcher for this interpreter only; apps inside must not inherit them.
LAUNCHER_ENV = ("PYTHONPATH", "LD_LIBRARY_PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
# What the agent imports at boot or on first use; the host precompiles exactly these.
AGENT_MODULES = (
    "anyio",
    "anyio._backends._asyncio",
    "hivecell.guest.context",
    "hivecell.guest.run",
    "hivecell.guest.x11",
)

log = logging.getLogger("hivecell.guest.boot")
_STARTED = time.monotonic()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hivecell.guest.boot", description=__doc__)
    p.add_argument("--screen", default="1280x800x24", help="WIDTHxHEIGHTxDEPTH")
    p.add_argument("--glx", action="store_true", help="enable GLX (software OpenGL) in Xvfb")
    p.add_argument("--run-dir", type=Path, default=Path("/run/hivecell"))
    p.add_argument("--root", type=Path, action="append", help="allowed file root (repeatable)")
    p.add_argument("--max-file-bytes", type=int, default=10 * 1024 * 1024)
    p.add_argument("--network-mode", default="unknown")
    p.add_argument("--rlimit-nproc", type=int, help="process limit when cgroups are unavailable")
    p.add_argument("--rlimit-data", type=int, help="per-process memory limit (bytes), likewise")
    p.add_argument("--rlimit-fsize", type=int, help="largest file a process may write (bytes)")
    p.add_argument("--listen-fd", type=int, help="serve on this bound unix socket (from the host)")
    p.add_argument("--vnc-fd", type=int, help="relay VNC viewers from this bound unix socket")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    for name in LAUNCHER_ENV:
        os.environ.pop(name, None)
    apply_rlimits(args.rlimit_nproc, args.rlimit_data, args.rlimit_fsize)
    make_runtime_dirs()
    xvfb, display_fd = start_xvfb(args.screen, args.glx)
    children = [xvfb]
    try:
        # Xvfb and then openbox start on a helper thread while this one imports the agent
        # (most of the boot time); the thread only waits on a pipe and spawns a process.
        helper = ThreadPoolExecutor(max_workers=1)
        desktop = helper.submit(_start_desktop, display_fd, xvfb)
        serve = _import_agent()
        log.info("agent imported after %.0f ms", _elapsed_ms())
        children += desktop.result()
        helper.shutdown()  # no thread may be left when the agent is forked
        log.info("display up after %.0f ms", _elapsed_ms())
        if children[1:]:  # "desktop up" includes a window manager that manages windows
            wait_for_window_manager()
            log.info("window manager ready after %.0f ms", _elapsed_ms())
        reason = supervise(serve, args)
        log.info("agent stopped: %s", reason)
    finally:
        stop_all(children)
    return 0


def _elapsed_ms() -> float:
    return (time.monotonic() - _STARTED) * 1000


def apply_rlimits(nproc: int | None, data: int | None, fsize: int | None = None) -> None:
    """Fallback limits; soft == hard so nothing inside can raise them again."""
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if data is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (data, data))
    if fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))


def make_runtime_dirs() -> None:
    runtime = Path(os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp/xdg-runtime"))
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Xvfb creates its socket folder only as root, and /tmp is sticky: make it ourselves.
    sockets = Path("/tmp/.X11-unix")
    sockets.mkdir(exist_ok=True)
    sockets.chmod(0o1777)


def start_xvfb(screen: str, glx: bool = False) -> tuple[subprocess.Popen[bytes], int]:
    """Start Xvfb; returns it and the pipe on which it reports the display once ready."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise SystemExit("Xvfb is not installed in the sandbox image (apt install xvfb)")
    ready_r, ready_w = os.pipe()
    argv = [xvfb, DISPLAY, "-screen", "0", screen, "-nolisten", "tcp", "-noreset"]
    argv += ["-displayfd", str(ready_w)]
    if not glx:  # GLX loads Mesa: ~55 MB of the server's ~70 MB, unused by most desktop apps
        argv += ["-extension", "GLX"]
    proc = subprocess.Popen(argv, pass_fds=(ready_w,), stdin=subprocess.DEVNULL)
    os.close(ready_w)
    return proc, ready_r


def wait_for_display(ready_r: int, xvfb: subprocess.Popen[bytes]) -> None:
    # Read up to the newline: Xvfb may write the number and the newline separately, and
    # closing the pipe in between makes its second write fail, which kills the server.
    deadline = time.monotonic() + DISPLAY_TIMEOUT
    data = b""
    try:
        while not data.endswith(b"\n"):
            if not select.select([ready_r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise SystemExit(f"Xvfb did not come up within {DISPLAY_TIMEOUT} s")
            chunk = os.read(ready_r, 16)
            if not chunk:
                raise SystemExit(f"Xvfb exited with code {xvfb.wait()} before the display was up")
            data += chunk
    finally:
        os.close(ready_r)


def _start_desktop(display_fd: int, xvfb: subprocess.Popen[bytes]) -> list[subprocess.Popen[bytes]]:
    wait_for_display(display_fd, xvfb)
    return start_window_manager()


def start_window_manager() -> list[subprocess.Popen[bytes]]:
    """openbox, not waited for: apps can open windows before it manages them."""
    openbox = shutil.which("openbox")
    if openbox is None:
        log.warning("openbox is not installed; windows will have no manager")
        return []
    return [subprocess.Popen([openbox, "--sm-disable"], stdin=subprocess.DEVNULL)]


def wait_for_window_manager(timeout: float = 5.0) -> None:
    """Block until openbox manages new windows, so the first app a task opens is managed.

    openbox announces itself (_NET_SUPPORTING_WM_CHECK) before it handles map requests, and
    a window mapped in between stays unmanaged for good: map a 1x1 scratch window until it
    shows up in _NET_CLIENT_LIST.
    """
    from Xlib import X, Xatom
    from Xlib.display import Display

    display = Display(DISPLAY)
    try:
        root = display.screen().root
        clients = display.intern_atom("_NET_CLIENT_LIST")
        scratch = root.create_window(0, 0, 1, 1, 0, X.CopyFromParent)
        deadline = time.monotonic() + timeout
        managed = False
        while not managed and time.monotonic() < deadline:
            scratch.unmap()
            scratch.map()
            display.sync()
            # A ready openbox manages the map within a few ms; only an early map is lost.
            for _ in range(25):
                managed = _managed(root.get_full_property(clients, Xatom.WINDOW), scratch.id)
                if managed:
                    break
                time.sleep(0.002)
        if not managed:
            log.warning("openbox did not manage a window within %.0f s", timeout)
        scratch.destroy()
        display.sync()
    finally:
        display.close()


def _managed(prop: Any, window_id: int) -> bool:
    return prop is not None and window_id in prop.value


def preload() -> None:
    """Import everything the agent needs (missing optional modules are skipped)."""
    for name in AGENT_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.debug("not preloaded: %s (%s)", name, exc)


def _import_agent() -> Callable[[argparse.Namespace], str]:
    """The agent's entry point; importing it is most of the boot time."""
    preload()
    import anyio

    from hivecell.guest.context import GuestConfig, Services
    from hivecell.guest.run import serve

    def run(args: argparse.Namespace) -> str:
        config = GuestConfig(
            roots=args.root or [Path("/shared"), Path.home()],
            max_file_bytes=args.max_file_bytes,
            display=DISPLAY,
            run_dir=args.run_dir,
            network_mode=args.network_mode,
        )
        if args.listen_fd is None:
            return anyio.run(serve, Services(config), args.run_dir / "guest.sock")
        fds = {"listen_fd": args.listen_fd, "vnc_fd": args.vnc_fd}
        return anyio.run(partial(serve, Services(config), **fds))

    return run


def supervise(serve: Callable[[argparse.Namespace], str], args: argparse.Namespace) -> str:
    """Run the agent in a forked child until it stops on request; restart it when it dies.

    Forked, not exec'd: the imports are done, so a restart serves again in milliseconds. The
    listening socket stays open here, so the host's connects wait in its backlog meanwhile.
    """
    restarts: deque[float] = deque()
    while True:
        code = _run_agent_child(serve, args)
        if code == AGENT_STOPPED:
            return "stopped on request"
        now = time.monotonic()
        while restarts and now - restarts[0] > RESTART_WINDOW_S:
            restarts.popleft()
        if len(restarts) >= MAX_RESTARTS:
            log.error(
                "the guest agent died %d times in %.0f s; ending",
                MAX_RESTARTS + 1,
                RESTART_WINDOW_S,
            )
            return f"the agent kept dying (last exit {code})"
        restarts.append(now)
        log.warning("the guest agent died (exit %d); starting it again", code)


def _run_agent_child(serve: Callable[[argparse.Namespace], str], args: argparse.Namespace) -> int:
    pid = os.fork()
    if pid == 0:  # the agent
        code = 1
        try:
            log.info("agent stopped: %s", serve(args))
            code = AGENT_STOPPED
        except BaseException:
            log.exception("the guest agent failed")
        finally:
            logging.shutdown()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def stop_all(children: list[subprocess.Popen[bytes]]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 2.0
    for child in reversed(children):
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    sys.exit(main())
