"""The ``qemu`` provider: each sandbox is a virtual machine run by a small detached supervisor.

A VM boots its template's kernel on a copy-on-write overlay of the template's disk, plus the
guest disk of this hivecell (the agent; see guestfiles.py), and talks to the host only over
its agent port (see supervisor.py). State lives under ``home/vms`` one folder per sandbox
(layout.py), like local boxes: VMs outlive the process that created them, and any process
with the same home can list, connect to, stop and destroy them.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from anyio import to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivecell.errors import ConfigError, GuestUnavailable, SandboxError, SandboxNotFound, Timeout
from hivecell.sandbox import natplan, supervised, transfer
from hivecell.sandbox.base import (
    NetworkConnection,
    SandboxInfo,
    SandboxSpec,
    SandboxUsage,
    SnapshotInfo,
)
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local import hostfilter, netlog, uidpool
from hivecell.sandbox.local.pyruntime import PythonRuntime
from hivecell.sandbox.local.zygote import client as zygote_client
from hivecell.sandbox.local.zygote import launch as zygote_launch
from hivecell.sandbox.qemu import accel, guestfiles, ops, ramfile, snapshots, vm, warm
from hivecell.sandbox.qemu.layout import SHARED_FOLDERS, SUPERVISOR_MODULE, VmLayout
from hivecell.sandbox.qemu.saverequest import SaveRequest
from hivecell.sandbox.qemu.template import DEFAULT_NAME, Template, TemplateStore, private_folder
from hivecell.sandbox.qemu.warm import WarmState

STOP_TIMEOUT = 15.0
SAFE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the supervisor's: never the caller's environment
SHUTDOWN_TIMEOUT = 30.0  # a clean guest power-off under TCG on a loaded host
QEMU = "qemu-system-x86_64"
_VALID_ID = re.compile(r"^vm-[0-9a-f]{8}$")
MAX_SOCKET_PATH = 107
GUEST_UID = 1000  # the sandbox user in every template
VIRTIOFSD_PATHS = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd")


class VmMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    info: SandboxInfo
    template: str
    accel: str = ""
    accel_reason: str = ""
    supervisor_pid: int | None = None
    guest_version: str = Field("", description="the guest disk's agent at the last start")
    shared: bool = Field(True, description="/shared is served (not in a warm-state VM)")
    warm: str | None = Field(None, description="the warm state it was created from")
    qemu_uid: int | None = Field(
        None, description="the host uid QEMU runs as (uidpool; when hivecell runs as root)"
    )


class QemuProvider:
    """Sandboxes as QEMU virtual machines (KVM when it works, else TCG)."""

    name = "qemu"

    def __init__(
        self,
        home: Path,
        *,
        template: str = DEFAULT_NAME,
        templates_dir: Path | None = None,
        boot_timeout: float = 180.0,
        qemu: str = QEMU,
        cache_dir: Path | None = None,
        warm: bool = True,
        dns_servers: builtins.list[str] | None = None,
        zygote: bool = True,
        zygote_dir: Path | None = None,
    ) -> None:
        """``templates_dir``: where templates are (default ``home/templates``);
        ``boot_timeout``: how long a VM may take to answer its first ping (TCG boots take
        ~15 s on an idle 2-core host, much longer when it is loaded); ``cache_dir``: the
        KVM probe's answer and the guest disk (default ``home/qemu``), shareable by homes;
        ``warm``: start VMs from their template's warm state (see warm.py), else boot each;
        ``dns_servers``: the resolvers a ``nat`` VM's DNS asks (default: the host's);
        ``zygote``: fork supervisors from the host's supervisor server (as root only),
        whose socket is in ``zygote_dir`` (default /run/hivecell/zygote, host-wide)."""
        self.home = Path(home)
        self.template = template
        self.templates = TemplateStore(templates_dir or self.home / "templates")
        self.boot_timeout = boot_timeout
        self.qemu = qemu
        self.cache_dir = cache_dir or self.home / "qemu"
        self.warm = warm
        self.dns_servers = dns_servers
        self.zygote = zygote
        self.zygote_dir = zygote_dir or zygote_launch.FOLDER
        self._supervisors: dict[str, object] | None = None

    # --- the provider protocol ----------------------------------------------------------------
    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """From the template's warm state for this shape (made by the shape's first create,
        which boots), or by a boot when ``warm`` is off."""
        template = await to_thread.run_sync(self._refuse_impossible, spec)
        choice = await to_thread.run_sync(accel.choose, template.kernel, self.cache_dir)
        start_from = await self._warm_state(template, spec, choice) if self.warm else None
        layout, meta = await to_thread.run_sync(self._prepare, spec, template, choice, start_from)
        await self._launch_new(layout, meta, start_from.state if start_from else None)
        return await self.info(layout.sandbox_id)

    async def start(self, sandbox_id: str) -> SandboxInfo:
        layout, meta = await self._load(sandbox_id)
        if not _alive(layout, meta.supervisor_pid):
            await self._launch(layout, meta)
        return await self.info(sandbox_id)

    async def stop(self, sandbox_id: str) -> SandboxInfo:
        """The guest shuts down cleanly first (its page cache reaches the disk); a guest
        that does not within SHUTDOWN_TIMEOUT is powered off like a pulled plug."""
        layout, meta = await self._load(sandbox_id)
        if await to_thread.run_sync(_alive, layout, meta.supervisor_pid):
            await _shut_down(layout, meta.supervisor_pid)
        await to_thread.run_sync(_stop, layout, meta.supervisor_pid)
        return await self.info(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        layout = self._layout(sandbox_id, op="destroy")
        await to_thread.run_sync(self._destroy_sync, layout)

    async def connect(self, sandbox_id: str) -> GuestClient:
        return supervised.client(await self.info(sandbox_id))

    async def info(self, sandbox_id: str) -> SandboxInfo:
        layout, meta = await self._load(sandbox_id)
        return await to_thread.run_sync(_current, layout, meta)

    async def list(self) -> builtins.list[SandboxInfo]:
        return await to_thread.run_sync(self._list_sync)

    async def freeze(self, sandbox_id: str, frozen: bool) -> bool:
        """Pauses the whole VM (its QEMU process) with SIGSTOP / SIGCONT."""
        layout, meta = await self._load(sandbox_id)
        return await to_thread.run_sync(_freeze, layout, meta.supervisor_pid, frozen)

    async def network_log(self, sandbox_id: str) -> builtins.list[NetworkConnection]:
        layout, _ = await self._load(sandbox_id)
        rows = await to_thread.run_sync(netlog.read, layout.network_log)
        return [NetworkConnection.model_validate(row) for row in rows]

    async def usage(self, sandbox_id: str) -> SandboxUsage:
        layout, meta = await self._load(sandbox_id)
        return await to_thread.run_sync(_usage, layout, meta)

    # --- snapshots (the Snapshotting protocol) ----------------------------------------------
    async def snapshot(self, sandbox_id: str, name: str) -> SnapshotInfo:
        layout, meta = await self._load(sandbox_id)
        async with _exclusive(layout):
            await self._require_running(layout, meta, "snapshot")
            final, scratch = await to_thread.run_sync(snapshots.new, layout, name)
            try:
                save = SaveRequest(op="save", state=str(scratch.state), disk=str(scratch.disk))
                await ops.request(layout.ops_socket, save)
                record = await to_thread.run_sync(
                    snapshots.keep, scratch, final, self._guest_disk_of(meta)
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(shutil.rmtree, scratch.root, True)
        return await to_thread.run_sync(final.info, sandbox_id, record)

    async def restore(self, sandbox_id: str, name: str) -> SandboxInfo:
        """What the VM did since the snapshot is dropped (it is stopped hard, not shut down);
        /shared stays as it is on the host."""
        layout, meta = await self._load(sandbox_id)
        async with _exclusive(layout):
            snapshot, guest_disk = await to_thread.run_sync(snapshots.restorable, layout, name)
            await to_thread.run_sync(_stop, layout, meta.supervisor_pid)
            await to_thread.run_sync(snapshots.copy_disk, snapshot.disk, layout.disk)
            await self._launch(layout, meta, snapshot.state, guest_disk)
        return await self.info(sandbox_id)

    async def fork(self, sandbox_id: str) -> SandboxInfo:
        layout, meta = await self._load(sandbox_id)
        async with _exclusive(layout):
            await self._require_running(layout, meta, "fork")
            child, child_meta = await to_thread.run_sync(self._prepare_fork, meta)
            incoming = child.root / "incoming.bin"
            try:
                save = SaveRequest(op="save", state=str(incoming), disk=str(child.disk))
                await ops.request(layout.ops_socket, save)
                await to_thread.run_sync(_copy_shared, layout, child)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await to_thread.run_sync(shutil.rmtree, child.root, True)
                raise
        try:
            await self._launch_new(child, child_meta, incoming, self._guest_disk_of(meta))
        finally:
            incoming.unlink(missing_ok=True)  # loaded by now (or never will be)
            ramfile.path_for(incoming).unlink(missing_ok=True)
        return await self.info(child.sandbox_id)

    async def snapshots(self, sandbox_id: str) -> builtins.list[SnapshotInfo]:
        layout, _ = await self._load(sandbox_id)
        return await to_thread.run_sync(snapshots.listing, layout)

    async def delete_snapshot(self, sandbox_id: str, name: str) -> None:
        layout, _ = await self._load(sandbox_id)
        async with _exclusive(layout):
            await to_thread.run_sync(snapshots.delete, layout, name)

    async def _require_running(self, layout: VmLayout, meta: VmMeta, op: str) -> None:
        if not await to_thread.run_sync(_alive, layout, meta.supervisor_pid):
            raise SandboxError(
                f"sandbox {layout.sandbox_id} is not running; start it first",
                op=op,
                context={"id": layout.sandbox_id},
            )

    def _guest_disk_of(self, meta: VmMeta) -> Path:
        return self.cache_dir / f"guest-{meta.guest_version}.img"

    def _prepare_fork(self, parent: VmMeta) -> tuple[VmLayout, VmMeta]:
        child = self._new_layout()
        try:
            child.sockets.mkdir(mode=0o700)
            _make_shared(child)
            if parent.warm:  # its disk, a copy of the parent's, stands on that warm state
                template = self.templates.get(parent.template)
                warm.state_for(template, parent.warm).register(child.root)
        except BaseException:
            shutil.rmtree(child.root, ignore_errors=True)
            raise
        info = parent.info.model_copy(
            update={
                "id": child.sandbox_id,
                "status": "stopped",
                "created_at": time.time(),
                "endpoint": f"unix:{child.guest_socket}",
                "shared_dir": str(child.shared),
                "guest_socket": str(child.guest_socket),
                "vnc_endpoint": f"unix:{child.vnc_socket}",
            }
        )
        meta = parent.model_copy(update={"info": info, "supervisor_pid": None})
        _save(child, meta)
        return child, meta

    # --- creating and starting -----------------------------------------------------------------
    def _refuse_impossible(self, spec: SandboxSpec) -> Template:
        if spec.provider not in (None, self.name):
            raise ConfigError(
                f"this spec asks for provider {spec.provider!r}, not 'qemu'",
                op="create",
                context={"provider": spec.provider},
            )
        if shutil.which(self.qemu) is None:
            raise ConfigError(
                f"the qemu provider needs {self.qemu}: sudo apt-get install -y "
                "qemu-system-x86 qemu-utils",
                op="create",
            )
        _virtiofsd()
        natplan.require_host_filter(spec.network)
        if spec.network == "nat" and shutil.which("slirp4netns") is None:
            raise ConfigError(
                "--network nat needs slirp4netns: sudo apt-get install -y slirp4netns; "
                "otherwise use --network offline (no network)",
                op="create",
                context={"network": "nat"},
            )
        return self.templates.get(self.template)

    def _prepare(
        self,
        spec: SandboxSpec,
        template: Template,
        choice: accel.AccelChoice,
        start_from: WarmState | None,
    ) -> tuple[VmLayout, VmMeta]:
        layout = self._new_layout()
        try:
            _make_shared(layout)
            layout.sockets.mkdir(mode=0o700)
            if start_from is None:
                _make_overlay(template.disk, layout.disk, _template_size(template, spec))
            else:
                _overlay_on_warm(template, start_from, layout)
        except BaseException:
            shutil.rmtree(layout.root, ignore_errors=True)
            raise
        info = SandboxInfo(
            id=layout.sandbox_id,
            provider=self.name,
            status="stopped",
            spec=spec,
            created_at=time.time(),
            endpoint=f"unix:{layout.guest_socket}",
            shared_dir=str(layout.shared),
            guest_socket=str(layout.guest_socket),
            vnc_endpoint=f"unix:{layout.vnc_socket}",
            host_uid=os.getuid(),
        )
        meta = VmMeta(
            info=info,
            template=self.template,
            accel=choice.accel,
            accel_reason=choice.reason,
            warm=start_from.root.name if start_from else None,
        )
        _save(layout, meta)
        return layout, meta

    # --- warm states ---------------------------------------------------------------------------
    async def _warm_state(
        self, template: Template, spec: SandboxSpec, choice: accel.AccelChoice
    ) -> WarmState:
        """This shape's warm state; the first caller boots a VM and saves it, the others
        wait for that (a lock per state) and use it."""
        disk = await to_thread.run_sync(guestfiles.guest_disk, self.cache_dir)
        version = disk.stem.removeprefix("guest-")
        warm_key = warm.key(template, spec, choice.accel, version)
        target = warm.state_for(template, warm_key)
        if await to_thread.run_sync(target.usable):
            return target
        lock = warm.locked(template, warm_key)
        await to_thread.run_sync(lock.__enter__)
        try:
            if not await to_thread.run_sync(target.usable):
                await to_thread.run_sync(shutil.rmtree, target.root, True)
                await self._build_warm(template, spec, choice, target, version)
                built = True
            else:
                built = False
        finally:
            lock.__exit__(None, None, None)
        if built:  # a new agent version's first: older versions' states may go
            await to_thread.run_sync(warm.prune, template, version)
        return target

    async def _build_warm(
        self,
        template: Template,
        spec: SandboxSpec,
        choice: accel.AccelChoice,
        target: WarmState,
        version: str,
    ) -> None:
        started = time.monotonic()
        layout = VmLayout(warm.scratch(template, target.root.name))
        layout.root.mkdir(mode=0o700, parents=True)
        layout.sockets.mkdir(mode=0o700)
        info = SandboxInfo(
            id=layout.sandbox_id, provider=self.name, status="stopped", spec=spec,
            created_at=time.time(), endpoint=f"unix:{layout.guest_socket}",
            shared_dir=str(layout.shared),
        )  # fmt: skip
        meta = VmMeta(
            info=info,
            template=self.template,  # its name here (a home may link a template under another)
            accel=choice.accel,
            accel_reason=choice.reason,
            shared=False,  # virtio-fs cannot be saved; each clone plugs its own in
        )
        try:
            await to_thread.run_sync(
                _make_overlay, template.disk, layout.disk, _template_size(template, spec)
            )
            await self._launch(layout, meta)
            state = layout.root / "state.bin"
            save = SaveRequest(op="save", state=str(state), then="quit", drop_caches=True)
            await ops.request(layout.ops_socket, save)
            await to_thread.run_sync(_stop, layout, meta.supervisor_pid)
            seconds = time.monotonic() - started
            await to_thread.run_sync(
                warm.keep, layout.root, layout.disk, state, target, seconds, version
            )
        finally:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(_stop, layout, meta.supervisor_pid)
                await to_thread.run_sync(_release_uid, layout, meta)
                await to_thread.run_sync(shutil.rmtree, layout.root, True)

    def _new_layout(self) -> VmLayout:
        while True:
            layout = VmLayout.of(self.home, "vm-" + secrets.token_hex(4))
            if len(str(layout.serial_socket).encode()) > MAX_SOCKET_PATH:
                raise ConfigError(
                    f"sandbox home {self.home} is too long for unix socket paths; use a "
                    "shorter HIVECELL_HOME",
                    op="create",
                )
            layout.root.parent.mkdir(parents=True, exist_ok=True)
            try:
                layout.root.mkdir(mode=0o700)  # QEMU's own uid may not enter (vm.py)
            except FileExistsError:
                continue
            return layout

    async def _launch_new(
        self,
        layout: VmLayout,
        meta: VmMeta,
        incoming: Path | None = None,
        guest_disk: Path | None = None,
    ) -> None:
        """``_launch`` for a sandbox being made: one cancelled is removed; one that did not
        start stays for inspection, its id in the error."""
        try:
            await self._launch(layout, meta, incoming, guest_disk)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(self._destroy_sync, layout)
            raise
        except SandboxError as exc:
            exc.context.setdefault("id", layout.sandbox_id)
            raise

    async def _launch(
        self,
        layout: VmLayout,
        meta: VmMeta,
        incoming: Path | None = None,
        guest_disk: Path | None = None,
    ) -> None:
        """Boot the VM, or with ``incoming`` resume it from that saved state (whose agent
        needs the ``guest_disk`` it ran with)."""
        pid = await to_thread.run_sync(self._spawn, layout, meta, incoming, guest_disk)
        try:
            await self._wait_until_ready(layout, pid)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await to_thread.run_sync(_stop, layout, pid)
            raise

    def _spawn(
        self, layout: VmLayout, meta: VmMeta, incoming: Path | None, guest_disk: Path | None
    ) -> int:
        template = self.templates.get(meta.template)
        guest_disk = guest_disk or guestfiles.guest_disk(self.cache_dir)
        if meta.shared:
            transfer.ensure_folder(layout.shared, "inbox", None)
        runas = _qemu_uid(layout, meta)
        if runas is not None:  # stores made before QEMU dropped root may be open to all
            private_folder(template.root.resolve().parent)
        argv = vm.command(
            layout,
            template,
            meta.info.spec,
            meta.accel or "tcg",
            shutil.which(self.qemu) or "",
            incoming=incoming is not None,
            runas=runas,
        )
        argv += ["-drive", f"file={guest_disk},if=virtio,format=raw,readonly=on"]
        if runas is not None:
            argv = vm.under_own_init(argv, _tool("unshare"), _tool("sh"))
        spec = meta.info.spec
        # A warm state's VM (no /shared) gets a namespace of its own but no way out.
        nat = spec.network == "nat" and meta.shared
        plan = {
            "argv": argv,
            "own_init": runas is not None,
            "network": spec.network,
            "netns": spec.network == "nat",
            "nat": natplan.plan(spec.network_allow, self.dns_servers) if nat else None,
            "nft": hostfilter.find_nft(),
            "slirp4netns": shutil.which("slirp4netns"),
            "virtiofsd": vm.virtiofsd_command(layout, _virtiofsd()) if meta.shared else [],
            "incoming": str(incoming) if incoming else None,
            "boot_timeout": self.boot_timeout,
            "memory_mb": meta.info.spec.memory_mb or 4096,
        }
        layout.plan.write_text(json.dumps(plan))
        layout.exit.unlink(missing_ok=True)
        pid = self._start_supervisor(layout)
        meta.supervisor_pid = pid
        meta.guest_version = guest_disk.stem.removeprefix("guest-")
        _save(layout, meta)
        return pid

    def _start_supervisor(self, layout: VmLayout) -> int:
        """Forked by the host's supervisor server (local boxes' too: zygote/supervisors.py),
        which has its imports done (~60 ms of a warm start); else a Python of its own."""
        return zygote_client.start_or_spawn(
            self._supervisors_plan(), SUPERVISOR_MODULE, layout.root, layout.log,
            kind="qemu", env={"PATH": SAFE_PATH},
        )  # fmt: skip

    def _supervisors_plan(self) -> dict[str, object] | None:
        if not self.zygote:
            return None
        if self._supervisors is None:  # its key walks every source file: once
            self._supervisors = zygote_launch.supervisors_plan(
                PythonRuntime.detect(), folder=self.zygote_dir
            )
        return self._supervisors

    async def _wait_until_ready(self, layout: VmLayout, pid: int) -> None:
        deadline = anyio.current_time() + self.boot_timeout
        while not await supervised.pings(layout.guest_socket):
            if not await to_thread.run_sync(_alive, layout, pid):
                last = await to_thread.run_sync(supervised.read_exit, layout.exit)
                raise await _boot_failed(layout, str(last.get("detail", "it exited")))
            if anyio.current_time() > deadline:
                why = f"no answer within {self.boot_timeout:.0f} s"
                await to_thread.run_sync(_stop, layout, pid)
                await to_thread.run_sync(layout.record_exit, "error", f"did not boot: {why}")
                raise await _boot_failed(layout, why)
            await anyio.sleep(0.2)  # a VM boots in seconds: no need to poll hard

    # --- destroying and reading ----------------------------------------------------------------
    def _destroy_sync(self, layout: VmLayout) -> None:
        if not layout.root.is_dir():
            raise SandboxNotFound(f"no sandbox {layout.sandbox_id} in {self.home}", op="destroy")
        meta = _load(layout)
        _stop(
            layout, meta.supervisor_pid if meta else supervised.find(SUPERVISOR_MODULE, layout.root)
        )
        _release_uid(layout, meta)  # the pool skips a uid a process still runs as
        shutil.rmtree(layout.root)

    def _layout(self, sandbox_id: str, *, op: str) -> VmLayout:
        if not _VALID_ID.match(sandbox_id):
            raise SandboxNotFound(f"{sandbox_id!r} is not a VM sandbox id", op=op)
        return VmLayout.of(self.home, sandbox_id)

    async def _load(self, sandbox_id: str) -> tuple[VmLayout, VmMeta]:
        layout = self._layout(sandbox_id, op="load")
        meta = await to_thread.run_sync(_load, layout)
        if meta is None:
            raise SandboxNotFound(
                f"no sandbox {sandbox_id} in {self.home}; list shows the existing ones",
                op="load",
                context={"id": sandbox_id},
            )
        return layout, meta

    def _list_sync(self) -> builtins.list[SandboxInfo]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for folder in sorted((self.home / "vms").iterdir()):
                layout = VmLayout(folder)
                meta = _load(layout) if _VALID_ID.match(folder.name) else None
                if meta is not None:
                    found.append(_current(layout, meta))
        return sorted(found, key=lambda info: info.created_at)


@contextlib.asynccontextmanager
async def _exclusive(layout: VmLayout) -> AsyncIterator[None]:
    """One snapshot, restore or fork of a VM at a time, whichever process asks."""
    fd = os.open(layout.root / ".ops.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await to_thread.run_sync(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_shared(layout: VmLayout) -> None:
    """/shared's folders; virtio-fs maps uids 1:1, so the guest's user (uid 1000) owns what
    it writes to (the guest would chown them itself, slowly, after every restore)."""
    for folder in SHARED_FOLDERS:
        (layout.shared / folder).mkdir(parents=True)
        if folder != "inbox":
            os.chown(layout.shared / folder, GUEST_UID, GUEST_UID)


def _copy_shared(parent: VmLayout, child: VmLayout) -> None:
    """A fork's /shared starts as a copy of its parent's (no-follow: what the parent's guest
    planted there is left out, as when files are collected)."""
    limits = transfer.TransferLimits(max_bytes=1 << 40, max_files=1_000_000)
    for folder in SHARED_FOLDERS:
        transfer.copy_out(parent.shared, folder, child.shared / folder, limits)
        if folder != "inbox":  # the child's user edits its copies as the parent's did
            for root, dirs, files in os.walk(child.shared / folder):
                for name in dirs + files:
                    os.lchown(Path(root) / name, GUEST_UID, GUEST_UID)


def _virtiofsd() -> str:
    for candidate in (shutil.which("virtiofsd"), *VIRTIOFSD_PATHS):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "qemu sandboxes share /shared through virtiofsd, which is missing: "
        "sudo apt-get install -y qemu-system-x86 (Debian 12) or virtiofsd",
        op="create",
    )


def _template_size(template: Template, spec: SandboxSpec) -> int:
    """The template's filesystem plus the sandbox's disk allowance."""
    return _virtual_size(template.disk) + ((spec.disk_mb or 4096) << 20)


def _overlay_on_warm(template: Template, start_from: WarmState, layout: VmLayout) -> None:
    """An overlay on the warm state's frozen disk (which has the size already), registered
    as one of its users under its lock, so no pruning removes it from under the VM."""
    with warm.locked(template, start_from.root.name, shared=True):
        if not start_from.record.is_file():
            raise SandboxError(
                "the warm state for this shape was pruned by another hivecell meanwhile; "
                "create it again (it will be rebuilt)",
                op="create",
                retryable=True,
            )
        _make_overlay(start_from.disk, layout.disk, _virtual_size(start_from.disk))
        start_from.register(layout.root)


def _make_overlay(backing: Path, disk: Path, size: int) -> None:
    """A qcow2 overlay on ``backing`` (no copy); its size caps what the VM can write. The
    backing file is named by its real path: a template reached through a link (a home
    sharing another's templates) must not leave overlays that die with that link."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
         str(backing.resolve()), str(disk), str(size)],
        check=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _virtual_size(image: Path) -> int:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(image)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    ).stdout
    return int(json.loads(out)["virtual-size"])


