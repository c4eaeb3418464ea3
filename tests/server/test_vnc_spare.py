"""Spare VNC sessions (``server/vncspare.py``) against a real sandbox's x11vnc.

A new viewer must get its desktop from a session opened ahead of time, without waiting for
x11vnc; the sessions stay per viewer, so one viewer's garbage or departure mid-update does
not reach the others, and the input gate still decides what reaches the desktop.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path

import anyio
import pytest
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hivecell.errors import SandboxNotFound
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.server.vnc import CLOSE_POLICY, provider_resolver, vnc_router
from hivecell.server.vncspare import SparePool
from tests.server.rfb_client import RfbClient
from tests.server.test_vnc import BINARY, cursor, serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
WIDTH, HEIGHT = 800, 600


@asynccontextmanager
async def spare_relay(
    home: Path, drive: dict[str, bool]
) -> AsyncIterator[tuple[str, str, LocalProvider, SparePool]]:
    provider = LocalProvider(home)
    spares = SparePool()
    app = FastAPI()
    policy = vnc_router(
        provider_resolver(provider), may_drive=lambda _: drive["now"], spares=spares
    )
    app.include_router(policy)
    info = await provider.create(SandboxSpec(width=WIDTH, height=HEIGHT))
    try:
        async with serve(app) as base:
            yield f"{base}/api/v1/sandboxes/{info.id}/vnc", info.id, provider, spares
    finally:
        with suppress(SandboxNotFound):  # a test may have removed it
            await provider.destroy(info.id)


async def spare_ready(spares: SparePool, sandbox_id: str) -> None:
    with anyio.fail_after(30):
        while not spares.ready(sandbox_id):  # noqa: ASYNC110 - state of the pool, polled
            await anyio.sleep(0.02)


async def shell(provider: LocalProvider, sandbox_id: str, command: str) -> None:
    async with await provider.connect(sandbox_id) as guest:
        result = await guest.call("run_shell", {"command": command})
    assert result["exit_code"] == 0, result


async def test_a_new_viewer_gets_its_desktop_while_x11vnc_is_busy(short_home: Path) -> None:
    # x11vnc stopped (SIGSTOP) answers nobody: a viewer can finish its handshake only from
    # a session opened ahead of time. The relay without spares hangs here.
    drive = {"now": True}
    async with (
        spare_relay(short_home, drive) as (url, sandbox_id, provider, spares),
        connect(f"{url}?view_only=true", subprotocols=BINARY) as watcher,
    ):
        await RfbClient(watcher).handshake()
        await spare_ready(spares, sandbox_id)
        await shell(provider, sandbox_id, "pkill -STOP -x x11vnc")
        try:
            async with connect(url, subprotocols=BINARY) as ws:
                driver = RfbClient(ws)
                with anyio.fail_after(5):
                    assert await driver.handshake() == (WIDTH, HEIGHT)
                await shell(provider, sandbox_id, "pkill -CONT -x x11vnc")
                with anyio.fail_after(30):  # x11vnc applies pointer moves in batches: poll
                    while await cursor(provider, sandbox_id) != (321, 123):
                        await driver.pointer(321, 123)
                        await anyio.sleep(0.05)
                await driver.update_request(WIDTH, HEIGHT)
                assert await driver.whole_update() >= 1
        finally:
            await shell(provider, sandbox_id, "pkill -CONT -x x11vnc")
        await spare_ready(spares, sandbox_id)  # the watcher opened the next one


async def test_many_viewers_are_isolated_from_each_other(short_home: Path) -> None:
    drive = {"now": False}
    async with spare_relay(short_home, drive) as (url, sandbox_id, provider, spares):
        start = await cursor(provider, sandbox_id)
        async with AsyncExitStack() as stack:
            viewers = [
                RfbClient(await stack.enter_async_context(connect(url, subprotocols=BINARY)))
                for _ in range(5)
            ]
            for viewer in viewers:
                assert await viewer.handshake() == (WIDTH, HEIGHT)
            garbage, leaver, *others = viewers
            # One viewer sends a message no RFB client sends: only it is closed.
            await garbage.ws.send(b"\x63" * 8)
            with pytest.raises(ConnectionClosed) as closed:
                await garbage.ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_POLICY
            # One leaves in the middle of a full update.
            await leaver.update_request(WIDTH, HEIGHT)
            await leaver.first_update()
            await leaver.ws.close()
            # Not taken over: nobody's input lands, whoever sends it.
            for viewer in others:
                await viewer.pointer(200, 100)
                await viewer.update_request(WIDTH, HEIGHT)
                assert await viewer.whole_update() >= 1
            assert await cursor(provider, sandbox_id) == start
            # Taken over: the remaining viewers still work and input reaches the desktop.
            drive["now"] = True
            with anyio.fail_after(30):
                while await cursor(provider, sandbox_id) != (200, 100):
                    await others[0].pointer(200, 100)
                    await anyio.sleep(0.05)
            for viewer in others:
                await viewer.update_request(WIDTH, HEIGHT)
                assert await viewer.whole_update() >= 1
        await spare_ready(spares, sandbox_id)  # the spare outlives its last viewer


async def test_an_rfb_37_viewer_is_answered_without_a_security_result(short_home: Path) -> None:
    async with (
        spare_relay(short_home, {"now": False}) as (url, _, _, _),
        connect(url, subprotocols=BINARY) as ws,
    ):
        assert await _read(ws, 12) == b"RFB 003.008\n"
        await ws.send(b"RFB 003.007\n")
        assert await _read(ws, 2) == b"\x01\x01"
        await ws.send(b"\x01")
        await ws.send(b"\x01")  # ClientInit; 3.7 gets no SecurityResult after None
        width, height = struct.unpack(">HH", await _read(ws, 4))
        assert (width, height) == (WIDTH, HEIGHT)


async def test_a_spare_of_a_removed_sandbox_is_dropped(short_home: Path) -> None:
    async with spare_relay(short_home, {"now": False}) as (url, sandbox_id, provider, spares):
        async with connect(url, subprotocols=BINARY) as ws:
            await RfbClient(ws).handshake()
            await spare_ready(spares, sandbox_id)
        assert spares.ready(sandbox_id)
        await provider.destroy(sandbox_id)
        with anyio.fail_after(30):
            while spares.ready(sandbox_id):  # the closed end shows once the box is gone
                await spares.prune()
                await anyio.sleep(0.05)


_buffers: dict[int, bytearray] = {}


async def _read(ws: ClientConnection, size: int) -> bytes:
    buf = _buffers.setdefault(id(ws), bytearray())
    with anyio.fail_after(10):
        while len(buf) < size:
            message = await ws.recv()
            buf += message if isinstance(message, bytes) else message.encode()
    out = bytes(buf[:size])
    del buf[:size]
    return out
