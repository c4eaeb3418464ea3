"""hivecell's unix streams (``hivecell.protocol.unixstream``) against a real listening socket."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from hivecell.protocol.unixstream import connect_unix

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the asyncio-only streams are what is tested


async def test_a_connect_while_the_backlog_is_full_waits_and_is_connected() -> None:
    """EAGAIN from a unix connect means "backlog full, try again", not "in progress": each
    stream that comes back must be connected, however long the listener takes to accept."""
    with tempfile.TemporaryDirectory(prefix="hc") as folder:
        path = str(Path(folder) / "l.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)  # a tiny backlog: most of the connects below find it full
        listener.setblocking(False)
        clients = 8
        connected: list[object] = []
        try:
            async with anyio.create_task_group() as tg:

                async def one(i: int) -> None:
                    stream = await connect_unix(path)
                    connected.append(stream)
                    async with stream:
                        await stream.send(b"%d\n" % i)
                        assert await stream.receive() == b"ok"

                for i in range(clients):
                    tg.start_soon(one, i)
                for _ in range(20):  # every client reaches its connect before any accept
                    await anyio.lowlevel.checkpoint()
                loop = asyncio.get_running_loop()
                for _ in range(clients):
                    with anyio.fail_after(20):
                        conn, _ = await loop.sock_accept(listener)
                    with conn:
                        assert await loop.sock_recv(conn, 16)  # the client's line arrived
                        await loop.sock_sendall(conn, b"ok")
        finally:
            listener.close()
        assert len(connected) == clients


async def test_a_missing_socket_is_file_not_found() -> None:
    with tempfile.TemporaryDirectory(prefix="hc") as folder, pytest.raises(FileNotFoundError):
        await connect_unix(str(Path(folder) / "absent.sock"))
