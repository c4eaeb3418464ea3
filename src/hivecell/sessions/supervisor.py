"""One session's supervisor: owns the agent's pseudo-terminal, appends its output to the
scrollback file, renders the screen for status, and serves viewers on a unix socket.

Started by the server as ``python -m hivecell.sessions.supervisor FOLDER`` in a session of
its own, so it outlives the server and the CLI; a restarted server finds it again through
``FOLDER/sock`` (the folder is 0700, the socket 0600). It prints ``ready`` on stdout once
it listens, then lets go of stdout. It stays after the agent exits (status ``exited``,
``restart`` starts it again) and ends on ``stop``.

Requests on the socket are frames (``sessions.framing``): ``stdin`` is typed into the
terminal, ``resize`` resizes it, ``control`` ops are ``status``, ``attach`` (replay the
scrollback from ``offset`` or its last ``tail`` bytes, then stream live output),
``restart`` and ``stop``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import pty
import signal
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

from hivecell.errors import HivecellError
from hivecell.sessions import framing
from hivecell.sessions.autoanswer import AutoAnswerer
from hivecell.sessions.framing import FrameType
from hivecell.sessions.recorders import SessionRecorder
from hivecell.sessions.scrollback import Scrollback
from hivecell.sessions.spec import (
    SCROLLBACK,
    SOCKET,
    SessionSpec,
    SupervisorStatus,
    read_spec,
)
from hivecell.sessions.status import ScreenWatch

READ_CHUNK = 64 * 1024
REPLAY_CHUNK = framing.MAX_PAYLOAD
# A viewer this far behind pauses the agent's output (as a slow terminal does: its writes
# block) until every viewer has caught up; one that has not within VIEWER_STALL is dropped,
# so a viewer that stopped reading cannot hold the agent up for long.
VIEWER_BACKLOG = 4 * 1024 * 1024
VIEWER_STALL = 5.0
HOOK_TIMEOUT = 60
STOP_GRACE = 3.0


class Supervisor:
    def __init__(self, folder: Path, spec: SessionSpec) -> None:
        self.folder = folder
        self.spec = spec
        self.cols, self.rows = spec.cols, spec.rows
        self.watch = ScreenWatch(self.cols, self.rows, spec.screen)
        self.log = Scrollback(folder, spec.scrollback_max_bytes)
        self.audit = SessionRecorder(
            folder, spec.name, spec.agent, Path(spec.cwd), spec.audit_max_bytes
        )
        self.pid: int | None = None
        self.fd: int | None = None
        self.exit_code: int | None = None
        self.restarts = 0
        self.exited = asyncio.Event()
        self.done = asyncio.Event()
        self.viewers: set[asyncio.StreamWriter] = set()
        self.pending_input = bytearray()
        self.catching_up: asyncio.Future[None] | None = None
        self.auto = (
            AutoAnswerer(self.watch, self.audit, self._write_keys)
            if spec.auto_answer and spec.screen.auto_answer
            else None
        )

    # -- the agent's process ------------------------------------------------------------
    async def spawn(self) -> None:
        await self._hook(self.spec.hooks.on_start)
        self.audit.event("session_restart" if self.restarts else "session_start", self.spec.argv[0])
        self.exit_code = None
        self.exited = asyncio.Event()
        pid, fd = pty.fork()
        if pid == 0:  # the child: its own session with the PTY as controlling terminal
            self._exec()
        self.pid, self.fd = pid, fd
        self._set_size(fd)
        os.set_blocking(fd, False)
        loop = asyncio.get_running_loop()
        loop.add_reader(fd, self._on_output)
        pidfd = os.pidfd_open(pid)
        loop.add_reader(pidfd, self._on_exit, pidfd)

    def _exec(self) -> None:
        if self.spec.isolation != "none":
            # bwrap (and a box's supervisor) stand between the PTY and the agent, which takes
            # the terminal's foreground and these signals back (sandbox.local.terminal): a
            # Ctrl-C typed meanwhile must not take the box down.
            for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
                signal.signal(sig, signal.SIG_IGN)
        try:
            os.chdir(self.spec.cwd)
            os.execvpe(self.spec.argv[0], self.spec.argv, self.spec.env)
        except OSError as exc:
            os.write(2, f"hivecell: cannot start {self.spec.argv[0]}: {exc.strerror}\r\n".encode())
        os._exit(127)

    def _set_size(self, fd: int) -> None:
        size = termios_size(self.rows, self.cols)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, size)

    def _on_output(self) -> None:
        data, closed = self._read_available()
        if data:
            self._emit(data)
        if closed:
            self._close_pty()

    def _read_available(self) -> tuple[bytes, bool]:
        """What the PTY holds now, up to READ_CHUNK, and whether its other end is gone. A
        PTY hands out a few KiB per read: gathered into one frame, a flood costs one
        scrollback write and one frame per 64 KiB, not per 4 KiB."""
        assert self.fd is not None
        chunks: list[bytes] = []
        size = 0
        while size < READ_CHUNK:
            try:
                chunk = os.read(self.fd, READ_CHUNK - size)
            except BlockingIOError:
                break
            except OSError:  # EIO: every holder of the PTY's other end is gone
                chunk = b""
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), False

    def _emit(self, data: bytes) -> None:
        self.log.write(data)
        self.watch.feed(data)
        self._broadcast(framing.encode(FrameType.STDOUT, data))
        if self.auto is not None:
            self.auto.output()

    def _close_pty(self) -> None:
        if self.fd is None:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.fd)
        with contextlib.suppress(ValueError):
            loop.remove_writer(self.fd)
        os.close(self.fd)
        self.fd = None
        self.pending_input.clear()

    def _on_exit(self, pidfd: int) -> None:
        """The agent's pidfd turned readable: it exited; collect it without blocking."""
        loop = asyncio.get_running_loop()
        loop.remove_reader(pidfd)
        os.close(pidfd)
        assert self.pid is not None
        _, status = os.waitpid(self.pid, 0)
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.pid = None
        if self.auto is not None:
            self.auto.stop()
        self._drain()
        self.exited.set()
        self.audit.event("agent_exit", detail={"exit_code": self.exit_code})
        self._broadcast(framing.control({"op": "exited", "exit_code": self.exit_code}))
        loop.create_task(self._hook(self.spec.hooks.on_exit))  # noqa: RUF006 - runs to its end

    def _drain(self) -> None:
        """Output still buffered in the PTY belongs in the scrollback before ``exited``."""
        while self.fd is not None:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except OSError:  # EAGAIN (nothing left) or EIO (other end closed)
                data = b""
            if not data:
                self._close_pty()
                return
            self.log.write(data)
            self.watch.feed(data)
            self._broadcast(framing.encode(FrameType.STDOUT, data))

    async def _hook(self, command: str | None) -> None:
        if not command:
            return
        run = functools.partial(
            subprocess.run,
            ["/bin/sh", "-c", command],
            cwd=self.spec.cwd,
            env=self.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log.fileno(),
            stderr=self.log.fileno(),
            timeout=HOOK_TIMEOUT,
            check=False,
        )
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            await asyncio.get_running_loop().run_in_executor(None, run)

    async def kill_agent(self) -> None:
        """SIGHUP to the agent's process group (as a closed terminal would), then SIGKILL
        to every process left in its session after ``STOP_GRACE`` (a shell's background
        jobs have process groups of their own)."""
        if self.pid is None:
            return
        sid = self.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sid, signal.SIGHUP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), STOP_GRACE)
        for pid in session_members(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await self.exited.wait()

    # -- viewers and requests -----------------------------------------------------------
    def _broadcast(self, frame: bytes) -> None:
        for viewer in self.viewers:
            viewer.write(frame)
        if self.catching_up is None and self.fd is not None and self._lagging():
            asyncio.get_running_loop().remove_reader(self.fd)
            self.catching_up = asyncio.ensure_future(self._catch_up(self.fd))

    def _lagging(self) -> list[asyncio.StreamWriter]:
        return [v for v in self.viewers if v.transport.get_write_buffer_size() > VIEWER_BACKLOG]

    async def _catch_up(self, fd: int) -> None:
        """The PTY is not read (the agent's writes block once its buffer is full) until
        the viewers behind have taken their backlog, or are dropped at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + VIEWER_STALL
        try:
            for viewer in self._lagging():
                try:
                    await asyncio.wait_for(viewer.drain(), max(0.0, deadline - loop.time()))
                except (TimeoutError, ConnectionError):
                    self.viewers.discard(viewer)
                    viewer.close()
        finally:
            self.catching_up = None
            if self.fd == fd:  # not closed meanwhile (the agent exited, the PTY drained)
                loop.add_reader(fd, self._on_output)

    def status(self) -> SupervisorStatus:
        return SupervisorStatus(
            supervisor_pid=os.getpid(),
            pid=self.pid,
            status=self.watch.status(self.pid is not None),
            exit_code=self.exit_code,
            restarts=self.restarts,
            cols=self.cols,
            rows=self.rows,
            scrollback_bytes=self.log.tell(),
        )

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(framing.HEADER.size)
                _kind, _agent, length = framing.parse_header(header)
                payload = await reader.readexactly(length)
                await self._handle(framing.decode(header + payload), writer)
        except (asyncio.IncompleteReadError, ConnectionError, HivecellError):
            pass  # the peer left or spoke garbage: drop it, the agent carries on
        finally:
            self.viewers.discard(writer)
            writer.close()

    async def _handle(self, frame: framing.Frame, writer: asyncio.StreamWriter) -> None:
        if frame.type is FrameType.STDIN:
            self._type(frame.payload)
        elif frame.type is FrameType.RESIZE:
            self.cols, self.rows = frame.size()
            self.watch.resize(self.cols, self.rows)
            if self.fd is not None:
                self._set_size(self.fd)
        elif frame.type is FrameType.CONTROL:
            await self._control(frame.control(), writer)

    async def _control(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        op = message["op"]
        if op == "attach":
            self._replay(writer, message.get("offset"), message.get("tail"))
            self.viewers.add(writer)
            return
        if op == "restart":
            await self.kill_agent()
            self.restarts += 1
            await self.spawn()
        elif op == "stop":
            await self.kill_agent()
            self.done.set()
        writer.write(framing.control(self.status().model_dump()))
        await writer.drain()

    def _replay(self, writer: asyncio.StreamWriter, offset: Any, tail: Any) -> None:
        """The scrollback from ``offset`` (or its last ``tail`` bytes) up to now; nothing
        is written to the file meanwhile (one event loop), so live output follows on."""
        end = self.log.tell()
        start = self.log.start(offset, tail)
        writer.write(framing.control({"op": "attached", "offset": start, "end": end}))
        with open(self.folder / SCROLLBACK, "rb") as f:
            f.seek(start - self.log.base)
            while f.tell() < end - self.log.base:
                chunk = f.read(min(REPLAY_CHUNK, end - self.log.base - f.tell()))
                if not chunk:
                    break
                writer.write(framing.encode(FrameType.STDOUT, chunk))

    def _type(self, data: bytes) -> None:
        if self.fd is None:
            return
        self.audit.typed(data, self.fd)
        self._write_keys(data)

    def _write_keys(self, data: bytes) -> None:
        if self.fd is None:
            return
        self.pending_input += data
        self._flush_input()

    def _flush_input(self) -> None:
        # A busy agent may not read: keep what the PTY cannot take and write it when it can.
        assert self.fd is not None
        loop = asyncio.get_running_loop()
        try:
            written = os.write(self.fd, self.pending_input)
        except BlockingIOError:
            written = 0
        del self.pending_input[:written]
        with contextlib.suppress(ValueError):
            loop.remove_writer(self.fd)
        if self.pending_input:
            loop.add_writer(self.fd, self._flush_input)


SUPERVISOR_MODULE = b"hivecell.sessions.supervisor"  # as its command line names it


def running_supervisors(home: Path) -> list[int]:
    """Live supervisors whose session folder is ``home/sessions/NAME``, by their exact
    command line (another home whose path merely starts the same is not this one)."""
    root = home / "sessions"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        # A zombie's command line is empty: it is gone already.
        if SUPERVISOR_MODULE in argv and Path(os.fsdecode(argv[-1])).parent == root:
            found.append(int(entry.name))
    return found


def session_members(sid: int) -> list[int]:
    """Live processes whose session is ``sid`` (/proc/PID/stat after the name: state, ppid,
    pgrp, session); zombies are dead already, only not yet reaped by their new parent."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != b"Z":
            found.append(int(entry.name))
    return found


def termios_size(rows: int, cols: int) -> bytes:
    import struct

    return struct.pack("HHHH", rows, cols, 0, 0)


async def run(folder: Path) -> None:
    spec = read_spec(folder)
    sup = Supervisor(folder, spec)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, sup.done.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the server's terminal closing
    sock = folder / SOCKET
    with contextlib.suppress(FileNotFoundError):
        if sock.is_socket() and not sock.is_symlink():
            sock.unlink()  # a dead supervisor's; the server checked none answers
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(sup.serve, path=str(sock))
    finally:
        os.umask(old)
    await sup.spawn()
    _ready()
    async with server, sup.audit.watching(lambda: sup.pid):
        await sup.done.wait()
        await sup.kill_agent()
        sup.audit.event("session_stop")
        if sup.catching_up is not None:
            sup.catching_up.cancel()
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()


def _ready() -> None:
    """Tell the server we listen, then let go of its pipe (it must not hold us, nor we it)."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def main() -> None:
    os.umask(0o077)
    if os.fork() > 0:  # the server waits for this first process; the supervisor goes on
        os._exit(0)
    asyncio.run(run(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
