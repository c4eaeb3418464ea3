"""Peer side of ``hivecell bench sandbox --vs-cua``: cua-computer-server on its own Xvfb.

The peer runs in a throwaway venv (cached under ``workdir``) on a private Xvfb + openbox, the
same desktop stack our sandbox uses, so the ratios compare the control planes, not the X server.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

import anyio
from anyio.abc import Process
from pydantic import BaseModel

from hivecell.bench.stats import Stats, timed
from hivecell.errors import HivecellError

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

CUA_VERSION = "0.1.25"
# cua 0.1.25 passes FastAPI(websocket_max_size=...), which newer FastAPI releases reject.
FASTAPI_VERSION = "0.115.12"
PACKAGES = (f"cua-computer-server=={CUA_VERSION}", f"fastapi=={FASTAPI_VERSION}")
_VENV_CHECK = (
    "from importlib.metadata import version as v; import sys; sys.exit("
    f"v('cua-computer-server') != {CUA_VERSION!r} or v('fastapi') != {FASTAPI_VERSION!r})"
)
# CONTAINER_NAME makes cua demand cloud auth on every socket; the PYTHON*/VIRTUAL_ENV ones
# would mix our venv into its interpreter; WAYLAND_DISPLAY would steer pyscreeze off scrot.
_STRIP_ENV = frozenset(
    {"CONTAINER_NAME", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "WAYLAND_DISPLAY"}
)

INSTALL_TIMEOUT_S = 600.0
X_START_TIMEOUT_S = 20.0
SERVER_START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0
STOP_GRACE_S = 3.0
POLL_S = 0.02
RSS_SETTLE_S = 1.0

NOTES = (
    "cua drives input with pyautogui, which sleeps pyautogui.PAUSE after every call: "
    "move_cursor pays it once, left_click at (x, y) twice (moveTo + click)",
    "screenshot = pyscreeze running scrot into a temp PNG, then PNG optimize + base64",
    "type_text goes through pynput (no pause); run_command through a shell",
    "startup_ms: server spawn until its first successful command (Xvfb/openbox already up)",
    "idle_rss_mb: VmRSS of the server, Xvfb and openbox process trees, 1 s after the "
    "operations (as for our sandbox)",
)


class CuaBenchError(HivecellError):
    """The cua peer could not be installed, started or driven."""

    code: ClassVar[str] = "bench_peer_failed"


class CuaReport(BaseModel):
    """cua-computer-server measured on this machine in this run."""

    version: str
    screenshot: Stats
    click: Stats
    move: Stats
    exec_true: Stats
    type_text: Stats
    startup_ms: float
    idle_rss_mb: float
    install_s: float | None = None  # None when the cached venv was reused
    notes: list[str]


def default_workdir() -> Path:
    """Where the cua venv is cached between runs, so a second bench does not reinstall."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hivecell" / "bench-cua"


