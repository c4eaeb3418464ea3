"""``python -m hivecell.guest.boot``: the first process inside a local sandbox.

Starts the X display (Xvfb) and a window manager (openbox) with the desktop profile's
session (``desktopenv``: wallpaper, menu; its panel once the agent is ready), then serves
the guest agent on
the unix socket the host passes as ``--listen-fd`` (bound outside the box; without it, on
``/run/hivecell/guest.sock``). It listens only once the display is up, so a host that can
ping the agent knows the desktop is ready. When the agent stops (``shutdown`` or
``reboot``) the display and window manager are stopped and the process exits, which ends
the sandbox.

The agent runs in a forked child and this process supervises it: an agent that dies without
being asked to stop (killed, crashed) is started again on the same listening socket, so the
host reconnects to a box whose desktop and apps are untouched (see ``supervise``).

This process stays small: it never imports the agent (pydantic, anyio, Xlib). The child is
forked as soon as Xvfb is started and does the heavy imports while this process brings the
desktop up; it serves once the window manager manages windows. Importing in the child, not
here, is ~10 MB less per sandbox: a parent holding the imports keeps its own copy of every
page the child writes to (reference counts), so the two held most of it twice. The price is
a restart that imports again (a few hundred ms instead of a fork) after a crash.

Every sandbox has its own network namespace and /tmp, so every sandbox uses display :0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path

from hivecell.guest import a11ybus, desktopenv

TYPE_CHECKING = False  # not typing's: it stays out of the boot process (hivecell/__init__)
if TYPE_CHECKING:
    from typing import Any

DISPLAY = ":0"
SESSION_DIR = Path("/tmp/hivecell-desktop")  # the desktop's config files; the box's own /tmp
# python-xlib's Xlib.ext.__extensions__ (see AGENT_MODULES), spelled out so that listing
# them does not import Xlib before Xvfb is started.
XLIB_EXTENSIONS = (
    "ge", "xtest", "shape", "xinerama", "record", "composite", "randr", "xfixes", "security",
    "xinput", "nvcontrol", "damage", "dpms", "res", "screensaver",
)  # fmt: skip
DISPLAY_TIMEOUT = 15.0
# An agent that keeps dying is a bug, not a fault to ride out: after this many restarts in
# RESTART_WINDOW_S the box ends (the host then reports the sandbox as gone).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
AGENT_STOPPED = 0  # the child's exit code after a requested shutdown or reboot
STOP_REASON_FILE = "stop-reason"  # in --run-dir, after a VM's agent stopped on request
# Set by the sandbox launcher for this interpreter only; apps inside must not inherit them.
LAUNCHER_ENV = (
    "PYTHONPATH", "LD_LIBRARY_PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX",
    "GLIBC_TUNABLES",
)  # fmt: skip
# What the agent imports before it serves. The host precompiles these and LAZY_MODULES; a
# module it misses is compiled from source at every boot (the box cannot write bytecode),
# which is how the Xlib extensions used to cost ~30 ms.
AGENT_MODULES = (
    "anyio",
    "anyio._backends._asyncio",
    "Xlib.display",
    # Display() imports the module of every extension the server has: import them here
    # once, not in the window-manager check and again in the agent.
    *(f"Xlib.ext.{name}" for name in XLIB_EXTENSIONS),
    "hivecell.guest.context",
    "hivecell.guest.run",
    "hivecell.guest.x11",
)
# Imported on first use only (screenshots, the accessibility tools of guest.agent.LAZY_TOOLS):
# not worth a cold start that never needs them.
LAZY_MODULES = (
    "hivecell.guest.tools.a11y",
    "mss.linux",
    "mss.linux.xshmgetimage",
    "PIL.Image",
    # what Image.save() loads (Image.preinit) for the formats screenshot writes
    *(f"PIL.{name}ImagePlugin" for name in ("Bmp", "Gif", "Jpeg", "Ppm", "Png", "WebP")),
)

Process = subprocess.Popen[bytes]
log = logging.getLogger("hivecell.guest.boot")
_STARTED = time.monotonic()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hivecell.guest.boot", description=__doc__)
    p.add_argument("--screen", default="1280x800x24", help="WIDTHxHEIGHTxDEPTH")
    p.add_argument("--glx", action="store_true", help="enable GLX (software OpenGL) in Xvfb")
    p.add_argument("--desktop", choices=desktopenv.PROFILES, default=desktopenv.DEFAULT_PROFILE)
    p.add_argument("--run-dir", type=Path, default=Path("/run/hivecell"))
    p.add_argument("--root", type=Path, action="append", help="allowed file root (repeatable)")
    p.add_argument("--max-file-bytes", type=int, default=10 * 1024 * 1024)
    p.add_argument("--network-mode", default="unknown")
    p.add_argument("--rlimit-nproc", type=int, help="process limit when cgroups are unavailable")
    p.add_argument("--rlimit-data", type=int, help="per-process memory limit (bytes), likewise")
    p.add_argument("--rlimit-fsize", type=int, help="largest file a process may write (bytes)")
    p.add_argument("--listen-fd", type=int, help="serve on this bound unix socket (from the host)")
    p.add_argument("--vnc-fd", type=int, help="relay VNC viewers from this bound unix socket")
    p.add_argument(
        "--life-fd", type=int, help="the box's init reads our exit code here (zygote boots)"
    )
    p.add_argument(
        "--device", type=Path, help="serve on this virtio-serial port (a VM), multiplexed"
    )
    p.add_argument("--policy", type=Path, help="the guest's allow/block lists (TOML, policy.py)")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    log.info("boot imported after %.0f ms", _elapsed_ms())
    for name in LAUNCHER_ENV:
        os.environ.pop(name, None)
    apply_rlimits(args.rlimit_nproc, args.rlimit_data, args.rlimit_fsize)
    make_runtime_dirs()
    xvfb, display_fd = start_xvfb(args.screen, args.glx)
    children = [xvfb]
    session = desktopenv.write_session(SESSION_DIR, args.desktop, str(Path.home()))
    desktop = Desktop(display_fd, xvfb, children, session)
    desktop.start_bus()
    try:
        reason = supervise(args, desktop)
        log.info("agent stopped: %s", reason)
    finally:
        desktop.close()
        stop_all(children)
    return 0


def _elapsed_ms() -> float:
    return (time.monotonic() - _STARTED) * 1000


def reset_clock() -> None:
    """Boot starts now (a process forked from the zygote imported this module long ago)."""
    global _STARTED
    _STARTED = time.monotonic()


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
    if sockets.stat().st_mode & 0o7777 != 0o1777:  # a VM's init made it as root already
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


class Desktop:
    """Xvfb and the window manager, brought up by the boot process; agents wait for them.

    The boot process closes the write end of ``started`` once the window manager is started
    (or the attempt failed): every agent, the first and any restarted one, reads up to EOF
    before it checks that windows are managed and serves.
    """

    def __init__(
        self,
        display_fd: int,
        xvfb: Process,
        children: list[Process],
        session: desktopenv.Session | None = None,
    ) -> None:
        self.display_fd = display_fd
        self.xvfb = xvfb
        self.children = children  # started processes go here at once, to be stopped on failure
        self.session = session or desktopenv.Session(SESSION_DIR, "minimal")
        self.started_r, self.started_w = os.pipe()
        self.pending = True
        self.bus: a11ybus.SessionBus | None = None
        # The first agent writes here once it serves; the panel starts then (see start_extras)
        self.ready_r, self.ready_w = os.pipe()

    def bring_up(self) -> None:
        """In the boot process, while the first agent imports."""
        self.pending = False
        try:
            wait_for_display(self.display_fd, self.xvfb)
            log.info("display up after %.0f ms", _elapsed_ms())
            self.children += start_window_manager(self.session.window_manager())
            if self.bus is not None:
                self.children += self.bus.start_registry(DISPLAY)
        finally:
            self._close_started()

    def start_bus(self) -> None:
        """The session bus, started with Xvfb; its address goes into the environment now, so
        the agent and every app it starts inherit it (see hivecell.guest.a11ybus)."""
        self.bus = a11ybus.SessionBus.start(Path(os.environ["XDG_RUNTIME_DIR"]))
        if self.bus is not None:
            self.children.append(self.bus.daemon)
            os.environ.update(self.bus.environment())
            os.environ.pop("NO_AT_BRIDGE", None)

    def start_extras(self) -> None:
        """In the boot process: once the first agent is ready (or died trying), start the
        panel. Not before: at boot it competes for the CPU with the agent's imports and the
        host's first ping (~150 ms of a loaded 2-core host's cold start); nothing the agent
        serves needs it."""
        if self.ready_w < 0:
            return  # done for an earlier agent
        os.close(self.ready_w)
        self.ready_w = -1
        with contextlib.suppress(OSError):
            os.read(self.ready_r, 1)  # a byte, or EOF if that agent died
        os.close(self.ready_r)
        self.children += start_panel(self.session.panel())
        log.info("panel started after %.0f ms", _elapsed_ms())

    def agent_ready(self) -> None:
        """In the agent: the desktop is up and it is about to serve."""
        if self.ready_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self.ready_w, b"1")
            os.close(self.ready_w)
            self.ready_w = -1

    def in_agent(self) -> None:
        """In a freshly forked agent: keep only the end it reads."""
        self._close_started()
        if self.pending:
            os.close(self.display_fd)
        if self.bus is not None:
            self.bus.close_ready()
        if self.ready_w >= 0:
            os.close(self.ready_r)

    def wait(self) -> None:
        """In the agent: block until the boot process started the desktop, then until the
        window manager manages new windows ("desktop up" includes a window manager)."""
        while os.read(self.started_r, 64):
            pass
        if shutil.which("openbox") is not None:  # what start_window_manager ran
            wait_for_window_manager(wallpaper=self.session.wallpaper)
            log.info("window manager ready after %.0f ms", _elapsed_ms())
        if self.bus is not None:
            self.bus.wait_for_registry()
            log.info("accessibility registry ready after %.0f ms", _elapsed_ms())

    def close(self) -> None:
        self._close_started()
        os.close(self.started_r)
        if self.ready_w >= 0:  # the panel never started (the first agent failed to fork)
            os.close(self.ready_w)
            os.close(self.ready_r)
            self.ready_w = -1

    def _close_started(self) -> None:
        if self.started_w >= 0:
            os.close(self.started_w)
            self.started_w = -1


def start_window_manager(argv: list[str] | None = None) -> list[subprocess.Popen[bytes]]:
    """openbox, not waited for: apps can open windows before it manages them."""
    argv = argv or ["openbox", "--sm-disable"]
    openbox = shutil.which(argv[0])
    if openbox is None:
        log.warning("openbox is not installed; windows will have no manager")
        return []
    return [subprocess.Popen([openbox, *argv[1:]], stdin=subprocess.DEVNULL)]


def start_panel(argv: list[str] | None) -> list[subprocess.Popen[bytes]]:
    """The panel (full desktop), not waited for: nothing the agent serves depends on it."""
    if argv is None:
        return []
    return [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)]


def wait_for_window_manager(timeout: float = 5.0, wallpaper: bool = False) -> None:
    """Block until openbox manages new windows, so the first app a task opens is managed.

    openbox announces itself (_NET_SUPPORTING_WM_CHECK) before it handles map requests, and
    a window mapped in between stays unmanaged for good: map a 1x1 scratch window until it
    shows up in _NET_CLIENT_LIST.
    """
    from Xlib import X, Xatom
    from Xlib.display import Display

    display = Display(DISPLAY)
    try:
        if wallpaper:  # while openbox starts: the first screenshot shows it
            _paint_wallpaper(display)
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


def _paint_wallpaper(display: Any) -> None:
    """A desktop without its wallpaper still works: never fail the agent over it."""
    from Xlib import error as xerror

    try:
        desktopenv.paint_wallpaper(display)
    except (xerror.XError, StopIteration, ValueError) as exc:
        log.warning("no wallpaper: %r", exc)


def _managed(prop: Any, window_id: int) -> bool:
    return prop is not None and window_id in prop.value


def preload(modules: tuple[str, ...] = AGENT_MODULES) -> None:
    """Import everything the agent needs (missing optional modules are skipped)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.debug("not preloaded: %s (%s)", name, exc)


