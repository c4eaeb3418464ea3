"""Guest tools: windows (EWMH), apps (launch, list, quit) and the VNC server."""

from __future__ import annotations

import mimetypes
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from Xlib import X, Xatom
from Xlib import error as xerror
from Xlib.protocol import event as xevent
from Xlib.xobject.drawable import Window

from hivecell.errors import InvalidParams, NotFound, NotSupported, Timeout, ToolFailed
from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.guest.paths import resolve
from hivecell.guest.tools.screen import maybe_settle
from hivecell.guest.x11 import XSession, display_env
from hivecell.protocol import methods as m

router = Router()
ACTIVATE_TIMEOUT_S = 5.0  # the WM may be busy, e.g. reloading the keymap after typing
STARTUP_CHECK_S = 0.1  # long enough to catch "unknown option" exits, short enough to not notice
LAUNCH_WINDOW_TIMEOUT_S = 10.0
FOCUS_GRACE_S = 0.5  # openbox focuses a new window by itself, usually within a few ms
QUIT_GRACE_S = 3.0
VNC_START_TIMEOUT_S = 10.0
_PAGER_SOURCE = 2  # EWMH: requests from pagers/tools are honoured without focus-stealing checks
_STATIC_GRAVITY = 10  # x/y name the client area, the same origin list_windows reports
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}  # launched apps, kept so they get reaped


# --- windows -----------------------------------------------------------------------------
@router.method("list_windows")
async def list_windows(p: m.Empty, ctx: CallContext) -> m.WindowList:
    x = ctx.services.x
    return m.WindowList(windows=await x.run(windows_sync, x))


# The desktop's own furniture, not windows of an app: the panel (tint2 is a dock) and a
# desktop window. A launch waiting for its window took the panel for it (the panel starts
# lazily, often while the first open_app waits) and waited for it to be focused, in vain;
# listed, a model would close, hide or tile the panel like an app.
FURNITURE = ("_NET_WM_WINDOW_TYPE_DOCK", "_NET_WM_WINDOW_TYPE_DESKTOP")


def windows_sync(x: XSession) -> list[m.WindowInfo]:
    """The apps' top-level windows (never the desktop's furniture)."""
    active = _active_id(x)
    ids = (wid for wid in _client_ids(x) if not _furniture(x, wid))
    infos = (_window_info(x, wid, active) for wid in ids)
    return [info for info in infos if info is not None]


def app_window_ids_sync(x: XSession) -> set[str]:
    """The managed windows but the desktop's furniture (see ``FURNITURE``)."""
    return {f"0x{wid:08x}" for wid in _client_ids(x) if not _furniture(x, wid)}


def _furniture(x: XSession, wid: int) -> bool:
    window = x.display.create_resource_object("window", wid)
    try:
        types = _prop(x, window, "_NET_WM_WINDOW_TYPE", Xatom.ATOM)
    except (xerror.BadWindow, xerror.BadDrawable):
        return False  # closed while we looked: _window_info drops it
    furniture = {x.display.intern_atom(name) for name in FURNITURE}
    return types is not None and any(int(t) in furniture for t in types)


def _window_info(x: XSession, wid: int, active: int) -> m.WindowInfo | None:
    window = x.display.create_resource_object("window", wid)
    try:
        geometry = window.get_geometry()
        origin = x.root.translate_coords(window, 0, 0)
        title, pid = _title(x, window), _window_pid(x, window)
        wm_class = window.get_wm_class()
    except (xerror.BadWindow, xerror.BadDrawable):
        return None  # closed while we looked
    app = proc_name(pid) or (wm_class[1] if wm_class else "")
    return m.WindowInfo(
        id=f"0x{wid:08x}", title=title, pid=pid, app=app, x=origin.x, y=origin.y,
        width=geometry.width, height=geometry.height, active=wid == active,
    )  # fmt: skip


