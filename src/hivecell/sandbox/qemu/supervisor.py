"""``python -m hivecell.sandbox.qemu.supervisor DIR PIDFD``: keeps one VM running.

Started detached by the qemu provider so the VM outlives the CLI that created it (as local
boxes do). It runs QEMU as its child (QEMU dies with it: ``PR_SET_PDEATHSIG``), holds the
host end of the guest agent's virtio-serial port for the VM's whole life, and serves
``guest.sock`` and ``vnc.sock``: every connection there becomes one channel of the stream
multiplexer on that port (``hivecell.protocol.mux``), so any number of clients and viewers
share the one port. It exits when QEMU does; SIGTERM stops the VM.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
from anyio.abc import ByteStream, Listener

from hivecell.errors import GuestProtocolError
from hivecell.protocol import unixstream
from hivecell.sandbox import muxproxy
from hivecell.sandbox.local.supervisor import cap_output, detach, log
from hivecell.sandbox.qemu.layout import VmLayout

LOG_CAP_BYTES = 16 << 20
SERIAL_CONNECT_TIMEOUT = 30.0  # QEMU creates its socket within milliseconds of starting
STOP_GRACE = 5.0
PR_SET_PDEATHSIG = 1


class Vm:
    def __init__(self, layout: VmLayout, plan: dict[str, object]) -> None:
        self.layout = layout
        self.argv = [str(a) for a in plan["argv"]]  # type: ignore[attr-defined]
        self.virtiofsd = [str(a) for a in plan.get("virtiofsd") or []]  # type: ignore[attr-defined]
        self.proc: subprocess.Popen[bytes] | None = None
        self.helpers: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.failure: str | None = None  # why the supervisor stopped the VM itself

    def run(self) -> int:
        listeners = _bind(self.layout)
        try:
            if self.virtiofsd and not self._start_virtiofsd():
                return self._finish(-1)
            # QEMU's stdio is the guest's console. Never our own stdout: QEMU makes its stdio
            # non-blocking, which would break the log's copier sharing that pipe.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                env={},
            )
            link = _connect_serial(self.layout.serial_socket, self.proc)
            if link is not None:
                anyio.run(self._serve, link, listeners)
        except OSError as exc:
            log(f"cannot run the VM: {exc}")
        finally:
            for sock in listeners.values():
                sock.close()
        return self._finish(self._reap())

    def _start_virtiofsd(self) -> bool:
        """The /shared file server; QEMU connects to its socket at start, so wait for it."""
        self.layout.virtiofs_socket.unlink(missing_ok=True)
        proc = subprocess.Popen(
            self.virtiofsd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, env={}
        )
        self.helpers.append(proc)
        deadline = time.monotonic() + SERIAL_CONNECT_TIMEOUT
        while not self.layout.virtiofs_socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log(f"virtiofsd did not start (exit {proc.poll()}); /shared cannot be served")
                return False
            time.sleep(0.01)
        return True

    def _finish(self, code: int) -> int:
        for helper in self.helpers:
            if helper.poll() is None:
                helper.terminate()
            try:
                helper.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
        log(f"VM exited with {code}")
        self._record(code)
        return 0 if code == 0 or self.stopping else 1

    async def _serve(self, link: socket.socket, bound: dict[str, socket.socket]) -> None:
        assert self.proc is not None
        stream = await unixstream.wrap_connected(link)
        listeners = {kind: await unixstream.unix_listener(sock) for kind, sock in bound.items()}
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._proxy, stream, listeners)
            tg.start_soon(_copy_console, self.proc)
            await _wait_exit(self.proc.pid)
            tg.cancel_scope.cancel()

    async def _proxy(self, link: ByteStream, listeners: dict[str, Listener[ByteStream]]) -> None:
        try:
            await muxproxy.proxy(link, listeners)
        except GuestProtocolError as exc:  # a broken or hostile guest: it stops here
            self.failure = str(exc)
            log(f"stopping the VM: {exc}")
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()

    def stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # QEMU exits cleanly on SIGTERM; the loop sees it exit

    def _reap(self) -> int:
        if self.proc is None:
            return -1
        if self.proc.poll() is None:
            self.proc.terminate()
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
        for kind, path in (("agent", layout.guest_socket), ("vnc", layout.vnc_socket)):
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


def main(argv: list[str]) -> int:
    layout = VmLayout(Path(argv[0]).resolve())
    detach(int(argv[1]))
    cap_output(LOG_CAP_BYTES)
    vm = Vm(layout, json.loads(layout.plan.read_text()))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, vm.stop)
    log(f"starting {layout.sandbox_id}")
    return vm.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