def _import_x11() -> None:
    """What the window-manager check needs: python-xlib and its extension modules."""
    for name in AGENT_MODULES:
        if name.startswith("Xlib."):
            importlib.import_module(name)


def _prepare_agent(desktop: Desktop) -> Callable[[argparse.Namespace], str]:
    """In the agent: import it while the desktop comes up; returns once both are done.

    The wait for the desktop runs on a helper thread that mostly blocks on a pipe or the X
    server. What it imports is imported first (see _import_x11), so the two threads never
    import the same modules at once.
    """
    from concurrent.futures import ThreadPoolExecutor

    _import_x11()
    helper = ThreadPoolExecutor(max_workers=1)
    try:
        up = helper.submit(desktop.wait)
        serve = _import_agent(desktop.bus.address if desktop.bus else None)
        log.info("agent imported after %.0f ms", _elapsed_ms())
        up.result()
    finally:
        helper.shutdown()
    log.info("desktop up after %.0f ms", _elapsed_ms())
    desktop.agent_ready()
    return serve


def _import_agent(a11y_bus: str | None) -> Callable[[argparse.Namespace], str]:
    """The agent's entry point; importing it is most of the boot time."""
    preload()
    import anyio

    from hivecell.guest.context import GuestConfig, Services
    from hivecell.guest.run import serve

    def run(args: argparse.Namespace) -> str:
        from hivecell.guest import policy

        rules, max_file_bytes = policy.from_file(args.policy, args.max_file_bytes)
        config = GuestConfig(
            roots=args.root or [Path("/shared"), Path.home()],
            max_file_bytes=max_file_bytes,
            policy=rules,
            display=DISPLAY,
            run_dir=args.run_dir,
            network_mode=args.network_mode,
            a11y_bus=a11y_bus,
        )
        if args.device is not None:
            reason = anyio.run(partial(serve, Services(config), mux_device=args.device))
            # for the VM's init: power off, or reboot (see sandbox/qemu/vmfiles/session)
            (args.run_dir / STOP_REASON_FILE).write_text(reason)
            return reason
        if args.listen_fd is None:
            return anyio.run(serve, Services(config), args.run_dir / "guest.sock")
        fds = {"listen_fd": args.listen_fd, "vnc_fd": args.vnc_fd}
        return anyio.run(partial(serve, Services(config), **fds))

    return run