def _prop(x: XSession, window: Any, name: str, kind: int) -> Any:
    prop = window.get_full_property(x.display.intern_atom(name), kind)
    return None if prop is None else prop.value


def _client_ids(x: XSession) -> list[int]:
    value = _prop(x, x.root, "_NET_CLIENT_LIST", Xatom.WINDOW)
    if value is not None:
        return [int(wid) for wid in value]
    if _prop(x, x.root, "_NET_SUPPORTING_WM_CHECK", Xatom.WINDOW) is not None:
        return []  # a window manager that has no clients yet
    raise NotSupported(f"no EWMH window manager runs on display {x.name}; start one (e.g. openbox)")


def _active_id(x: XSession) -> int:
    value = _prop(x, x.root, "_NET_ACTIVE_WINDOW", Xatom.WINDOW)
    return int(value[0]) if value is not None and len(value) else 0


def _title(x: XSession, window: Any) -> str:
    value = _prop(x, window, "_NET_WM_NAME", x.display.intern_atom("UTF8_STRING"))
    if value is not None:
        return bytes(value).decode("utf-8", "replace")
    name = window.get_wm_name()
    return name.decode("latin-1") if isinstance(name, bytes) else name or ""


def _window_pid(x: XSession, window: Any) -> int:
    value = _prop(x, window, "_NET_WM_PID", Xatom.CARDINAL)
    return int(value[0]) if value is not None and len(value) else 0


def _parse_window_id(window_id: str) -> int:
    try:
        return int(window_id, 0)
    except ValueError:
        raise InvalidParams(
            f"window_id {window_id!r} is not a window id; use an id from list_windows "
            "(e.g. '0x01a00003')"
        ) from None


def _send_wm_request(x: XSession, window_id: str, message: str, data: list[int]) -> int:
    """Ask the window manager (EWMH client message) to act on one of its clients."""
    wid = _parse_window_id(window_id)
    if wid not in _client_ids(x):
        raise NotFound(f"no window {window_id}; call list_windows for the current ids")
    event = xevent.ClientMessage(
        window=x.display.create_resource_object("window", wid),
        client_type=x.display.intern_atom(message),
        data=(32, [value & 0xFFFFFFFF for value in (data + [0] * 5)[:5]]),
    )
    x.root.send_event(event, event_mask=X.SubstructureRedirectMask | X.SubstructureNotifyMask)
    x.flush_sync()
    return wid


@router.method("activate_window")
async def activate_window(p: m.WindowParams, ctx: CallContext) -> m.Ok:
    x = ctx.services.x
    data = [_PAGER_SOURCE, X.CurrentTime]
    wid = await x.run(_send_wm_request, x, p.window_id, "_NET_ACTIVE_WINDOW", data)
    # Input sent right after this call must land in the window, so wait for the WM.
    if not await _poll(lambda: _is_active(x, wid), ACTIVATE_TIMEOUT_S):
        raise ToolFailed(
            f"the window manager did not activate window {p.window_id} within "
            f"{ACTIVATE_TIMEOUT_S:g} s; the window may refuse focus"
        )
    await maybe_settle(p, ctx)
    return m.Ok()


async def _is_active(x: XSession, wid: int) -> bool:
    return await x.run(_focused_sync, x, wid)


def _focused_sync(x: XSession, wid: int) -> bool:
    """The WM calls it active and the X input focus is in it (the WM updates the property
    first, so a key sent in between would still go to the old window)."""
    if _active_id(x) != wid:
        return False
    window = x.display.get_input_focus().focus
    while isinstance(window, Window) and window.id != x.root.id:
        if window.id == wid:
            return True
        window = window.query_tree().parent
    return False


@router.method("move_resize_window")
async def move_resize_window(p: m.MoveResizeParams, ctx: CallContext) -> m.Ok:
    x = ctx.services.x
    flags = _STATIC_GRAVITY | 0xF00 | (_PAGER_SOURCE << 12)  # 0xF00: x, y, width, height set
    data = [flags, p.x, p.y, p.width, p.height]
    await x.run(_send_wm_request, x, p.window_id, "_NET_MOVERESIZE_WINDOW", data)
    await maybe_settle(p, ctx)
    return m.Ok()


