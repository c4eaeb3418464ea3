"""The VNC relay against a real sandbox's x11vnc, served by a real uvicorn on loopback."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.server.vnc import (
    CLOSE_POLICY,
    CLOSE_UNAVAILABLE,
    ViewOnlyFilter,
    provider_resolver,
    vnc_router,
)
from tests.server.rfb_client import RfbClient

pytestmark = pytest.mark.anyio
BINARY = [Subprotocol("binary")]


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await anyio.sleep(0.01)
        yield f"ws://127.0.0.1:{port}"
        server.should_exit = True


@asynccontextmanager
async def relay_to_sandbox(home: Path) -> AsyncIterator[tuple[str, str, LocalProvider]]:
    provider = LocalProvider(home)
    app = FastAPI()
    app.include_router(vnc_router(provider_resolver(provider)))
    info = await provider.create(SandboxSpec(width=800, height=600))
    try:
        async with serve(app) as base:
            yield f"{base}/api/v1/sandboxes/{info.id}/vnc", info.id, provider
    finally:
        await provider.destroy(info.id)


async def cursor(provider: LocalProvider, sandbox_id: str) -> tuple[int, int]:
    async with await provider.connect(sandbox_id) as guest:
        pos = await guest.call("get_cursor_position", {})
    return pos["x"], pos["y"]


@pytest.mark.slow
async def test_interactive_and_view_only_viewers(short_home: Path) -> None:
    async with relay_to_sandbox(short_home) as (url, sandbox_id, provider):
        start = await cursor(provider, sandbox_id)
        async with connect(f"{url}?view_only=true", subprotocols=BINARY) as ws:
            assert ws.subprotocol == "binary"
            viewer = RfbClient(ws)
            assert await viewer.handshake() == (800, 600)
            await viewer.pointer(123, 77)
            await viewer.update_request(800, 600)
            assert await viewer.first_update() >= 1  # display requests pass
        assert await cursor(provider, sandbox_id) == start  # input did not

        async with connect(url, subprotocols=BINARY) as ws:
            driver = RfbClient(ws)
            await driver.handshake()
            await driver.pointer(123, 77)
            await driver.update_request(800, 600)
            await driver.first_update()  # x11vnc has handled the pointer event by now
        assert await cursor(provider, sandbox_id) == (123, 77)


@pytest.mark.slow
async def test_view_only_viewer_speaking_garbage_is_closed(short_home: Path) -> None:
    async with (
        relay_to_sandbox(short_home) as (url, _, _),
        connect(f"{url}?view_only=true", subprotocols=BINARY) as ws,
    ):
        client = RfbClient(ws)
        await client.handshake()
        await ws.send(b"\x63" * 8)  # no such client message type
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == CLOSE_POLICY


async def test_unknown_sandbox_is_refused(short_home: Path) -> None:
    app = FastAPI()
    app.include_router(vnc_router(provider_resolver(LocalProvider(short_home))))
    async with serve(app) as base:
        # Closing before accepting is how ASGI refuses a WebSocket: an HTTP 403 to the client.
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{base}/api/v1/sandboxes/nope/vnc", subprotocols=BINARY):
                pass
        assert refused.value.response.status_code == 403


def test_filter_drops_input_and_keeps_display_requests() -> None:
    f = ViewOnlyFilter()
    assert f.feed(b"RFB 003.0") == b""  # the version is forwarded whole
    assert f.feed(b"08\n") == b"RFB 003.008\n"
    assert f.feed(b"\x01\x01") == b"\x01\x01"  # security None, ClientInit
    key = b"\x04\x01\0\0\0\0\xff\x0d"
    pointer = b"\x05\x00\x00\x10\x00\x20"
    request = b"\x03\x01\0\0\0\0\x03\x20\x02\x58"
    encodings = b"\x02\x00\x00\x02" + b"\0\0\0\0" + b"\xff\xff\xff\x21"
    cut = b"\x06\0\0\0\0\0\0\x03abc"
    stream = key + request + pointer + encodings + cut + request
    # byte by byte, to prove messages split across WebSocket frames are handled
    out = b"".join(f.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == request + encodings + request


def test_filter_refuses_what_it_cannot_vouch_for() -> None:
    with pytest.raises(Exception, match=r"3\.7 or 3\.8"):
        ViewOnlyFilter().feed(b"RFB 003.003\n")
    with pytest.raises(Exception, match="security type None"):
        ViewOnlyFilter().feed(b"RFB 003.008\n\x02")


def test_input_passes_only_while_the_policy_allows_it() -> None:
    # The server's policy (a task's desktop takes input only while taken over) is asked per
    # message, so handing back demotes a connected interactive viewer at once.
    taken_over = {"now": False}
    gate = ViewOnlyFilter(lambda: taken_over["now"])
    assert gate.feed(b"RFB 003.008\n\x01\x01") == b"RFB 003.008\n\x01\x01"  # handshake
    move = struct.pack(">BBHH", 5, 0, 10, 20)
    key = struct.pack(">BBxxI", 4, 1, 0x61)
    update = struct.pack(">BBHHHH", 3, 0, 0, 0, 800, 600)
    assert gate.feed(move + key + update) == update  # watching: display requests only
    taken_over["now"] = True
    assert gate.feed(move + key + update) == move + key + update  # taken over: everything
    taken_over["now"] = False
    assert gate.feed(key + move) == b""  # handed back: demoted mid-connection


@pytest.mark.slow
async def test_an_interactive_viewer_drives_a_desktop_the_policy_allows(short_home: Path) -> None:
    taken_over = {"now": False}
    provider = LocalProvider(short_home)
    app = FastAPI()
    app.include_router(
        vnc_router(provider_resolver(provider), may_drive=lambda _: taken_over["now"])
    )
    info = await provider.create(SandboxSpec(width=800, height=600))
    try:
        async with (
            serve(app) as base,
            connect(f"{base}/api/v1/sandboxes/{info.id}/vnc", subprotocols=BINARY) as ws,
        ):
            driver = RfbClient(ws)
            await driver.handshake()
            taken_over["now"] = True
            with anyio.fail_after(30):  # x11vnc applies pointer moves in batches: poll
                while await cursor(provider, info.id) != (123, 77):
                    await driver.pointer(123, 77)
                    await anyio.sleep(0.05)
    finally:
        await provider.destroy(info.id)


async def test_an_x11vnc_hanging_up_mid_handshake_is_a_clean_close(tmp_path: Path) -> None:
    """A desktop closing while a viewer connects: x11vnc starts its greeting and hangs up.
    The viewer gets the relay's 'unavailable' close, not a crashed handler (an HTTP 403)."""
    path = tmp_path / "vnc.sock"
    listener = await anyio.create_unix_listener(path)

    async def half_greeting(conn: anyio.abc.SocketStream) -> None:
        async with conn:
            await conn.send(b"RFB 00")  # 6 of the 12 bytes, then gone

    async def resolve(sandbox_id: str) -> str:
        return f"unix:{path}"

    app = FastAPI()
    app.include_router(vnc_router(resolve))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, half_greeting)
        async with serve(app) as base:
            url = f"{base}/api/v1/sandboxes/sb-0123abcd/vnc?view_only=true"
            async with connect(url, subprotocols=BINARY) as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
        tg.cancel_scope.cancel()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_UNAVAILABLE
