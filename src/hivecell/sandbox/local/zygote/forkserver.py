"""A root-only fork server: one pre-imported process that forks on request.

Both of hivecell's zygotes use it: the guest zygote (``server``: boot processes forked into
boxes) and the supervisor server (``supervisors``: each box's host supervisor). ``run``
freezes what the caller imported, then serves one request at a time on a listening
SOCK_SEQPACKET socket the client bound (``client.connect``):

    request  one message: JSON + the number of fds the server wants
    reply    JSON {"pid": <host pid>} or {"error": "..."}

For each request a child is forked; it runs ``spawn``, which forks the long-lived process
and returns its pid, and exits: that process's parent becomes the server (a subreaper),
which reaps it. Only peers with our uid (root) are served.

After ``idle`` seconds without a request, once none of its processes runs, it leaves:
under the client's lock it unlinks its socket (no one can connect any more), serves
whatever had connected before, and exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hivecell.sandbox.local.libc import check, libc

MAX_REQUEST = 64 * 1024
CHILD_TIMEOUT = 10.0  # a spawn takes ms; a child stuck longer is killed
PR_SET_CHILD_SUBREAPER = 36
# runs in the server's child: (request bytes, its fds) -> the pid of what it forked
Spawn = Callable[[bytes, list[int]], int]


class Server:
    def __init__(self, name: str, fd_count: int, spawn: Spawn) -> None:
        self.name = name
        self.fd_count = fd_count
        self.spawn = spawn
        # Requests land here and are wiped after each: every process is forked from this
        # one, so nothing one request said (a box's id, its cgroups) stays for the next.
        self.buffer = bytearray(MAX_REQUEST)

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} {self.name}[{os.getpid()}]: {message}", file=sys.stderr, flush=True)

    def run(self, listen_fd: int, lock_path: Path, idle: float, started: float) -> None:
        """Serve, once the caller imported what its forks need (``started``: when it began)."""
        gc.collect()
        gc.freeze()  # the collector never writes to these objects: forks keep sharing them
        # What ``spawn`` forks is ours once the child that forked it exits, so we reap it,
        # whatever the host's init does with orphans.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        listener = socket.socket(fileno=listen_fd)
        self.log(f"serving after {(time.monotonic() - started) * 1000:.0f} ms of imports")
        self.serve(listener, lock_path, idle)

    def serve(self, listener: socket.socket, lock_path: Path, idle: float) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the select
        last = time.monotonic()
        while True:
            left = max(0.0, idle - (time.monotonic() - last))
            ready = select.select([listener.fileno(), wake_r], [], [], left)[0]
            if wake_r in ready:
                _drain(wake_r)
                reap()
            if listener.fileno() in ready:
                self.handle(listener)
                last = time.monotonic()
            if ready:
                continue
            if _has_children():  # what it forked still runs: ours to reap
                last = time.monotonic()
                continue
            with lock_path.open("a") as lock:  # the client's lock (client.connect)
                fcntl.flock(lock, fcntl.LOCK_EX)
                Path(listener.getsockname()).unlink()
            while select.select([listener], [], [], 0)[0]:  # connected before the unlink
                self.handle(listener)
            self.log(f"idle for {idle:.0f} s; leaving")
            return

    def handle(self, listener: socket.socket) -> None:
        conn, _ = listener.accept()
        fds: list[int] = []
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            uid = struct.unpack("3i", creds)[1]
            if uid != os.geteuid():
                self.log(f"refused a connection from uid {uid}")
                return
            conn.settimeout(5.0)
            size, fds = self._receive(conn)
            self._run_child(conn, size, fds)
        except (OSError, ValueError) as exc:
            self.log(f"bad request: {exc}")
            _reply(conn, {"error": f"the {self.name} could not read the request: {exc}"})
        finally:
            self.buffer[:] = bytes(MAX_REQUEST)
            for fd in fds:
                os.close(fd)
            conn.close()

    def _receive(self, conn: socket.socket) -> tuple[int, list[int]]:
        space = socket.CMSG_SPACE(self.fd_count * 4)
        size, ancdata, flags, _ = conn.recvmsg_into([self.buffer], space)
        fds: list[int] = []
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += struct.unpack(f"{len(data) // 4}i", data[: len(data) // 4 * 4])
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(fds) != self.fd_count:
            for fd in fds:
                os.close(fd)
            raise ValueError(
                f"expected one message of at most {MAX_REQUEST} bytes and {self.fd_count} fds"
            )
        return size, fds

    def _run_child(self, conn: socket.socket, size: int, fds: list[int]) -> None:
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for signum in (signal.SIGCHLD, signal.SIGTERM):
                    signal.signal(signum, signal.SIG_DFL)
                self._child(conn, bytes(self.buffer[:size]), fds)
                code = 0
            finally:
                os._exit(code)
        pidfd = os.pidfd_open(pid)
        try:
            if not select.select([pidfd], [], [], CHILD_TIMEOUT)[0]:
                self.log(f"a child took over {CHILD_TIMEOUT:.0f} s to spawn; killed it")
                os.kill(pid, signal.SIGKILL)
                _reply(conn, {"error": f"spawning took over {CHILD_TIMEOUT:.0f} s"})
        finally:
            os.close(pidfd)
            os.waitpid(pid, 0)

    def _child(self, conn: socket.socket, raw: bytes, fds: list[int]) -> None:
        try:
            pid = self.spawn(raw, fds)
        except Exception as exc:  # whatever it was, the client must hear it
            _reply(conn, {"error": f"{type(exc).__name__}: {exc}"})
        else:
            _reply(conn, {"pid": pid})


def _has_children() -> bool:
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(entry.path, "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                    return True
    return False


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            pass


def reap() -> None:
    """What ended. Promptly: a box's pid 1 cannot finish exiting while a process forked
    into its namespace from outside is a zombie (zap_pid_ns_processes)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _prctl(option: int, value: int) -> None:
    check(libc().prctl(option, value, 0, 0, 0), f"prctl({option})")


def main(argv: list[str], title: str, server: Server, preload: Callable[[], None]) -> int:
    """A server's entry point; ``argv``: its lock, idle seconds and listening fd."""
    lock_path, idle, listen_fd = Path(argv[0]), float(argv[1]), int(argv[2])
    set_title([title, str(lock_path.with_suffix(".sock"))])
    started = time.monotonic()
    preload()
    server.run(listen_fd, lock_path, idle, started)
    return 0


def set_title(argv: list[str]) -> None:
    """Show ``argv`` as this process's command line (ps, /proc/PID/cmdline).

    A forked process keeps its parent's; the box's processes are known by theirs (tools,
    ``ps``). Written over the original argv area in place, which the server's own command
    line keeps large enough (client.TITLE_ROOM; PR_SET_MM would need CAP_SYS_RESOURCE); a
    longer title is cut.
    Python keeps its own copy of argv, so nothing reads the old bytes."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49)
    title = b"\0".join(a.encode() for a in argv)[: end - start - 1]
    ctypes.memmove(start, title.ljust(end - start, b"\0"), end - start)


def _reply(conn: socket.socket, message: dict[str, object]) -> None:
    with contextlib.suppress(OSError):  # the client gave up; its own error says so
        conn.send(json.dumps(message).encode())