@router.method("close_window")
async def close_window(p: m.WindowParams, ctx: CallContext) -> m.Ok:
    x = ctx.services.x
    data = [X.CurrentTime, _PAGER_SOURCE]
    await x.run(_send_wm_request, x, p.window_id, "_NET_CLOSE_WINDOW", data)
    await maybe_settle(p, ctx)
    return m.Ok()


async def _poll(check: Callable[[], Awaitable[bool]], timeout: float, every: float = 0.01) -> bool:
    """Poll external state (another process, the X server) that has no event to wait on."""
    with anyio.move_on_after(timeout):
        while True:
            if await check():
                return True
            await anyio.sleep(every)
    return False


# --- running apps ------------------------------------------------------------------------
@router.method("get_frontmost_app")
async def get_frontmost_app(p: m.Empty, ctx: CallContext) -> m.FrontmostApp:
    x = ctx.services.x
    windows = await x.run(windows_sync, x)
    active = next((w for w in windows if w.active), None)
    if active is None:
        return m.FrontmostApp(app=None)
    count = sum(1 for w in windows if w.pid == active.pid)
    app = app_info(active.pid, count) if active.pid else None
    return m.FrontmostApp(app=app, window_title=active.title)


@router.method("list_running_apps")
async def list_running_apps(p: m.Empty, ctx: CallContext) -> m.AppList:
    return m.AppList(apps=await running_apps(ctx))


async def running_apps(ctx: CallContext) -> list[m.AppInfo]:
    """Processes owning windows, plus the apps this agent launched that still run."""
    x = ctx.services.x
    try:
        windows = await x.run(windows_sync, x)
    except NotSupported:
        windows = []  # no window manager: the launched apps are all we know about
    counts = Counter(w.pid for w in windows if w.pid > 0)
    launched = ctx.services.launched
    for pid in [pid for pid in launched if not alive(pid)]:
        del launched[pid]
    apps = (app_info(pid, counts[pid]) for pid in sorted(set(counts) | set(launched)))
    return [app for app in apps if app is not None]


def app_info(pid: int, windows: int) -> m.AppInfo | None:
    name = proc_name(pid)
    if not name:
        return None
    return m.AppInfo(pid=pid, name=name, command=proc_command(pid), windows=windows)


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() if pid > 0 else ""
    except OSError:
        return ""


def proc_command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return shlex.join(arg.decode("utf-8", "replace") for arg in raw.split(b"\0") if arg)


def alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:  # poll() also reaps the zombie
        del _CHILDREN[pid]
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@router.method("quit_app")
async def quit_app(p: m.QuitAppParams, ctx: CallContext) -> m.QuitResult:
    pids = await _quit_targets(p, ctx)
    launched = ctx.services.launched
    _signal_all(pids, signal.SIGTERM, launched)
    survivors = await _wait_exit(pids, QUIT_GRACE_S)
    if survivors and p.force:
        _signal_all(survivors, signal.SIGKILL, launched)
        survivors = await _wait_exit(survivors, QUIT_GRACE_S)
    if survivors:
        hint = "" if p.force else "; pass force=true to kill it"
        raise ToolFailed(f"pids {survivors} still run {QUIT_GRACE_S:g} s after SIGTERM{hint}")
    for pid in pids:
        launched.pop(pid, None)
    return m.QuitResult(pids=pids)


