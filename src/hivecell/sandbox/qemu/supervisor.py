"""``python -m hivecell.sandbox.qemu.supervisor DIR PIDFD``: keeps one VM running.

Started detached by the qemu provider so the VM outlives the CLI that created it (as local
boxes do). It runs QEMU as its child (QEMU dies with it: ``PR_SET_PDEATHSIG``), holds the
host end of the guest agent's virtio-serial port for the VM's whole life, and serves
``guest.sock`` and ``vnc.sock``: every connection there becomes one channel of the stream
multiplexer on that port (``hivecell.protocol.mux``), so any number of clients and viewers
share the one port. It exits when QEMU does; SIGTERM stops the VM.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio import to_thread
from anyio.abc import ByteStream, Listener
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from qemu.qmp import EventListener, QMPClient, QMPError

from hivecell.errors import GuestProtocolError, SandboxError
from hivecell.protocol import unixstream
from hivecell.protocol.framing import FrameReader, FrameWriter
from hivecell.protocol.mux import Mux
from hivecell.sandbox import muxproxy
from hivecell.sandbox.local import network
from hivecell.sandbox.local.hostfilter import HostFilter
from hivecell.sandbox.local.supervisor import cap_output, detach, log
from hivecell.sandbox.qemu import machine, ramfile, vm
from hivecell.sandbox.qemu.guestctl import GuestControl
from hivecell.sandbox.qemu.layout import VmLayout
from hivecell.sandbox.qemu.ops import serve_ops

if TYPE_CHECKING:  # pydantic: imported by the first save request, not at every start
    from hivecell.sandbox.qemu.saverequest import SaveRequest

# spelled out, not jsonrpc.request_message(): that module brings pydantic into every start
FIRST_PING = {"jsonrpc": "2.0", "id": 0, "method": "ping", "params": {}}
FIRST_PING_TIMEOUT = 10.0
LOG_CAP_BYTES = 16 << 20
SERIAL_CONNECT_TIMEOUT = 30.0  # QEMU creates its socket within milliseconds of starting
STOP_GRACE = 5.0
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
# Before a warm state is saved, the balloon is inflated towards this: the pages the guest
# gives up become holes in its RAM, which its clones then neither copy nor hold.
SQUEEZE_FLOOR_MB = 256
SQUEEZE_TIMEOUT = 60.0
FILTER_CHECK_SECONDS = 2.0  # how long a flushed host filter may stay missing
CLONE_NEWNET = 0x40000000
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
DNS_LISTEN = ("127.0.0.1", 53)  # QEMU's user network maps the guest's gateway here


class Vm:
    def __init__(self, layout: VmLayout, plan: dict[str, object]) -> None:
        self.layout = layout
        self.argv = [str(a) for a in plan["argv"]]  # type: ignore[attr-defined]
        self.virtiofsd = [str(a) for a in plan.get("virtiofsd") or []]  # type: ignore[attr-defined]
        incoming = plan.get("incoming")
        self.incoming = Path(str(incoming)) if incoming else None
        self.boot_timeout = float(plan.get("boot_timeout") or 180.0)  # type: ignore[arg-type]
        self.memory_mb = int(plan.get("memory_mb") or 4096)  # type: ignore[call-overload]
        self.ram = -1  # the guest's RAM, shared with QEMU (ramfile.py)
        self.plan = plan
        self.network: network.Network | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMPClient | None = None
        self.control: GuestControl | None = None
        self.shared_on = False
        self.ops_lock = anyio.Lock()
        self.helpers: list[subprocess.Popen[bytes]] = []
        self.groups: set[int] = set()  # process groups of the helpers ever started
        self.stopping = False
        self.failure: str | None = None  # why the supervisor stopped the VM itself
        self.ready = anyio.Event()  # the guest is up: clients and requests are let in

    def run(self) -> int:
        listeners = _bind(self.layout)
        try:
            self.ram = ramfile.make(self.memory_mb)
            # QEMU that runs as a uid of its own gets the disk it could not open (vm.py)
            disk_fds = _open_disk(self.layout.disk) if self.plan.get("own_init") else []
            try:
                # QEMU's stdio is the guest's console. Never our own stdout: QEMU makes its
                # stdio non-blocking, which would break the log's copier sharing that pipe.
                self.proc = subprocess.Popen(
                    self.argv
                    + vm.memory_options(self.ram, self.memory_mb)
                    + _fdset_options(disk_fds, vm.DISK_FDSET),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_in_own_network if self.plan.get("netns") else _die_with_parent,
                    env={},
                    pass_fds=[self.ram, *disk_fds],
                )
            finally:
                for fd in disk_fds:
                    os.close(fd)
            self._connect_network()
            link = _connect_serial(self.layout.serial_socket, self.proc)
            if link is not None:
                anyio.run(self._serve, link, listeners)
        except OSError as exc:
            self.failure = f"cannot run the VM: {exc}"
            log(self.failure)
        finally:
            for sock in listeners.values():
                sock.close()
        return self._finish(self._reap())

    def _connect_network(self) -> None:
        """A ``nat`` VM's QEMU (paused until the guest is up) gets slirp4netns, its entry in
        the host filter and our DNS in its namespace; raises OSError with nothing left."""
        nat = self.plan.get("nat")
        if not nat:
            return  # offline, or a warm state's VM: a namespace of its own with no way out
        assert self.proc is not None
        host_filter = HostFilter(str(self.plan["nft"]))
        self.network = network.Network(
            str(self.plan["slirp4netns"]), host_filter, self.layout.sandbox_id,
            nat, self.layout.network_log, dns_listen=DNS_LISTEN,  # type: ignore[arg-type]
        )  # fmt: skip
        try:
            self.network.start(self.proc.pid)
        except BaseException:
            self.network = None
            raise
        log(f"network: nat, host filter group {self.network.gid}")

    async def _keep_filter(self) -> None:
        """Put the host filter back should it be flushed, log the flows; fail closed."""
        assert self.network is not None
        while True:
            await anyio.sleep(FILTER_CHECK_SECONDS)
            try:
                if await to_thread.run_sync(self.network.check):
                    log("the host filter had been removed (a ruleset flush?); put it back")
            except OSError as exc:
                self.failure = f"cannot put the host filter back: {exc}"
                log(f"stopping the VM: {self.failure}")
                self._terminate()
                return

    def _start_virtiofsd(self) -> None:
        """The /shared file server (one per attach: it exits when QEMU lets go of it)."""
        self._stop_helpers()
        self.layout.virtiofs_socket.unlink(missing_ok=True)
        proc = subprocess.Popen(
            self.virtiofsd,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            env={},
            process_group=0,  # its forked child too: _reap_stragglers finds them by group
        )
        self.groups.add(proc.pid)
        self.helpers.append(proc)
        deadline = time.monotonic() + SERIAL_CONNECT_TIMEOUT
        while not self.layout.virtiofs_socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SandboxError(
                    f"virtiofsd did not start (exit {proc.poll()}); /shared cannot be served",
                    op="start",
                )
            time.sleep(0.01)

    def _stop_helpers(self) -> None:
        for helper in self.helpers:
            if helper.poll() is None:
                helper.terminate()
            try:
                helper.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        self.helpers.clear()

    # --- bringing the machine up, and saving its state -------------------------------------
    async def _bring_up(self) -> None:
        """Load a saved state or boot; plug /shared in; resume; get the guest ready. The
        saved RAM is copied in and virtiofsd started while QEMU starts (it writes no guest
        RAM before a state comes in)."""
        async with anyio.create_task_group() as beside:
            if self.incoming is not None:
                beside.start_soon(to_thread.run_sync, self._fill_ram)
            if self.virtiofsd:
                beside.start_soon(to_thread.run_sync, self._start_virtiofsd)
            await to_thread.run_sync(_wait_for, self.layout.qmp_socket, self.proc)
            qmp = self.qmp = await machine.connect(self.layout.qmp_socket, self.layout.sandbox_id)
            await to_thread.run_sync(_wait_for, self.layout.control_socket, self.proc)
            control = self.control = GuestControl(
                await machine.connect_when_listening(
                    self.layout.control_socket, "QEMU's control port"
                )
            )
        if self.incoming is not None:
            await machine.load_state(qmp, self.incoming)
            log("state loaded")
        await self._plug_shared()  # its virtiofsd started beside QEMU
        await machine.resume(qmp)
        log("running")
        if self.incoming is None:
            await control.wait_ready(self.boot_timeout)
            await self._mount()

    async def _come_back(self, mux: Mux) -> None:
        """A restored guest, before any client is let in (``muxproxy.proxy``'s ``admit``):
        the present time, its own name and randomness, /shared. Its agent's first ping goes
        meanwhile, on a channel of our own: under emulation a restored guest's code is
        translated afresh, which the first client would otherwise wait for after these
        (~40 ms here)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(_first_ping, mux)
            failure = await self._renew()
        if failure is not None:
            self._fail(f"the VM did not come up: {failure}")
            await anyio.sleep_forever()  # nobody is let in; the link ends with QEMU
        self._admitted()

    async def _renew(self) -> str | None:
        """Why the restored guest could not be brought into the present, if it could not
        (returned, not raised: a task group would wrap it)."""
        assert self.control is not None
        try:
            await self.control.come_back(self.layout.sandbox_id, time.time())
            log("clock, hostname and randomness renewed")
            await self._mount()
        except (SandboxError, OSError, TimeoutError) as exc:
            return str(exc)
        return None

    async def _mount(self) -> None:
        if self.shared_on:
            assert self.control is not None
            await self.control.command("mount")
            log("/shared mounted")

    async def _attach_shared(self) -> None:
        if self.virtiofsd:
            await to_thread.run_sync(self._start_virtiofsd)
            await self._plug_shared()

    async def _plug_shared(self) -> None:
        """QEMU gets /shared from the virtiofsd just started (it serves that one connection)."""
        if not self.virtiofsd:
            return
        assert self.qmp is not None
        await machine.attach_shared(self.qmp, self.layout.virtiofs_socket)
        self.shared_on = True

    def _fill_ram(self) -> None:
        assert self.incoming is not None
        ramfile.fill(self.ram, ramfile.path_for(self.incoming))
        log("RAM filled")

    async def _detach_shared(self) -> None:
        assert self.qmp is not None and self.control is not None
        if not self.shared_on:
            return
        await self.control.command("umount")
        await machine.detach_shared(self.qmp)
        self.shared_on = False
        await to_thread.run_sync(self._stop_helpers)

    async def save(self, request: SaveRequest) -> None:
        """Write the VM's state (and a copy of its disk) at one moment, then resume it or,
        with ``then="quit"``, power it off (a template's warm state)."""
        assert self.qmp is not None and self.control is not None
        state = Path(request.state)
        disk = Path(request.disk) if request.disk else None
        async with self.ops_lock:
            await self._detach_shared()
            try:
                if request.drop_caches:  # a warm state: only what the guest uses is saved
                    await self.control.command("drop-caches")
                    lowest = await machine.squeeze(
                        self.qmp, self.memory_mb, SQUEEZE_FLOOR_MB, SQUEEZE_TIMEOUT
                    )
                    log(f"memory squeezed: the balloon reached {lowest} MiB")
                await machine.save_state(self.qmp, state)
                await to_thread.run_sync(ramfile.dump, self.ram, ramfile.path_for(state))
                if disk is not None:
                    # Here, not at the top: snapshots brings the sandbox models (~100 ms of
                    # imports) into every VM's start, which never needs them.
                    from hivecell.sandbox.qemu import snapshots

                    # the disk of a paused VM (QEMU flushed it when it stopped)
                    await to_thread.run_sync(snapshots.copy_disk, self.layout.disk, disk)
            finally:
                if request.then == "quit":
                    self.stopping = True
                    await self.qmp.execute("quit")
                else:
                    await self._attach_shared()
                    await machine.resume(self.qmp)
                    if self.shared_on:
                        await self.control.command("mount")

    def _finish(self, code: int) -> int:
        self._stop_helpers()
        if self.network is not None:
            try:  # slirp4netns first: its sockets must never go unfiltered
                self.network.stop()
            except OSError as exc:  # destroy retries
                log(f"cannot detach from the host filter: {exc}")
        _reap_stragglers(self.groups)
        log(f"VM exited with {code}")
        self._record(code)
        return 0 if code == 0 or self.stopping else 1

    async def _serve(self, link: socket.socket, bound: dict[str, socket.socket]) -> None:
        assert self.proc is not None
        stream = await unixstream.wrap_connected(link)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_copy_console, self.proc)
            tg.start_soon(self._run_machine, stream, bound)
            if self.network is not None:
                tg.start_soon(self._keep_filter)
            await _wait_exit(self.proc.pid)
            tg.cancel_scope.cancel()
        if self.qmp is not None:
            # QEMU is gone: disconnect only tidies up, re-raising what ended the reader
            with anyio.CancelScope(shield=True), contextlib.suppress(EOFError, OSError, QMPError):
                await self.qmp.disconnect()

    async def _run_machine(self, stream: ByteStream, bound: dict[str, socket.socket]) -> None:
        """Up first (clients wait in the listeners' backlogs meanwhile), then serve. A
        restored guest's link is served from its resume on (``_come_back``)."""
        failure = None
        try:
            await self._bring_up()
        except* (SandboxError, QMPError, OSError, TimeoutError) as group:  # and beside it
            failure = "; ".join(str(exc) for exc in group.exceptions)
        if failure is not None:
            self._fail(f"the VM did not come up: {failure}")
            return
        restored = self.incoming is not None
        if not restored:
            self._admitted()
        listeners = {
            kind: await unixstream.unix_listener(sock)
            for kind, sock in bound.items()
            if kind != "ops"
        }
        async with anyio.create_task_group() as tg:
            send, receive = anyio.create_memory_object_stream[None](4)
            admit = self._come_back if restored else None
            tg.start_soon(self._proxy, stream, listeners, receive, admit)
            tg.start_soon(self._watch_reboots, send)
            await self.ready.wait()
            tg.start_soon(serve_ops, self, bound["ops"])

    def _admitted(self) -> None:
        log("guest ready")
        self.ready.set()

    def _fail(self, why: str) -> None:
        self.failure = why
        log(why)
        self._terminate()

    async def _watch_reboots(self, restarts: MemoryObjectSendStream[None]) -> None:
        """A guest that reboots (``reboot``, or a crash with panic=-1) comes back with a new
        agent on the port: the proxy must start over with it."""
        assert self.qmp is not None
        events = EventListener(("RESET",))
        async with restarts:
            with self.qmp.listen(events):
                async for event in events:
                    data = event["data"]
                    if isinstance(data, dict) and data.get("guest"):
                        log("the guest rebooted")
                        await restarts.send(None)

    async def _proxy(
        self,
        link: ByteStream,
        listeners: dict[str, Listener[ByteStream]],
        restarts: MemoryObjectReceiveStream[None],
        admit: Callable[[Mux], Awaitable[None]] | None,
    ) -> None:
        try:
            await muxproxy.proxy(link, listeners, restarts=restarts, admit=admit)
        except GuestProtocolError as exc:  # a broken or hostile guest: it stops here
            self.failure = str(exc)
            log(f"stopping the VM: {exc}")
            self._terminate()

    def _terminate(self) -> None:
        """QEMU exits cleanly on SIGTERM; the loop sees it exit. Under its own init
        (``vm.under_own_init``) QEMU itself gets it: the init's ``unshare`` would wait on."""
        if self.proc is None or self.proc.poll() is not None:
            return
        qemu = vm.find_qemu(self.proc.pid) if self.plan.get("own_init") else None
        if qemu is None:
            self.proc.terminate()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(qemu, signal.SIGTERM)

    def stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        self._terminate()

    def _reap(self) -> int:
        if self.proc is None:
            return -1
        if self.proc.poll() is None:
            self._terminate()
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def _record(self, code: int) -> None:
        if self.failure is not None:
            status, detail = "error", self.failure
        elif self.stopping or code == 0:
            status, detail = (
                "stopped",
                "stopped on request" if self.stopping else "the VM powered off",
            )
        else:
            status, detail = "error", f"QEMU exited with code {code}; see {self.layout.log}"
        try:
            self.layout.record_exit(status, detail, code)
        except OSError as exc:
            log(f"cannot record the exit: {exc}")


