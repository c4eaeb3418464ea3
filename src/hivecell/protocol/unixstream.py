"""Unix socket streams for both ends of the guest protocol, on asyncio's own transports.

anyio (4.16) waits for a unix socket with ``loop.add_reader(fd, future.set_result)``: a
receive cancelled in the same loop turn as the peer's next bytes arrive makes the loop call
``set_result`` on a cancelled future, an ``InvalidStateError`` raised from a loop callback
(what a task ending while its guest sends a heartbeat hit). asyncio's transports and stream
readers guard every waiter, so on asyncio the streams here use them; elsewhere (trio) anyio's
own unix streams are used, which do not have this race.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from typing import Any

import anyio
from anyio.abc import (
    ByteStream,
    Listener,
    SocketListener,
    SocketStream,
    TaskGroup,
    UNIXSocketStream,
)

LINE_LIMIT = 1 << 20  # asyncio's readline limit; framing reads with read(n), never readline


async def connect_unix(path: str) -> SocketStream:
    """A connected stream: ``UnixStream`` on asyncio, anyio's own elsewhere (trio is safe)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return await anyio.connect_unix(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await _connect(sock, path)
        return await _wrap(sock)
    except BaseException:
        sock.close()
        raise


async def _connect(sock: socket.socket, path: str) -> None:
    """Connect, retrying while the listener's backlog is full.

    A unix socket's non-blocking connect fails with EAGAIN when the backlog is full: unlike a
    TCP connect in progress it must be retried (``loop.sock_connect`` would wait for
    writability, which an unconnected unix socket has at once, and hand back a socket that is
    not connected). Nothing signals room in a peer's backlog, so the retry backs off.
    """
    pause = 0.001
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.05)


async def unix_listener(sock: socket.socket) -> Listener[ByteStream]:
    """A listener on a bound, listening unix socket: ``UnixListener`` on asyncio."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return await SocketListener.from_socket(sock)
    return UnixListener(sock)


async def wrap_connected(sock: socket.socket) -> SocketStream:
    """A stream over an already connected unix socket (made non-blocking here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return await UNIXSocketStream.from_socket(sock)
    sock.setblocking(False)
    return await _wrap(sock)


async def _wrap(sock: socket.socket) -> UnixStream:
    try:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
    except BaseException:
        sock.close()
        raise
    return UnixStream(sock, reader, writer)


class UnixStream(SocketStream):
    """anyio's ``SocketStream`` over an asyncio unix connection (see the module's docstring);
    ``extra(SocketAttribute.raw_socket)`` is the socket, for peeks that never block."""

    def __init__(
        self, sock: socket.socket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._sock = sock
        self._reader = reader
        self._writer = writer
        self._closed = False

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock

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
        """Close at once, like a socket's close: unsent bytes are dropped; a receive waiting
        meanwhile ends with ``ClosedResourceError``."""
        if self._closed:
            return
        self._closed = True
        transport = self._writer.transport
        if transport.get_write_buffer_size():
            transport.abort()  # a peer that stopped reading would hold close() for ever
        else:
            transport.close()
        with anyio.CancelScope(shield=True), suppress(OSError):
            await self._writer.wait_closed()


class UnixListener(Listener[ByteStream]):
    """Accepts on a listening unix socket; each connection a ``UnixStream`` (asyncio only)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._closed = False

    async def accept(self) -> ByteStream:
        if self._closed:
            raise anyio.ClosedResourceError
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await loop.sock_accept(self._sock)  # asyncio guards cancelled accepts
        except OSError as exc:
            if self._closed:
                raise anyio.ClosedResourceError from None
            raise anyio.BrokenResourceError from exc
        return await _wrap(conn)

    async def serve(
        self,
        handler: Callable[[ByteStream], Any],
        task_group: TaskGroup | None = None,
    ) -> None:
        """Accept until closed, one task per connection (``Listener.serve``'s contract)."""
        async with AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            while True:
                task_group.start_soon(handler, await self.accept())

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()
