"""Connecting to a unix socket in a folder the sandbox can write, without following links.

The guest and VNC sockets live in the box's ``/run/hivecell``: the box could swap them for a
link to a host service's socket or to another sandbox's, and ``connect(2)`` follows links.
So the socket is opened ``O_PATH|O_NOFOLLOW``, checked to be a socket, and connected to
through ``/proc/self/fd/N``, which names that inode rather than a path. A socket the box made
itself is its own business; ``link(2)`` cannot bring another mount's socket into its folder.

On asyncio the connection is an asyncio transport (``UnixStream``), not anyio's unix stream:
anyio waits for a unix socket with ``loop.add_reader(fd, future.set_result)``, so a receive
cancelled in the instant the guest's next frame arrives makes the loop call ``set_result`` on
a cancelled future (``InvalidStateError`` from a callback, seen when a task ends while its
guest sends a heartbeat). asyncio's transports and stream readers guard every waiter.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from contextlib import suppress
from pathlib import Path

import anyio
from anyio.abc import ByteStream


async def connect_unix_nofollow(path: str | Path) -> ByteStream:
    """Like ``anyio.connect_unix``; raises ``OSError(ELOOP)`` for a link, ``ENOTSOCK`` for
    anything else that is not a socket."""
    fd = await anyio.to_thread.run_sync(_open_socket_inode, str(path))
    try:
        return await connect_unix(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


async def connect_unix(path: str) -> ByteStream:
    """A connected stream: ``UnixStream`` on asyncio, anyio's own elsewhere (trio is safe)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return await anyio.connect_unix(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, path)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
    except BaseException:
        sock.close()
        raise
    return UnixStream(reader, writer)


class UnixStream(ByteStream):
    """anyio's ``ByteStream`` over an asyncio unix connection (see the module's docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            data = await self._reader.read(max_bytes)
        except RuntimeError:  # asyncio's word for a second concurrent reader
            raise anyio.BusyResourceError("reading from") from None
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if data:
            return data
        raise anyio.ClosedResourceError if self._closed else anyio.EndOfStream

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            self._writer.write(item)
            await self._writer.drain()
        except OSError as exc:  # ConnectionResetError, BrokenPipeError, ...
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        with suppress(OSError):
            self._writer.write_eof()

    async def aclose(self) -> None:
        """Close; a receive waiting meanwhile ends with ``ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with anyio.CancelScope(shield=True), suppress(OSError):
            await self._writer.wait_closed()


def _open_socket_inode(path: str) -> int:
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode):
        return fd
    os.close(fd)
    if stat.S_ISLNK(mode):
        raise OSError(errno.ELOOP, f"{path} is a symbolic link, not a socket")
    raise OSError(errno.ENOTSOCK, f"{path} is not a socket")