def _bind(layout: VmLayout) -> dict[str, socket.socket]:
    bound: dict[str, socket.socket] = {}
    try:
        for kind, path in (
            ("agent", layout.guest_socket),
            ("vnc", layout.vnc_socket),
            ("ops", layout.ops_socket),
        ):
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bound[kind] = sock
            sock.bind(str(path))
            sock.listen(64)
    except OSError:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def _wait_for(path: Path, proc: subprocess.Popen[bytes] | None) -> None:
    """QEMU makes its sockets within milliseconds of starting."""
    deadline = time.monotonic() + SERIAL_CONNECT_TIMEOUT
    while not path.exists():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise SandboxError(f"QEMU did not create {path.name}", op="start")
        time.sleep(0.01)


def _connect_serial(path: Path, proc: subprocess.Popen[bytes]) -> socket.socket | None:
    """QEMU's end of the agent port; it waits for us (``wait=on``) before running the VM."""
    deadline = time.monotonic() + SERIAL_CONNECT_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log(f"QEMU exited with {proc.returncode} before it served the agent port")
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            time.sleep(0.01)
    log(f"QEMU did not open its agent port within {SERIAL_CONNECT_TIMEOUT:.0f} s")
    return None


async def _first_ping(mux: Mux) -> None:
    """What comes back does not matter (clients ask their own), nor whether anything does:
    a guest that never answers, or answers garbage, is the readiness check's to find."""
    with anyio.move_on_after(FIRST_PING_TIMEOUT):
        try:
            async with await mux.open("agent") as channel:
                await FrameWriter(channel).send(FIRST_PING)
                async for _ in FrameReader(channel):
                    return
        except Exception as exc:  # a warm-up: nothing of it may end the VM
            log(f"the first ping went unanswered: {exc!r}")