async def _shut_down(layout: VmLayout, pid: int | None) -> None:
    if pid is None:
        return
    try:
        exited = os.pidfd_open(pid)  # readable once the supervisor (and so the VM) is gone
    except ProcessLookupError:
        return
    try:
        with anyio.move_on_after(SHUTDOWN_TIMEOUT):
            try:
                async with GuestClient(f"unix:{layout.guest_socket}", connect_timeout=2) as guest:
                    await guest.call("shutdown", timeout=5)
            except (GuestUnavailable, Timeout, TimeoutError):
                return  # not answering (frozen, hung): the caller pulls the plug
            await anyio.wait_readable(exited)
    finally:
        os.close(exited)


async def _boot_failed(layout: VmLayout, why: str) -> SandboxError:
    tail = await to_thread.run_sync(supervised.log_tail, layout.log, 20)
    return SandboxError(
        f"VM sandbox {layout.sandbox_id} did not start: {why}. Log {layout.log} ends with:\n"
        f"{tail}\n(remove it with destroy once inspected)",
        op="create",
        context={"id": layout.sandbox_id, "log": str(layout.log)},
    )


def _alive(layout: VmLayout, pid: int | None) -> bool:
    return supervised.alive(SUPERVISOR_MODULE, layout.root, pid)


def _stop(layout: VmLayout, pid: int | None) -> None:
    """Returns once the VM's every process is gone (its log copier and slirp4netns
    included), and so is its entry in the host filter (a killed supervisor leaves it)."""
    if pid is not None and _alive(layout, pid):
        below = supervised.descendants(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            if not supervised.wait_gone(SUPERVISOR_MODULE, layout.root, pid, STOP_TIMEOUT):
                os.kill(pid, signal.SIGKILL)  # QEMU and slirp4netns die with it
                supervised.wait_gone(SUPERVISOR_MODULE, layout.root, pid, STOP_TIMEOUT)
        if not supervised.wait_all_gone(below, STOP_TIMEOUT):
            return  # something of it still runs: its sockets must stay filtered
    natplan.leave_host_filter(layout.plan, layout.sandbox_id)


def _qemu_uid(layout: VmLayout, meta: VmMeta) -> int | None:
    """The VM's own uid for QEMU, claimed at its first start (None: we are not root, and
    QEMU runs as us). Kept while the VM exists; destroy gives it back."""
    if os.geteuid() != 0:
        return None
    if meta.qemu_uid is None:
        try:
            meta.qemu_uid = uidpool.allocate(layout.root.resolve())
        except uidpool.PoolExhausted as exc:
            raise SandboxError(str(exc), op="start", retryable=True) from exc
    return meta.qemu_uid


def _release_uid(layout: VmLayout, meta: VmMeta | None) -> None:
    if meta is not None and meta.qemu_uid is not None:
        uidpool.release(meta.qemu_uid, layout.root.resolve())


def _tool(name: str) -> str:
    found = shutil.which(name, path=SAFE_PATH)
    if found is None:
        raise ConfigError(f"{name} is not installed; it is part of util-linux / dash")
    return found


def _freeze(layout: VmLayout, pid: int | None, frozen: bool) -> bool:
    if pid is None or not _alive(layout, pid):
        return False
    qemu = vm.find_qemu(pid)
    if qemu is None:
        return False
    os.kill(qemu, signal.SIGSTOP if frozen else signal.SIGCONT)
    return True


def _usage(layout: VmLayout, meta: VmMeta) -> SandboxUsage:
    cpu = rss = pss = 0.0
    processes = 0
    pid = meta.supervisor_pid
    if pid is not None and _alive(layout, pid):
        for one in filter(None, [pid, vm.find_qemu(pid)]):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                rollup = Path(f"/proc/{one}/smaps_rollup").read_text()
                rss += _kb(rollup, "Rss:") / 1024
                pss += _kb(rollup, "Pss:") / 1024
                processes += 1
    disk = layout.disk.stat().st_blocks * 512 if layout.disk.exists() else 0
    return SandboxUsage(
        sandbox_id=layout.sandbox_id,
        time=time.time(),
        cpu_seconds=cpu,
        memory_rss_mb=rss,
        memory_pss_mb=pss,
        disk_used_mb=disk / (1 << 20),
        processes=processes,
    )


def _kb(rollup: str, key: str) -> int:
    for line in rollup.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def _load(layout: VmLayout) -> VmMeta | None:
    try:
        return VmMeta.model_validate_json(layout.meta.read_bytes())
    except (OSError, ValidationError):
        return None


def _save(layout: VmLayout, meta: VmMeta) -> None:
    tmp = layout.meta.with_suffix(".tmp")
    tmp.write_text(meta.model_dump_json(indent=2))
    tmp.replace(layout.meta)


def _current(layout: VmLayout, meta: VmMeta) -> SandboxInfo:
    detail = f"VM ({meta.accel}: {meta.accel_reason}); template {meta.template}"
    if _alive(layout, meta.supervisor_pid):
        if meta.guest_version != guestfiles.guest_version():
            detail += (
                "; its guest agent is another hivecell's (started before an upgrade): stop "
                "and start it to run this one's"
            )
        return meta.info.model_copy(update={"status": "running", "detail": detail})
    last = supervised.read_exit(layout.exit)
    status = "error" if last.get("status") == "error" else "stopped"
    detail = "; ".join(str(x) for x in (last.get("detail"), detail) if x)
    return meta.info.model_copy(update={"status": status, "detail": detail})