def supervise(args: argparse.Namespace, desktop: Desktop) -> str:
    """Run the agent in a forked child until it stops on request; restart it when it dies.

    The first child is forked before the desktop is up and imports the agent meanwhile. The
    listening socket stays open here, so the host's connects wait in its backlog while a
    restarted agent imports.
    """
    restarts: deque[float] = deque()
    while True:
        code = _run_agent_child(args, desktop)
        if code == AGENT_STOPPED:
            return "stopped on request"
        if args.device is not None:
            # The host's end of a VM's port holds the channels the dead agent had open; a new
            # agent could not resume them mid-frame. The VM powers off; the host reports why.
            log.error("the guest agent died (exit %d); a VM's agent is not restarted", code)
            return f"the agent died (exit {code})"
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


def _run_agent_child(args: argparse.Namespace, desktop: Desktop) -> int:
    pid = os.fork()
    if pid == 0:  # the agent
        code = 1
        try:
            desktop.in_agent()
            if args.life_fd is not None:  # boot's alone: it tells the box when boot ends
                os.close(args.life_fd)
            serve = _prepare_agent(desktop)
            log.info("agent stopped: %s", serve(args))
            code = AGENT_STOPPED
        except BaseException:
            log.exception("the guest agent failed")
        finally:
            logging.shutdown()
            os._exit(code)
    try:
        if desktop.pending:
            desktop.bring_up()  # the agent imports meanwhile
        desktop.start_extras()
    except BaseException:
        _kill_agent(pid)
        raise
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_agent(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


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