async def _quit_targets(p: m.QuitAppParams, ctx: CallContext) -> list[int]:
    if p.pid is not None:
        if p.pid == os.getpid():
            raise InvalidParams(f"pid {p.pid} is the guest agent itself")
        if not alive(p.pid):
            raise NotFound(f"no running process {p.pid}; call list_running_apps")
        return [p.pid]
    if p.name is None:
        raise InvalidParams("pass the app's name or pid (see list_running_apps)")
    apps = await running_apps(ctx)
    wanted = p.name.lower()
    pids = [app.pid for app in apps if wanted in (app.name.lower(), _program(app.command))]
    if not pids:
        names = ", ".join(sorted({app.name for app in apps})) or "none"
        raise NotFound(f"no running app named {p.name!r}; running: {names}")
    return pids


def _program(command: str) -> str:
    return Path(command.split(" ", 1)[0]).name.lower() if command else ""


def _signal_all(pids: list[int], sig: signal.Signals, launched: dict[int, list[str]]) -> None:
    for pid in pids:
        try:
            # Apps we started lead their own process group: take their helpers along.
            if pid in launched:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as exc:
            raise ToolFailed(f"not allowed to signal pid {pid}: {exc}") from exc


async def _wait_exit(pids: list[int], timeout: float) -> list[int]:
    async def gone() -> bool:
        return not any(alive(pid) for pid in pids)

    await _poll(gone, timeout, every=0.05)
    return [pid for pid in pids if alive(pid)]


# --- launching ---------------------------------------------------------------------------
@dataclass(frozen=True)
class DesktopEntry:
    id: str
    name: str
    exec: str
    terminal: bool
    mime_types: tuple[str, ...]
    listed: bool


@router.method("open_app")
async def open_app(p: m.OpenAppParams, ctx: CallContext) -> m.Launched:
    entries = await anyio.to_thread.run_sync(desktop_entries)
    argv = resolve_app(p.name, entries)
    if argv is None:
        raise NotFound(
            f"no app {p.name!r}: not a .desktop id, app name or command on PATH; "
            f"installed apps include {_some_names(entries)}"
        )
    return await launch(argv, p, ctx)


@router.method("open_file")
async def open_file(p: m.OpenFileParams, ctx: CallContext) -> m.Launched:
    path = resolve(p.path, ctx.config.roots, op="open_file")
    argv = await anyio.to_thread.run_sync(opener_argv, path)
    return await launch(argv, p, ctx)


@router.method("open_url")
async def open_url(p: m.OpenUrlParams, ctx: CallContext) -> m.Launched:
    return await launch(browser_argv(normalize_url(p.url)), p, ctx)


async def launch(argv: list[str], p: m.LaunchParams, ctx: CallContext) -> m.Launched:
    """Start argv detached (own session, no stdio) on the agent's display."""
    waits = p.settle or p.window_timeout is not None
    before = await _window_ids(ctx) if waits else set()
    env = display_env(ctx.config.display or ctx.services.x.name, ctx.config.env)
    child = await anyio.to_thread.run_sync(_spawn, argv, env)
    _CHILDREN[child.pid] = child
    ctx.services.launched[child.pid] = argv
    await anyio.sleep(STARTUP_CHECK_S)
    code = child.poll()
    if code:
        ctx.services.launched.pop(child.pid, None)
        raise ToolFailed(
            f"{shlex.join(argv)} exited with code {code} right after starting; "
            "run it with exec_command to see its error output"
        )
    if p.window_timeout is not None:
        if not await _poll(lambda: _shown(ctx, before, child), p.window_timeout):
            raise Timeout(
                f"{shlex.join(argv)} is running (pid {child.pid}) but showed no window within "
                f"{p.window_timeout} s; raise window_timeout, or leave it unset to return at once"
            )
        await _focus_new(ctx, await _window_ids(ctx) - before)
    elif p.settle:
        await _poll(lambda: _shown(ctx, before, child), LAUNCH_WINDOW_TIMEOUT_S)
    await maybe_settle(p, ctx)
    return m.Launched(pid=child.pid, command=argv)