async def measure_cua(
    *, runs: int = 20, width: int = 1280, height: int = 800, workdir: Path
) -> CuaReport:
    """Install (or reuse) cua, run it on a private display, time each operation ``runs`` times."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    _require_websockets()
    notes: list[str] = []
    python, install_s = await _ensure_venv(workdir, notes)
    async with _session(python, width, height) as session:
        ops = await _measure_ops(session.ws, runs, width, height)
        # Same moment and method as bench/sandbox.py uses for ours: after the operations,
        # once start-up and first-use allocations have settled.
        await anyio.sleep(RSS_SETTLE_S)
        idle_rss_mb = await anyio.to_thread.run_sync(_tree_rss_mb, session.pids)
    return CuaReport(
        version=session.version,
        startup_ms=session.startup_ms,
        idle_rss_mb=idle_rss_mb,
        install_s=install_s,
        notes=[*notes, *NOTES],
        **ops,
    )


def _require_websockets() -> None:
    # Optional so that `pip install hivecell` stays lean; only the bench needs a WS client.
    if find_spec("websockets") is None:
        raise CuaBenchError(
            "the cua comparison needs the `websockets` package: run `uv sync --extra bench` "
            "(or `pip install 'hivecell[bench]'`)",
            op="bench.cua",
        )


# -- the peer's venv -------------------------------------------------------------------------


async def _ensure_venv(workdir: Path, notes: list[str]) -> tuple[Path, float | None]:
    """Python of a venv with cua installed; reused across runs, keyed by the cua version.

    Two benches (or two test workers) may share ``workdir``: the check and the build happen
    under one file lock, so neither deletes the venv the other is building or using.
    """
    async with _workdir_lock(workdir):
        return await _ensure_venv_locked(workdir, notes)


@asynccontextmanager
async def _workdir_lock(workdir: Path) -> AsyncIterator[None]:
    fd = await anyio.to_thread.run_sync(_open_lock_file, workdir)
    try:
        # flock blocks: wait on a worker thread; an abandoned wait still gets the lock, and
        # closing the fd afterwards releases it.
        await anyio.to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX, abandon_on_cancel=False)
        yield
    finally:
        os.close(fd)


def _open_lock_file(workdir: Path) -> int:
    workdir.mkdir(parents=True, exist_ok=True)
    return os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


async def _ensure_venv_locked(workdir: Path, notes: list[str]) -> tuple[Path, float | None]:
    venv = _venv_dir(workdir)
    python = venv / "bin" / "python"
    if await _venv_works(python):
        notes.append(f"reused cached venv {venv}")
        return python, None
    started = time.perf_counter()
    installer = await _install(venv)
    install_s = round(time.perf_counter() - started, 1)
    if not await _venv_works(python):
        raise CuaBenchError(f"{venv} still lacks {' '.join(PACKAGES)}", op="bench.cua")
    notes.append(f"installed {' '.join(PACKAGES)} into {venv} with {installer} in {install_s} s")
    return python, install_s


def _venv_dir(workdir: Path) -> Path:
    # Absolute: the server runs with another cwd, and uv reads some bare names as versions.
    return workdir.absolute() / f"cua-computer-server-{CUA_VERSION}"


async def _venv_works(python: Path) -> bool:
    try:
        with anyio.fail_after(CALL_TIMEOUT_S):
            result = await anyio.run_process([str(python), "-c", _VENV_CHECK], check=False)
    except FileNotFoundError:
        return False
    return result.returncode == 0


async def _install(venv: Path) -> str:
    """Build ``venv`` from scratch; returns how, for the notes."""
    # Whatever is there failed the check (half-built, other pins): rebuilding beats repairing.
    await anyio.to_thread.run_sync(partial(shutil.rmtree, venv, ignore_errors=True))
    venv.parent.mkdir(parents=True, exist_ok=True)
    python = str(venv / "bin" / "python")
    uv = _uv_command()
    if uv is None:
        await _run([sys.executable, "-m", "venv", str(venv)])
        await _run([python, "-m", "pip", "install", "--quiet", *PACKAGES])
        return "python -m venv + pip"
    await _run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)])
    await _run([*uv, "pip", "install", "--quiet", "--python", python, *PACKAGES])
    return " ".join([*uv, "venv"]) + " + uv pip install"


def _uv_command() -> list[str] | None:
    if path := shutil.which("uv"):
        return [path]
    if find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    return None


async def _run(cmd: list[str]) -> None:
    with anyio.fail_after(INSTALL_TIMEOUT_S):
        result = await anyio.run_process(cmd, check=False, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace")[-2000:]
        raise CuaBenchError(f"{' '.join(cmd)} exited {result.returncode}: {stderr}", op="bench.cua")


# -- desktop + server --------------------------------------------------------------------------


@dataclass
class _Session:
    ws: ClientConnection
    version: str
    startup_ms: float
    pids: list[int]  # server, Xvfb, openbox


@asynccontextmanager
async def _session(python: Path, width: int, height: int) -> AsyncIterator[_Session]:
    """cua on a private Xvfb + openbox; everything is torn down on exit, error or cancel."""
    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hivecell-cua-")))
        # python-xlib (under pynput) refuses to connect when $XAUTHORITY / ~/.Xauthority does
        # not exist, even to a server without auth; an empty file means "no cookies".
        (tmp / ".Xauthority").touch(mode=0o600)
        display, desktop_pids = await _start_desktop(stack, width, height, tmp)
        started = time.perf_counter()
        server, port = await _start_server(stack, python, display, tmp)
        ws = await _connect_when_ready(stack, port, server, tmp / "server.log")
        version = str((await _call(ws, "version"))["package"])
        startup_ms = round((time.perf_counter() - started) * 1000, 1)
        await _check_display(ws, width, height)
        yield _Session(ws, version, startup_ms, [server.pid, *desktop_pids])


async def _start_desktop(
    stack: AsyncExitStack, width: int, height: int, tmp: Path
) -> tuple[str, list[int]]:
    xvfb, display = await _start_xvfb(stack, width, height, tmp)
    openbox = await _spawn(stack, ["openbox"], tmp / "openbox.log", env=_env(display, tmp))
    return display, [xvfb.pid, openbox.pid]


async def _start_xvfb(
    stack: AsyncExitStack, width: int, height: int, tmp: Path
) -> tuple[Process, str]:
    # -displayfd without a display number: Xvfb picks a free one itself, so no race with
    # other X servers, and writes it once it accepts connections, so no readiness polling.
    read_fd, write_fd = os.pipe()
    with _closing(read_fd):
        with _closing(write_fd):  # our copy must go, or a dying Xvfb never gives us EOF
            cmd = ["Xvfb", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"]
            cmd += ["-displayfd", str(write_fd)]
            xvfb = await _spawn(stack, cmd, tmp / "xvfb.log", pass_fds=[write_fd])
        number = await _read_display(read_fd, tmp / "xvfb.log")
    return xvfb, f":{number}"


async def _read_display(fd: int, log: Path) -> str:
    os.set_blocking(fd, False)
    data = b""
    with _deadline(X_START_TIMEOUT_S, "Xvfb start", log):
        while not data.endswith(b"\n"):
            await anyio.wait_readable(fd)
            chunk = os.read(fd, 32)
            if not chunk:
                raise _failure("Xvfb exited before reporting its display", log)
            data += chunk
    return data.decode().strip()


async def _start_server(
    stack: AsyncExitStack, python: Path, display: str, home: Path
) -> tuple[Process, int]:
    port = _free_port()
    cmd = [str(python), "-m", "computer_server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning"]
    # cwd matters: pyscreeze has scrot write its temp PNG relative to the working directory.
    env = _env(display, home)
    server = await _spawn(stack, cmd, home / "server.log", env=env, cwd=home)
    return server, port


async def _connect_when_ready(
    stack: AsyncExitStack, port: int, server: Process, log: Path
) -> ClientConnection:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake

    uri = f"ws://127.0.0.1:{port}/ws"
    with _deadline(SERVER_START_TIMEOUT_S, "cua server start", log):
        while True:
            if server.returncode is not None:
                raise _failure(f"cua server exited with {server.returncode}", log)
            # proxy=None: loopback only; a proxy from the environment must not intercept it.
            with suppress(OSError, InvalidHandshake):
                return await stack.enter_async_context(connect(uri, max_size=None, proxy=None))
            await anyio.sleep(POLL_S)


def _env(display: str, home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _STRIP_ENV}
    env.update(DISPLAY=display, XDG_SESSION_TYPE="x11", HOME=str(home))
    env["XAUTHORITY"] = str(home / ".Xauthority")  # ours, never the caller's session cookie
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- processes ---------------------------------------------------------------------------------


async def _spawn(stack: AsyncExitStack, cmd: list[str], log: Path, **kwargs: Any) -> Process:
    """Start ``cmd`` with output in ``log``; ``stack`` stops it on exit."""
    # A file, not a pipe: nobody has to drain it, so a chatty child can never block on a full pipe.
    out = _open_log(stack, log)
    proc = await anyio.open_process(
        cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kwargs
    )
    stack.push_async_callback(_stop, proc)
    return proc


def _open_log(stack: AsyncExitStack, path: Path) -> IO[bytes]:
    return stack.enter_context(open(path, "wb"))


async def _stop(proc: Process) -> None:
    """Terminate, give it a grace period, then kill; shielded so cancellation still cleans up."""
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                proc.terminate()
            with anyio.move_on_after(STOP_GRACE_S):
                await proc.wait()
        if proc.returncode is None:
            with suppress(ProcessLookupError):
                proc.kill()
        await proc.aclose()


@contextmanager
def _closing(fd: int) -> Iterator[None]:
    try:
        yield
    finally:
        os.close(fd)


@contextmanager
def _deadline(seconds: float, what: str, log: Path) -> Iterator[None]:
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        raise _failure(f"{what} took over {seconds:g} s", log) from None


def _failure(message: str, log: Path) -> CuaBenchError:
    try:
        tail = log.read_text(errors="replace")[-2000:]
    except OSError:
        tail = ""
    return CuaBenchError(f"{message}; {log.name}:\n{tail}", op="bench.cua")


def _tree_rss_mb(roots: list[int]) -> float:
    """Summed VmRSS (MiB) of ``roots`` and all their descendants."""
    parents = _parent_pids()
    tree = set(roots)
    while grown := {pid for pid, ppid in parents.items() if ppid in tree} - tree:
        tree |= grown
    return round(sum(_vm_rss_kb(pid) for pid in tree) / 1024, 1)


def _parent_pids() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        with suppress(OSError, ValueError):  # not a pid, or gone while we looked
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _vm_rss_kb(pid: int) -> int:
    with suppress(OSError):  # a short-lived child may exit between listing and reading
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # exited, or a kernel thread / zombie without memory


# -- the protocol ------------------------------------------------------------------------------


async def _call(ws: ClientConnection, command: str, /, **params: object) -> dict[str, Any]:
    """One request/response on cua's /ws; cua reports failures as ``success: false``."""
    with anyio.fail_after(CALL_TIMEOUT_S):
        await ws.send(json.dumps({"command": command, "params": params}))
        reply: dict[str, Any] = json.loads(await ws.recv())
    if not reply.get("success"):
        raise CuaBenchError(f"cua {command} failed: {reply.get('error', reply)}", op="bench.cua")
    return reply


