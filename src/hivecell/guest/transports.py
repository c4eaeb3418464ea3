"""Byte-stream transports the agent listens on: unix socket, TCP, virtio-serial device.

They all hand a ``ByteStream`` to the same ``Connection``; only how the stream is obtained
differs. TCP requires a token (``authenticate`` first), enforced by the connection.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from anyio.abc import ByteStream, Listener, TaskGroup
from anyio.streams.stapled import MultiListener

from hivecell.errors import ConfigError
from hivecell.protocol import unixstream

StreamHandler = Callable[[ByteStream], Awaitable[None]]
log = logging.getLogger("hivecell.guest")
ACCEPT_BACKOFF = 0.1  # seconds to wait when accept fails (out of fds): a peer must leave first


async def unix_listener(path: Path) -> Listener[ByteStream]:
    apath = anyio.Path(path)
    await apath.parent.mkdir(parents=True, exist_ok=True)
    await apath.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await anyio.to_thread.run_sync(sock.bind, str(path))
        sock.listen()
        await apath.chmod(0o600)
    except BaseException:
        sock.close()
        raise
    return await unixstream.unix_listener(sock)


async def fd_listener(fd: int) -> Listener[ByteStream]:
    """A unix socket the host bound where the box cannot reach it, handed over as an open fd.

    We call listen() here too: a host that did not (a VM's relay) gets connects only once
    the agent serves; one that did (local boxes) has them waiting in the backlog meanwhile.
    """
    sock = socket.socket(fileno=fd)
    sock.listen()
    return await unixstream.unix_listener(sock)


async def tcp_listener(host: str, port: int, token: str | None) -> Listener[ByteStream]:
    if not token:
        raise ConfigError(
            "TCP needs a token: pass --token or set HIVECELL_GUEST_TOKEN", op="listen"
        )
    return await anyio.create_tcp_listener(local_host=host, local_port=port)


class CharDeviceStream(ByteStream):
    """A virtio-serial port (``/dev/virtio-ports/NAME``) used as a byte stream.

    The device never reports end of stream when the host side disconnects; reads just
    block until the next host opens it, which is what a long-lived agent wants.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            await anyio.wait_readable(self._fd)
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                continue
            if data:
                return data
            await anyio.sleep(0.05)  # no host connected: poll gently

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    raise anyio.BrokenResourceError from exc
                raise
            view = view[written:]

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def serve_listener(listener: Listener[ByteStream], handler: StreamHandler) -> None:
    """Accept until cancelled or the listener is closed; no connection can end this loop.

    ``Listener.serve`` would end on the first failed accept (EMFILE when a peer holds every
    fd) or the first handler error, and take every other connection down with it.
    """
    # a TCP listener on several addresses is a MultiListener: one accept loop per socket
    sockets = listener.listeners if isinstance(listener, MultiListener) else [listener]
    async with listener, anyio.create_task_group() as tg:
        for one in sockets:
            tg.start_soon(_accept_loop, one, handler, tg)


async def _accept_loop(
    listener: Listener[ByteStream], handler: StreamHandler, tg: TaskGroup
) -> None:
    while True:
        try:
            stream = await listener.accept()  # type: ignore[attr-defined]
        except anyio.ClosedResourceError:
            return
        except (anyio.BrokenResourceError, OSError) as exc:
            log.warning("accept failed (%s); retrying", exc.__cause__ or exc)
            await anyio.sleep(ACCEPT_BACKOFF)
            continue
        tg.start_soon(_contained, handler, stream)


async def _contained(handler: StreamHandler, stream: ByteStream) -> None:
    try:
        await handler(stream)
    except Exception:
        log.exception("connection handler failed; the listener keeps serving")
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def serve_device(path: Path, handler: StreamHandler) -> None:
    while True:
        await _contained(handler, CharDeviceStream(path))
