"""The ``local`` provider: each sandbox is a bubblewrap box run by a small detached supervisor.

State lives under ``home`` (``$HIVECELL_HOME``, resolved by the CLI), one folder per sandbox
(see ``layout.py``). Sandboxes outlive the process that created them; any process with the
same ``home`` can list, connect to, stop and destroy them.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from anyio import to_thread

from hivecell.errors import (
    ConfigError,
    HivecellError,
    SandboxError,
    SandboxNotFound,
)
from hivecell.sandbox import natplan, supervised, transfer
from hivecell.sandbox.base import NetworkConnection, SandboxInfo, SandboxSpec, SandboxUsage
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local import (
    bwrap,
    bytecode,
    disk,
    etcfiles,
    freeze,
    hostfilter,
    identity,
    limits,
    netlog,
    seccomp,
    state,
    throttle,
    uidpool,
    usage,
)
from hivecell.sandbox.local.layout import SUPERVISOR_MODULE, Layout
from hivecell.sandbox.local.limits import LimitPlan, LimitsUnavailable
from hivecell.sandbox.local.pyruntime import PythonRuntime
from hivecell.sandbox.local.state import SandboxMeta
from hivecell.sandbox.local.zygote import client as zygote_client
from hivecell.sandbox.local.zygote import launch as zygote_launch

MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the NUL
STOP_TIMEOUT = 10.0
PING_TIMEOUT = 5.0  # one ping's wait; a slower boot is pinged again, up to boot_timeout
HOST_TOOLS = {"bwrap": "bubblewrap", "Xvfb": "xvfb", "slirp4netns": "slirp4netns"}


class LocalProvider:
    """Sandboxes as bubblewrap boxes on this machine (the embedded default)."""

    name = "local"

    def __init__(
        self,
        home: Path,
        *,
        limits_backend: str = "auto",
        boot_timeout: float = 20.0,
        pycache: Path | None = None,
        disk_backend: str = "auto",
        dns_servers: list[str] | None = None,
        max_booting: int | None = None,
        boot_lock_dir: Path | None = None,
        zygote: bool = True,
        zygote_dir: Path | None = None,
    ) -> None:
        """``pycache``: where the guest's bytecode is compiled (default ``home/pycache``);
        providers with different homes may share one. ``disk_backend``: how ``disk_mb`` is
        enforced (see disk.py): auto, image (root) or watch. ``dns_servers``: the resolvers a
        ``nat`` box's DNS questions are forwarded to (default: /etc/resolv.conf's).
        ``max_booting``: boxes booting at once on this host (default: two per core; see
        throttle.py), counted in ``boot_lock_dir`` (default /run/hivecell/boot as root, else
        ``home/boot``); creates beyond it wait in line, and ``boot_timeout`` starts after.
        ``zygote``: boot boxes from the host's pre-imported guest (zygote/; as root only):
        ~15 MB less per box and no imports at boot; off, each box imports its own.
        ``zygote_dir``: its socket's folder (default /run/hivecell/zygote, host-wide)."""
        if limits_backend not in limits.BACKENDS:
            choices = ", ".join(limits.BACKENDS)
            raise ConfigError(f"unknown limits backend {limits_backend!r}; use one of {choices}")
        if disk_backend not in disk.BACKENDS:
            choices = ", ".join(disk.BACKENDS)
            raise ConfigError(f"unknown disk backend {disk_backend!r}; use one of {choices}")
        self.home = Path(home)
        self.limits_backend = limits_backend
        self.disk_backend = disk_backend
        self.boot_timeout = boot_timeout
        self.pycache = pycache or self.home / "pycache"
        self.dns_servers = dns_servers
        self.zygote = zygote
        self.zygote_dir = zygote_dir or zygote_launch.FOLDER
        self.throttle = throttle.BootThrottle(
            boot_lock_dir or throttle.default_lock_dir(self.home), max_booting
        )
        self._runtime: PythonRuntime | None = None
        self._bytecode_warm = False
        self._zygote: dict[str, Any] | None = None
        self._supervisors: dict[str, Any] | None = None
        self._key: str | None = None
        self._bytecode_lock = threading.Lock()
        self._usage = usage.UsageReader()

    # --- the provider protocol ----------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        await to_thread.run_sync(self._refuse_impossible, spec)  # before waiting in line
        # Nothing exists while we wait: a create cancelled in line leaves nothing behind.
        async with self.throttle.slot(f"create in {self.home}"):
            layout, meta = await to_thread.run_sync(self._prepare, spec)
            try:
                await self._launch(layout, meta)
            except anyio.get_cancelled_exc_class():
                # The caller never learns the id, so nobody else could clean this up.
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(self._destroy_sync, layout)
                raise
            except HivecellError as exc:
                # Kept for inspection, stopped: whoever owns it must learn which one it is.
                exc.context.setdefault("id", layout.sandbox_id)
                raise
            except Exception as exc:
                # Unexpected (an OS error while spawning, a guest dropping a ping): typed, and
                # naming the box so its owner can remove it (a task failed with an empty
                # message and its box stayed, found by `hivecell bench server --tasks`).
                raise SandboxError(
                    f"sandbox {layout.sandbox_id} did not start: {exc!r}. Log: {layout.log} "
                    "(remove it with destroy once inspected)",
                    op="create",
                    context={"id": layout.sandbox_id, "log": str(layout.log)},
                ) from exc
        return await self.info(layout.sandbox_id)

    async def start(self, sandbox_id: str) -> SandboxInfo:
        layout, meta = await self._load(sandbox_id)
        if await self._is_running(layout, meta):
            return await self.info(sandbox_id)
        async with self.throttle.slot(f"start {sandbox_id}"):
            await self._launch(layout, meta)
        return await self.info(sandbox_id)

    async def stop(self, sandbox_id: str) -> SandboxInfo:
        layout, meta = await self._load(sandbox_id)
        await to_thread.run_sync(self._stop_sync, layout, meta.supervisor_pid)
        await to_thread.run_sync(_leave_host_filter, layout, meta.supervisor_pid)
        return await self.info(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        layout = self._layout(sandbox_id, op="destroy")
        await to_thread.run_sync(self._destroy_sync, layout)
        self._usage.forget(sandbox_id)

    async def connect(self, sandbox_id: str) -> GuestClient:
        return supervised.client(await self.info(sandbox_id))

    async def info(self, sandbox_id: str) -> SandboxInfo:
        layout = self._layout(sandbox_id, op="load")
        # One worker-thread trip, not two: every task's guest connection starts here.
        return await to_thread.run_sync(lambda: state.current(layout, _loaded(layout)))

    async def list(self) -> list[SandboxInfo]:
        return await to_thread.run_sync(self._list_sync)

    async def freeze(self, sandbox_id: str, frozen: bool) -> bool:
        """SIGSTOP / SIGCONT every process of the box (not its supervisor)."""
        layout, meta = await self._load(sandbox_id)
        return await to_thread.run_sync(_freeze, layout, meta.supervisor_pid, frozen)

    async def network_log(self, sandbox_id: str) -> builtins.list[NetworkConnection]:
        layout, _ = await self._load(sandbox_id)
        rows = await to_thread.run_sync(netlog.read, layout.network_log)
        return [NetworkConnection.model_validate(row) for row in rows]

    async def usage(self, sandbox_id: str) -> SandboxUsage:
        layout, meta = await self._load(sandbox_id)
        return await to_thread.run_sync(self._usage.read, layout, meta)

    # --- creating and starting -----------------------------------------------------------------
    def _refuse_impossible(self, spec: SandboxSpec) -> None:
        _require_provider(spec, self.name)
        _require_tools(spec)
        natplan.require_host_filter(spec.network)
        _require_seccomp()
        self._limits(spec, "probe")  # refuse impossible limits before making folders
        _require_userns()

    def _prepare(self, spec: SandboxSpec) -> tuple[Layout, SandboxMeta]:
        layout = self._new_layout()
        try:
            _prepare_disk(layout, spec, self.disk_backend)
            for folder in layout.writable_dirs():
                folder.mkdir(parents=True, exist_ok=True)
            layout.sockets.mkdir(mode=0o700)
            etcfiles.write(layout, layout.sandbox_id, spec.network)
            host_uid = _own_uid(layout)
        except BaseException:
            _discard(layout)  # nobody learns the id: no folder or mount may stay behind
            raise
        info = SandboxInfo(
            id=layout.sandbox_id,
            provider=self.name,
            status="stopped",
            spec=spec,
            created_at=time.time(),
            endpoint=f"unix:{layout.guest_socket}",
            shared_dir=str(layout.shared),
            vnc_endpoint=f"unix:{layout.vnc_socket}",
            guest_socket=str(layout.guest_socket),
            host_uid=host_uid,
        )
        meta = SandboxMeta(info=info)
        state.save(layout, meta)
        return layout, meta

    def _new_layout(self) -> Layout:
        while True:
            layout = Layout.of(self.home, state.new_id())
            _check_socket_path(layout)
            layout.root.parent.mkdir(parents=True, exist_ok=True)
            try:
                layout.root.mkdir()
            except FileExistsError:
                continue  # 32 random bits collided; draw again
            return layout

    async def _launch(self, layout: Layout, meta: SandboxMeta) -> None:
        pid = await to_thread.run_sync(self._spawn, layout, meta)
        try:
            await self._wait_until_ready(layout, pid)
        except BaseException:
            with anyio.CancelScope(shield=True):  # half-booted boxes are not left running
                await to_thread.run_sync(self._stop_sync, layout, pid)
            raise

    def _spawn(self, layout: Layout, meta: SandboxMeta) -> int:
        """Start the supervisor; returns its pid."""
        spec = meta.info.spec
        _require_tools(spec)
        natplan.require_host_filter(spec.network)
        _mount_disk(layout)  # gone after a host reboot; home and /shared live there
        # bwrap binds shared/inbox by its host path: a link the box left there must not be
        # followed at boot (a read-only inbox is a mount point the box cannot replace; a
        # writable one can be replaced while the box runs).
        transfer.ensure_folder(layout.shared, "inbox", meta.info.host_uid)
        plan = self._plan(layout, spec)
        _write_seccomp(layout)
        plan["identity"] = _identity(layout, meta.info.host_uid)
        layout.plan.write_text(json.dumps(plan))
        layout.exit.unlink(missing_ok=True)
        layout.guest_socket.unlink(missing_ok=True)
        pid = self._start_supervisor(layout)
        meta.supervisor_pid = pid
        meta.limits = (
            f"{LimitPlan.from_json(plan['limits']).describe()} disk={plan['disk']['mode']}"
        )
        state.save(layout, meta)
        return pid

    def _limits(self, spec: SandboxSpec, cgroup_name: str) -> LimitPlan:
        memory = spec.memory_mb * 1024 * 1024 if spec.memory_mb else None
        try:
            return limits.plan(
                memory,
                spec.max_pids,
                cgroup_name,
                self.limits_backend,
                cpus=spec.cpus,
                box_is_host_root=False,  # as root each box runs as its own uid (identity.py)
            )
        except LimitsUnavailable as exc:
            raise ConfigError(str(exc), op="create") from exc

    def _plan(self, layout: Layout, spec: SandboxSpec) -> dict[str, Any]:
        plan = self._limits(spec, layout.sandbox_id)
        tmpfs_bytes = spec.tmpfs_mb << 20
        return {
            "bwrap": shutil.which("bwrap"),
            "slirp4netns": shutil.which("slirp4netns"),
            "nft": hostfilter.find_nft(),
            "network": spec.network,
            "seccomp": str(layout.seccomp),
            "nat": natplan.plan(spec.network_allow, self.dns_servers)
            if spec.network == "nat"
            else None,
            "limits": plan.to_json(),
            "disk": _disk_plan(layout, spec),
            "bwrap_args": bwrap.build(
                layout,
                self.runtime,
                self._pycache(),
                inbox_writable=spec.inbox_writable,
                tmpfs_bytes=tmpfs_bytes,
            ),
            "command": bwrap.boot_command(spec, self.runtime, plan),
            "boot_env": bwrap.environment(self.runtime),
            "boot_cwd": etcfiles.SANDBOX_HOME,
            "zygote": self.zygote_plan(),
        }

    def _start_supervisor(self, layout: Layout) -> int:
        plan = self.supervisors_plan()
        return zygote_client.start_or_spawn(plan, SUPERVISOR_MODULE, layout.root, layout.log)

    def supervisors_plan(self) -> dict[str, Any] | None:
        """How supervisors are forked (None: each box's starts a Python of its own)."""
        if not self.zygote:
            return None
        if self._supervisors is None:
            self._supervisors = zygote_launch.supervisors_plan(
                self.runtime, folder=self.zygote_dir, code_key=self._server_key()
            )
        return self._supervisors

    def zygote_plan(self) -> dict[str, Any] | None:
        """How boxes reach the zygote (None: each box imports its own guest)."""
        if not self.zygote:
            return None
        if self._zygote is None:  # its key hashes every source file: once per provider
            bwrap_path = shutil.which("bwrap") or "bwrap"
            self._zygote = zygote_launch.plan(
                self.runtime,
                self._pycache(),
                bwrap_path,
                folder=self.zygote_dir,
                code_key=self._server_key(),
            )
        return self._zygote

    def _server_key(self) -> str:
        if self._key is None:  # one walk over the sources for both servers' plans
            self._key = zygote_launch.key(self.runtime)
        return self._key

    def _pycache(self) -> Path:
        with self._bytecode_lock:  # parallel creates: compile once, the others wait for it
            if not self._bytecode_warm:
                bytecode.warm(self.pycache, self.runtime)
                self._bytecode_warm = True
        return self.pycache

    @property
    def runtime(self) -> PythonRuntime:
        if self._runtime is None:
            self._runtime = PythonRuntime.detect()
        return self._runtime

    async def _wait_until_ready(self, layout: Layout, pid: int) -> None:
        """Poll the guest socket with a short backoff until ``ping`` answers."""
        deadline = anyio.current_time() + self.boot_timeout
        delay = 0.002
        # The supervisor listens on the guest's socket: a ping waits there until the agent
        # serves, so this loop mostly waits in the first one (never past the deadline).
        while not await supervised.pings(layout.guest_socket, self._ping_timeout(deadline)):
            if not await to_thread.run_sync(state.supervisor_alive, layout, pid):
                last = await to_thread.run_sync(state.read_exit, layout)
                raise await self._boot_failed(layout, str(last.get("detail", "it exited")))
            if anyio.current_time() > deadline:
                why = f"no answer within {self.boot_timeout} s"
                await to_thread.run_sync(self._stop_sync, layout, pid)
                await to_thread.run_sync(layout.record_exit, "error", f"did not boot: {why}")
                raise await self._boot_failed(layout, why)
            await anyio.sleep(delay)
            delay = min(delay * 1.5, 0.01)  # boot takes ~0.3 s: poll often, it is cheap

    @staticmethod
    def _ping_timeout(deadline: float) -> float:
        return max(0.001, min(PING_TIMEOUT, deadline - anyio.current_time()))

    async def _boot_failed(self, layout: Layout, why: str) -> SandboxError:
        tail = await to_thread.run_sync(supervised.log_tail, layout.log)
        return SandboxError(
            f"sandbox {layout.sandbox_id} did not start: {why}. Log {layout.log} ends with:\n"
            f"{tail}\n(remove it with destroy once inspected)",
            op="create",
            context={"id": layout.sandbox_id, "log": str(layout.log)},
        )

    # --- stopping and destroying ---------------------------------------------------------------
    def _stop_sync(self, layout: Layout, pid: int | None) -> None:
        if pid is None or not state.supervisor_alive(layout, pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            if not supervised.wait_gone(SUPERVISOR_MODULE, layout.root, pid, STOP_TIMEOUT):
                os.kill(pid, signal.SIGKILL)  # bwrap --die-with-parent takes the box down too
                supervised.wait_gone(SUPERVISOR_MODULE, layout.root, pid, STOP_TIMEOUT)

    def _destroy_sync(self, layout: Layout) -> None:
        if not layout.root.is_dir():
            raise SandboxNotFound(f"no sandbox {layout.sandbox_id} in {self.home}", op="destroy")
        meta = state.load(layout)
        # A terminal box (terminal.py) records its pid once it runs; before that, look.
        pid = (meta.supervisor_pid if meta else None) or state.find_supervisor(layout)
        self._stop_sync(layout, pid)
        _remove_cgroups(layout)
        _leave_host_filter(layout, pid)
        _release_disk(layout)
        shutil.rmtree(layout.root, onerror=_force_remove)
        if meta is not None and meta.info.host_uid is not None:
            uidpool.release(meta.info.host_uid, layout.root.absolute())

    # --- reading state -------------------------------------------------------------------------
    def _layout(self, sandbox_id: str, *, op: str) -> Layout:
        if not state.is_valid_id(sandbox_id):
            raise SandboxNotFound(f"{sandbox_id!r} is not a sandbox id", op=op)
        return Layout.of(self.home, sandbox_id)

    async def _load(self, sandbox_id: str) -> tuple[Layout, SandboxMeta]:
        layout = self._layout(sandbox_id, op="load")
        return layout, await to_thread.run_sync(_loaded, layout)

    async def _is_running(self, layout: Layout, meta: SandboxMeta) -> bool:
        return await to_thread.run_sync(state.supervisor_alive, layout, meta.supervisor_pid)

    def _list_sync(self) -> builtins.list[SandboxInfo]:
        found = []
        for sandbox_id in state.sandbox_ids(self.home):
            layout = Layout.of(self.home, sandbox_id)
            meta = state.load(layout)
            if meta is not None:
                found.append(state.current(layout, meta))
        return sorted(found, key=lambda info: info.created_at)


def _freeze(layout: Layout, pid: int | None, frozen: bool) -> bool:
    if pid is None or not state.supervisor_alive(layout, pid):
        return False
    (freeze.stop if frozen else freeze.resume)(pid)
    return True


def _require_provider(spec: SandboxSpec, name: str) -> None:
    if spec.provider not in (None, name):
        raise ConfigError(
            f"this spec asks for provider {spec.provider!r}, not {name!r}: create it through "
            "that provider (or hivecell.sandbox.router.ProviderRouter)",
            op="create",
            context={"provider": spec.provider},
        )


def _require_tools(spec: SandboxSpec) -> None:
    needed = ["bwrap", "Xvfb"] + (["slirp4netns"] if spec.network == "nat" else [])
    missing = [name for name in needed if shutil.which(name) is None]
    if missing:
        packages = " ".join(HOST_TOOLS[name] for name in missing)
        raise ConfigError(
            f"the local provider needs {', '.join(missing)}: install with apt install {packages}",
            op="create",
        )


def _require_userns() -> None:
    if os.geteuid() != 0:
        return  # the box maps to the invoking user, as bwrap always did
    why = identity.userns_unavailable()
    if why is not None:
        raise ConfigError(
            "running as root, each sandbox runs as its own unprivileged host user inside an "
            f"unprivileged user namespace, but {why}; enable them "
            "(sysctl user.max_user_namespaces=15000) or run hivecell as an ordinary user",
            op="create",
            context={"reason": why},
        )


def _own_uid(layout: Layout) -> int:
    """As root: claim the sandbox's own host uid and give it the folders the box writes.

    The box has not run yet, so nothing in these folders can be a planted link; lchown
    all the same. Not root: the box's user is the invoking user, as always.
    """
    if os.geteuid() != 0:
        return os.getuid()
    try:
        uid = uidpool.allocate(layout.root.absolute())
    except OSError as exc:
        raise ConfigError(str(exc), op="create") from exc
    for folder in layout.box_dirs():
        os.chown(folder, uid, uid, follow_symlinks=False)
    return uid


def _identity(layout: Layout, host_uid: int | None) -> dict[str, int] | None:
    """What the supervisor drops to before bwrap; None keeps the invoking user."""
    if os.geteuid() != 0:
        return None
    if host_uid is None or not uidpool.in_range(host_uid):
        # Made by an older or non-root hivecell: as root its box would be host root.
        raise ConfigError(
            f"sandbox {layout.sandbox_id} has no host uid of its own (made by an older "
            "hivecell, or not as root), so as root its user would be host root; copy what "
            f"you need from {layout.shared} and recreate it",
            op="start",
            context={"id": layout.sandbox_id},
        )
    return {"uid": host_uid, "gid": host_uid}


def _require_seccomp() -> None:
    why = seccomp.unavailable()
    if why is not None:
        raise ConfigError(
            f"every sandbox runs under a seccomp filter, but {why}",
            op="create",
            context={"reason": why},
        )


def _write_seccomp(layout: Layout) -> None:
    """In the sandbox's own folder, which the box cannot write: bwrap reads it at each start."""
    try:
        seccomp.write(layout.seccomp)
    except seccomp.SeccompUnavailable as exc:
        raise ConfigError(
            f"every sandbox runs under a seccomp filter, but {exc}", op="start"
        ) from exc


def _check_socket_path(layout: Layout) -> None:
    longest = max(len(str(layout.guest_socket).encode()), len(str(layout.vnc_socket).encode()))
    if longest > MAX_SOCKET_PATH:
        raise ConfigError(
            f"sandbox home {layout.root.parent.parent} is too long for unix socket paths "
            f"({longest} > {MAX_SOCKET_PATH} bytes); use a shorter HIVECELL_HOME",
            op="create",
        )


def _loaded(layout: Layout) -> SandboxMeta:
    meta = state.load(layout)
    if meta is None:
        raise SandboxNotFound(
            f"no sandbox {layout.sandbox_id} in {layout.root.parent.parent}; list shows the "
            "existing ones",
            op="load",
            context={"id": layout.sandbox_id},
        )
    return meta


def _remove_cgroups(layout: Layout) -> None:
    """The supervisor removes its cgroups; this covers a supervisor that was SIGKILLed."""
    try:
        plan = json.loads(layout.plan.read_text())
    except (OSError, ValueError):
        return
    planned = LimitPlan.from_json(plan["limits"])
    left = limits.cleanup(planned)
    if left:  # processes that outlived the supervisor (a loaded host): they go now
        limits.kill_members(planned)
    deadline = time.monotonic() + 10.0
    while left and time.monotonic() < deadline:  # the box's last processes are still exiting
        time.sleep(0.05)
        left = limits.cleanup(planned)
    if left:
        raise SandboxError(f"cgroups {left} are still busy", op="destroy", retryable=True)


def _disk_cap(spec: SandboxSpec) -> int | None:
    return spec.disk_mb << 20 if spec.disk_mb is not None else None


def _prepare_disk(layout: Layout, spec: SandboxSpec, backend: str) -> None:
    try:
        disk.prepare(layout, _disk_cap(spec), backend)
    except disk.DiskError as exc:
        raise SandboxError(
            f"{exc}; or create the sandbox with disk_mb=None (no disk cap)",
            op="create",
            context={"disk_mb": spec.disk_mb},
        ) from exc


def _mount_disk(layout: Layout) -> None:
    try:
        disk.mount(layout)
    except disk.DiskError as exc:
        raise SandboxError(str(exc), op="start", context={"id": layout.sandbox_id}) from exc


def _disk_plan(layout: Layout, spec: SandboxSpec) -> dict[str, Any]:
    """How the supervisor enforces the disk cap (it only acts in ``watch`` mode)."""
    cap = _disk_cap(spec)
    chosen = "image" if layout.disk_image.exists() else ("watch" if cap is not None else "none")
    return {"mode": chosen, "cap_bytes": cap, "folder": str(layout.disk)}


def _release_disk(layout: Layout) -> None:
    """Unmount the image; covers a supervisor that was SIGKILLed (the mount is ours)."""
    try:
        disk.release(layout)
    except disk.DiskError as exc:
        raise SandboxError(str(exc), op="destroy", retryable=True) from exc


def _discard(layout: Layout) -> None:
    """Undo a create that failed before any supervisor started."""
    with contextlib.suppress(disk.DiskError):
        disk.release(layout)
    if not disk.is_mounted(layout.disk):
        shutil.rmtree(layout.root, onerror=_force_remove)


def _leave_host_filter(layout: Layout, pid: int | None) -> None:
    """The supervisor detaches when it stops; this covers one that was SIGKILLed."""
    if pid is not None and state.supervisor_alive(layout, pid):
        return  # its slirp4netns may still run: it must stay filtered
    natplan.leave_host_filter(layout.plan, layout.sandbox_id)


def _force_remove(func: Callable[..., Any], path: str, exc_info: Any) -> None:
    """rmtree fallback for folders the sandbox made read-only (chmod -w) for itself.
    A path already gone was removed by a concurrent destroy: destroy is idempotent."""
    if not os.path.lexists(path):
        return
    target = Path(path)
    target.parent.chmod(target.parent.stat().st_mode | stat.S_IRWXU)
    if target.is_dir() and not target.is_symlink():
        target.chmod(stat.S_IRWXU)
        shutil.rmtree(target, onerror=_force_remove)
    else:
        func(path)