async def _copy_console(proc: subprocess.Popen[bytes]) -> None:
    """QEMU's output and the guest's console into our (capped) log."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not data:
            return
        sys.stderr.buffer.write(data)
        sys.stderr.flush()


async def _wait_exit(pid: int) -> None:
    fd = os.pidfd_open(pid)
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _in_own_network() -> None:
    """QEMU's sockets in a network namespace with only a loopback (up, for our DNS), until
    slirp4netns gives it a way out: whatever the guest reaches goes through the filter."""
    _die_with_parent()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNET): {os.strerror(errno)}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", IFF_UP))


def _open_disk(disk: Path) -> list[int]:
    """The overlay read-only and read-write: QEMU takes from its set the one whose access
    mode matches each open (read-only while a saved state comes in, then read-write)."""
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    read_only = os.open(disk, os.O_RDONLY | flags)
    try:
        return [read_only, os.open(disk, os.O_RDWR | flags)]
    except OSError:
        os.close(read_only)
        raise


def _fdset_options(fds: list[int], fdset: int) -> list[str]:
    return [arg for fd in fds for arg in ("-add-fd", f"fd={fd},set={fdset}")]


def _reap_stragglers(groups: set[int]) -> None:
    """What our helpers forked and left behind (virtiofsd's sandboxed child outlives its
    parent for a moment): we are their subreaper, so the VM's processes are all gone once
    we are, and ``rm`` can check that. Only the helpers' process groups: the log copier
    stays (it ends with our output)."""
    me = os.getpid()
    for child in Path(f"/proc/{me}/task/{me}/children").read_text().split():
        pid = int(child)
        try:
            if os.getpgid(pid) not in groups:
                continue
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def main(argv: list[str]) -> int:
    """argv: the VM's folder, then a fd on which to report our pid (none when forked by
    the supervisor server, which reports it)."""
    layout = VmLayout(Path(argv[0]).resolve())
    if len(argv) > 1:
        detach(int(argv[1]))
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
    cap_output(LOG_CAP_BYTES)
    the_vm = Vm(layout, json.loads(layout.plan.read_text()))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, the_vm.stop)
    log(f"starting {layout.sandbox_id}")
    return the_vm.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