async def _check_display(ws: ClientConnection, width: int, height: int) -> None:
    """Fail loudly if cua is not looking at our display: its screenshot must be our size."""
    png = base64.b64decode((await _call(ws, "screenshot"))["image_data"])
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise CuaBenchError("cua screenshot is not a PNG", op="bench.cua")
    got = struct.unpack(">II", png[16:24])  # IHDR width, height
    if got != (width, height):
        raise CuaBenchError(f"cua screenshot is {got}, expected {(width, height)}", op="bench.cua")


async def _measure_ops(
    ws: ClientConnection, runs: int, width: int, height: int
) -> dict[str, Stats]:
    # Alternate targets so every move really moves the pointer.
    targets = itertools.cycle([(width // 3, height // 3), (2 * width // 3, 2 * height // 3)])

    async def move() -> object:
        x, y = next(targets)
        return await _call(ws, "move_cursor", x=x, y=y)

    ops: dict[str, Callable[[], Awaitable[object]]] = {
        "screenshot": lambda: _call(ws, "screenshot"),
        "click": lambda: _call(ws, "left_click", x=width // 2, y=height // 2),
        "move": move,
        "exec_true": lambda: _run_true(ws),
        "type_text": lambda: _call(ws, "type_text", text="hello"),
    }
    return {name: await timed(op, runs) for name, op in ops.items()}


async def _run_true(ws: ClientConnection) -> None:
    reply = await _call(ws, "run_command", command="true")
    if reply.get("return_code") != 0:
        raise CuaBenchError(f"cua run_command true: {reply}", op="bench.cua")