async def _focus_new(ctx: CallContext, new: set[str]) -> None:
    """Typing right after a launch must land in the new window: wait for the WM to focus
    it, and ask for it if the WM does not on its own (e.g. under load it lags)."""
    if not new:
        return  # the launcher handed over to a running instance
    x = ctx.services.x
    window_id = max(new, key=lambda w: int(w, 0))  # the newest (X ids grow)
    wid = int(window_id, 0)
    if await _poll(lambda: _is_active(x, wid), FOCUS_GRACE_S):
        return
    data = [_PAGER_SOURCE, X.CurrentTime]
    await x.run(_send_wm_request, x, window_id, "_NET_ACTIVE_WINDOW", data)
    if not await _poll(lambda: _is_active(x, wid), ACTIVATE_TIMEOUT_S):
        raise ToolFailed(f"window {window_id} appeared but the window manager did not focus it")


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    home = Path.home()
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=env, start_new_session=True,
            cwd=home if home.is_dir() else None,
        )  # fmt: skip
    except FileNotFoundError:
        raise NotFound(f"{argv[0]!r} is not installed in the sandbox") from None
    except PermissionError:
        raise ToolFailed(f"{argv[0]!r} is not executable") from None


async def _window_ids(ctx: CallContext) -> set[str]:
    x = ctx.services.x
    try:
        return await x.run(app_window_ids_sync, x)
    except NotSupported:
        return set()


async def _shown(ctx: CallContext, before: set[str], child: subprocess.Popen[bytes]) -> bool:
    """A new window appeared, or the launcher exited (it handed the request to a running
    instance, as a second chromium or xdg-open with a single-instance app does)."""
    return child.poll() is not None or bool(await _window_ids(ctx) - before)


def desktop_entries() -> list[DesktopEntry]:
    """Applications from the XDG .desktop files; earlier data dirs shadow later ones."""
    found: dict[str, DesktopEntry] = {}
    for base in _application_dirs():
        for path in sorted(base.rglob("*.desktop")) if base.is_dir() else []:
            entry_id = str(path.relative_to(base)).removesuffix(".desktop").replace("/", "-")
            if entry_id not in found and (entry := _parse_entry(path, entry_id)):
                found[entry_id] = entry
    return list(found.values())


def _application_dirs() -> list[Path]:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    data_dirs = os.environ.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    return [Path(d) / "applications" for d in [data_home, *data_dirs.split(":")] if d]


def _parse_entry(path: Path, entry_id: str) -> DesktopEntry | None:
    try:
        fields = _entry_fields(path.read_text(errors="replace"))
    except OSError:
        return None
    if fields.get("Type") != "Application" or "Exec" not in fields:
        return None
    if fields.get("Hidden") == "true":
        return None
    return DesktopEntry(
        id=entry_id, name=fields.get("Name", entry_id), exec=fields["Exec"],
        terminal=fields.get("Terminal") == "true",
        mime_types=tuple(t for t in fields.get("MimeType", "").split(";") if t),
        listed=fields.get("NoDisplay") != "true",
    )  # fmt: skip


def _entry_fields(text: str) -> dict[str, str]:
    """Keys of the [Desktop Entry] group (actions and other groups are ignored)."""
    fields: dict[str, str] = {}
    group = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            group = line
        elif group == "[Desktop Entry]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            fields.setdefault(key.strip(), value.strip())
    return fields


def resolve_app(name: str, entries: list[DesktopEntry]) -> list[str] | None:
    """Match order: .desktop id, Name= (both case-insensitive), id suffix, command on PATH."""
    wanted = name.strip().lower().removesuffix(".desktop")
    matchers: list[Callable[[DesktopEntry], bool]] = [
        lambda e: e.id.lower() == wanted,
        lambda e: e.name.lower() == wanted,
        lambda e: e.id.lower().endswith((f".{wanted}", f"-{wanted}")),
    ]
    for matches in matchers:
        entry = next((e for e in entries if matches(e)), None)
        if entry is not None:
            return entry_argv(entry, [])
    argv = _split_command(name)
    return argv if argv and shutil.which(argv[0]) else None


