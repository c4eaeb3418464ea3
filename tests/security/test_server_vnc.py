"""A view-only VNC viewer that never finishes a message must not grow the server's memory.

The relay runs under a real uvicorn; the "VNC server" behind it is a unix socket that answers
the RFB handshake as x11vnc does and then keeps what reaches it (the filter sits on the
browser side, so what x11vnc would answer later does not matter to the attack); the client is
a raw WebSocket.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import uvicorn
from anyio.streams.buffered import BufferedByteReceiveStream
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from hivecell.server.vnc import CLOSE_POLICY, RfbViolation, ViewOnlyFilter, vnc_router

pytestmark = pytest.mark.anyio
HANDSHAKE = b"RFB 003.008\n" + b"\x01" + b"\x01"
MiB = 1024 * 1024


def cut_text_header(length: int) -> bytes:
    return struct.pack(">B3xi", 6, length)


def test_the_filter_refuses_a_message_too_big_to_buffer() -> None:
    view = ViewOnlyFilter()
    assert view.feed(HANDSHAKE) == HANDSHAKE
    with pytest.raises(RfbViolation):
        view.feed(cut_text_header(2**31 - 1) + b"x" * 1000)  # "2 GiB of clipboard follow"
    view = ViewOnlyFilter()
    view.feed(HANDSHAKE)
    with pytest.raises(RfbViolation):  # the extended-clipboard form (negative length) too
        view.feed(cut_text_header(-(2**31)))


def test_endless_partial_messages_stay_bounded() -> None:
    """The largest message a viewer needs (a 65 535-entry SetEncodings) fits; a stream that
    keeps it partial never buffers more than that."""
    view = ViewOnlyFilter()
    view.feed(HANDSHAKE)
    encodings = struct.pack(">BxH", 2, 65535)
    assert view.feed(encodings) == b""
    for _ in range(255):  # 255 KiB of a 256 KiB message
        assert view.feed(b"\x00" * 1024) == b""
        assert view.buffered <= ViewOnlyFilter.MAX_MESSAGE
    whole = view.feed(b"\x00" * 1020)  # the last bytes: forwarded, buffer empty again
    assert len(whole) == 4 + 4 * 65535 and view.buffered == 0


@pytest.mark.timeout(120)  # copying the rest after each message would take far longer
def test_many_small_messages_in_one_frame_are_parsed_in_linear_time() -> None:
    view = ViewOnlyFilter()
    view.feed(HANDSHAKE)
    pointer_events = struct.pack(">BBHH", 5, 0, 10, 10) * (MiB // 6)
    assert view.feed(pointer_events) == b""  # all input: dropped
    assert view.buffered == 0


@asynccontextmanager
async def relay_to_sink(folder: Path) -> AsyncIterator[tuple[str, list[int]]]:
    """A relay whose VNC endpoint is a unix socket counting the bytes it receives."""
    path = folder / "vnc.sock"
    received = [0]
    listener = await anyio.create_unix_listener(path)

    async def sink(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            # The server half of the handshake, as x11vnc: the relay speaks RFB upstream
            # itself (it answers viewers from a session already past ServerInit).
            reader = BufferedByteReceiveStream(stream)
            await stream.send(b"RFB 003.008\n")
            received[0] += len(await reader.receive_exactly(12))
            await stream.send(b"\x01\x01")
            received[0] += len(await reader.receive_exactly(1))
            await stream.send(b"\0\0\0\0")
            received[0] += len(await reader.receive_exactly(1))
            await stream.send(struct.pack(">HH16sI", 800, 600, bytes(16), 0))  # ServerInit
            while True:
                try:
                    received[0] += len(await reader.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return

    async def resolve(sandbox_id: str) -> str:
        return f"unix:{path}"

    app = FastAPI()
    app.include_router(vnc_router(resolve))
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, sink)
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(20):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await anyio.sleep(0.02)
        port = sock.getsockname()[1]
        try:
            yield f"ws://127.0.0.1:{port}/api/v1/sandboxes/sb-1/vnc?view_only=true", received
        finally:
            server.should_exit = True
            tg.cancel_scope.cancel()


async def test_a_viewer_sending_endless_bytes_is_dropped(short_home: Path) -> None:
    sent = 0

    async def flood(ws: ClientConnection) -> None:
        nonlocal sent
        with suppress(ConnectionClosed):
            while sent < 512 * MiB:
                await ws.send(b"y" * (256 * 1024))
                sent += 256 * 1024
                await anyio.lowlevel.checkpoint()  # send() need not yield: let the reader run

    async with relay_to_sink(short_home) as (url, received):
        async with connect(url, subprotocols=[Subprotocol("binary")]) as ws:
            await ws.send(HANDSHAKE)
            await ws.send(cut_text_header(1 << 30))  # announces 1 GiB, then keeps sending
            async with anyio.create_task_group() as tg:
                tg.start_soon(flood, ws)
                with pytest.raises(ConnectionClosed) as closed, anyio.fail_after(120):
                    while True:  # the handshake's answers, then the relay's answer to the
                        await ws.recv()  # flood: a close
                tg.cancel_scope.cancel()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_POLICY
        assert sent < 64 * MiB, f"the relay took {sent // MiB} MiB before closing"
    assert received[0] == len(HANDSHAKE)  # nothing of the clipboard reached the VNC server