def _split_command(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise InvalidParams(f"cannot parse command {command!r}: {exc}") from None


_FIELD_CODE = re.compile(r"%[a-zA-Z]")
_FILE_CODES = {"%f": 1, "%u": 1, "%F": None, "%U": None}  # value: how many files it takes


def entry_argv(entry: DesktopEntry, files: list[str]) -> list[str]:
    """The Exec line as argv: file codes get ``files``, other field codes are dropped."""
    argv: list[str] = []
    placed = False
    for token in shlex.split(entry.exec.replace("%%", "\0")):
        if token in _FILE_CODES:
            argv.extend(files[: _FILE_CODES[token]])
            placed = True
        elif cleaned := _FIELD_CODE.sub("", token).replace("\0", "%"):
            argv.append(cleaned)
    if files and not placed:
        argv.extend(files)
    if entry.terminal and shutil.which("xterm"):
        argv = ["xterm", "-e", *argv]
    return argv


def _some_names(entries: list[DesktopEntry]) -> str:
    names = sorted({e.name for e in entries if e.listed}, key=str.lower)
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"


def opener_argv(path: Path) -> list[str]:
    if not path.exists():
        raise NotFound(f"{str(path)!r} does not exist")
    if shutil.which("xdg-open"):
        return ["xdg-open", str(path)]
    return handler_argv(path, desktop_entries())


def handler_argv(path: Path, entries: list[DesktopEntry]) -> list[str]:
    """The app for path's MIME type (GUI apps before terminal ones), as xdg-open would."""
    mime = mime_type(path)
    handlers = sorted((e for e in entries if mime in e.mime_types), key=lambda e: e.terminal)
    if handlers:
        return entry_argv(handlers[0], [str(path)])
    for argv in (["mousepad", str(path)], ["xterm", "-e", "less", str(path)]):
        if mime.startswith("text/") and shutil.which(argv[0]):
            return argv
    raise NotFound(f"no installed app opens {mime} files; start one with open_app instead")


def mime_type(path: Path) -> str:
    if path.is_dir():
        return "inode/directory"
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed:
        return guessed
    with path.open("rb") as fh:
        head = fh.read(4096)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "application/octet-stream" if b"\0" in head else "text/plain"


_CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FIREFOXES = ("firefox", "firefox-esr")
_URL_SCHEME = re.compile(
    r"^(about|data|file|mailto|view-source|chrome):|^[a-z][a-z0-9+.-]*://", re.I
)


def normalize_url(url: str) -> str:
    """Adds https:// to bare hosts; also keeps a URL from ever starting with '-' (a flag)."""
    url = url.strip()
    return url if _URL_SCHEME.match(url) else f"https://{url}"


def browser_argv(url: str) -> list[str]:
    for name in _CHROMIUMS:
        if shutil.which(name):
            return [name, *_chromium_flags(), url]
    for name in (*_FIREFOXES, "xdg-open"):
        if shutil.which(name):
            return [name, url]
    raise NotFound("no browser is installed in the sandbox; install chromium or firefox")


def _chromium_flags() -> list[str]:
    a11y = ["--force-renderer-accessibility"]  # web pages in the accessibility tree
    if os.geteuid() != 0 and not _in_user_namespace():
        return a11y
    # Chromium's own sandbox cannot start as root or inside a user namespace; the sandbox
    # VM/container is the isolation boundary. The rest keeps it quiet and offline-friendly.
    profile = Path.home() / ".config" / "chromium-hivecell"
    return [
        *a11y, "--no-sandbox", "--no-first-run", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
    ]  # fmt: skip


def _in_user_namespace() -> bool:
    try:
        first = Path("/proc/self/uid_map").read_text().split("\n", 1)[0].split()
    except OSError:
        return False
    return first != ["0", "0", "4294967295"]


# --- VNC ---------------------------------------------------------------------------------
@router.method("start_vnc")
async def start_vnc(p: m.Empty, ctx: CallContext) -> m.VncResult:
    services, sock = ctx.services, ctx.config.vnc_socket
    if services.vnc is not None and services.vnc.returncode is None:
        await _check_still_a_socket(sock)
        return m.VncResult(socket=str(sock))
    log = sock.with_name("x11vnc.log")
    services.vnc = await _spawn_vnc(ctx, sock, log)
    try:
        await _await_socket(services.vnc, sock, log)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _stop_process(services.vnc)
        services.vnc = None
        raise
    return m.VncResult(socket=str(sock))


async def _check_still_a_socket(sock: Path) -> None:
    """Something in the box may have replaced x11vnc's socket (with a link, say): viewers
    relayed there would reach whatever it names inside the box, so say so instead."""
    try:
        is_socket = stat.S_ISSOCK((await anyio.Path(sock).lstat()).st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        raise ToolFailed(
            f"{sock} is no longer x11vnc's socket (removed or replaced, e.g. by a link); "
            "call stop_vnc, then start_vnc"
        )


async def _spawn_vnc(ctx: CallContext, sock: Path, log: Path) -> Any:
    if not shutil.which("x11vnc"):
        raise NotSupported("x11vnc is not installed in the sandbox (apt install x11vnc)")
    await anyio.Path(sock.parent).mkdir(parents=True, exist_ok=True)
    await anyio.Path(sock).unlink(missing_ok=True)
    display = ctx.services.x.name
    # Only the unix socket may accept viewers: -rfbport 0 drops the IPv4 listener, but this
    # x11vnc build also listens on [::]:5900 unless -no6 and -rfbportv6 -1 are given too.
    argv = [
        "x11vnc", "-display", display, "-unixsock", str(sock), "-rfbport", "0", "-no6",
        "-rfbportv6", "-1", "-shared", "-forever", "-nopw", "-noxdamage", "-quiet", "-norc",
        "-o", str(log),
    ]  # fmt: skip
    return await anyio.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=display_env(display, ctx.config.env), start_new_session=True,
    )  # fmt: skip


async def _await_socket(process: Any, sock: Path, log: Path) -> None:
    try:
        with anyio.fail_after(VNC_START_TIMEOUT_S):
            while True:
                # The file appears at bind(), before listen(): wait for a listening socket,
                # or a viewer connecting right away is refused.
                if await anyio.to_thread.run_sync(_listening, sock):
                    return
                if process.returncode is not None:
                    raise ToolFailed(
                        f"x11vnc exited with code {process.returncode}: {await _tail(log)}"
                    )
                await anyio.sleep(0.02)
    except TimeoutError:
        raise Timeout(
            f"x11vnc did not create {sock} within {VNC_START_TIMEOUT_S:g} s: {await _tail(log)}"
        ) from None


def _listening(sock: Path) -> bool:
    """Whether a unix socket bound at ``sock`` accepts connections (/proc/net/unix)."""
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return sock.exists()  # no procfs view: the best remaining sign
    accepting = "00010000"  # __SO_ACCEPTCON: listen() was called
    return any(
        len(f := line.split()) >= 8 and f[-1] == str(sock) and f[3] == accepting for line in lines
    )


async def _tail(log: Path) -> str:
    try:
        text = await anyio.Path(log).read_text(errors="replace")
    except OSError:
        return "no log"
    return " | ".join(text.strip().splitlines()[-5:]) or "empty log"


@router.method("stop_vnc")
async def stop_vnc(p: m.Empty, ctx: CallContext) -> m.Ok:
    process, ctx.services.vnc = ctx.services.vnc, None
    if process is not None:
        with anyio.CancelScope(shield=True):
            await _stop_process(process)
    await anyio.Path(ctx.config.vnc_socket).unlink(missing_ok=True)
    return m.Ok()


async def _stop_process(process: Any) -> None:
    if process.returncode is None:
        process.terminate()
    with anyio.move_on_after(3):
        await process.wait()
        return
    process.kill()
    await process.wait()
