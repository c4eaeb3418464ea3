"""A VM's one link end to end: host ``proxy`` on unix sockets, guest ``serve_mux`` serving a
real agent, real ``GuestClient``s; and ``serve_mux_device`` on a pseudo-terminal standing in
for the virtio-serial port."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
import tty
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.abc import ByteStream, Listener

from hivecell.errors import GuestProtocolError, GuestUnavailable
from hivecell.guest.agent import build_dispatcher
from hivecell.guest.context import GuestConfig, Services
from hivecell.guest.muxserve import ChannelHandler, serve_mux, serve_mux_device
from hivecell.guest.server import Connection
from hivecell.protocol import unixstream
from hivecell.protocol.mux import (
    DATA,
    HEADER,
    OPEN,
    RESET,
    Mux,
    MuxProtocolError,
    encode_frame,
)
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.muxproxy import proxy
from tests.protocol.test_mux import RawPeer, link_pair

pytestmark = pytest.mark.anyio


@pytest.fixture
def sockets() -> Iterator[Path]:
    """Not tmp_path: unix socket paths must stay under 108 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="hc-mux-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def agent_handler(tmp_path: Path) -> Iterator[ChannelHandler]:
    services = Services(GuestConfig(roots=[tmp_path], heartbeat_interval=60))
    dispatcher = build_dispatcher()
    services.method_names = dispatcher.names

    async def agent(stream: ByteStream) -> None:
        await Connection(stream, dispatcher, services).serve()

    yield agent
    services.close()


async def listen(path: Path) -> Listener[ByteStream]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return await unixstream.unix_listener(sock)


async def echo(stream: ByteStream) -> None:
    while True:
        await stream.send(b"echo:" + await stream.receive())


async def boom(stream: ByteStream) -> None:
    await stream.receive()
    raise RuntimeError("a handler bug")


@asynccontextmanager
async def vm(
    folder: Path, kinds: list[str], handlers: Mapping[str, ChannelHandler]
) -> AsyncIterator[anyio.CancelScope]:
    """Host proxy and guest mux on one link; yields the scope of the guest's side, whose
    cancelling (and the link's closing) is the VM dying."""
    listeners = {kind: await listen(folder / f"{kind}.sock") for kind in kinds}
    async with link_pair() as (host_link, guest_link), anyio.create_task_group() as tg:
        guest_scope = anyio.CancelScope()

        async def guest() -> None:
            with guest_scope:
                await serve_mux(guest_link, handlers)

        tg.start_soon(proxy, host_link, listeners)
        tg.start_soon(guest)
        with anyio.fail_after(60):
            yield guest_scope
        tg.cancel_scope.cancel()


async def test_two_clients_ping_the_agent_at_once(
    sockets: Path, agent_handler: ChannelHandler
) -> None:
    async with (
        vm(sockets, ["agent"], {"agent": agent_handler}),
        GuestClient(f"unix:{sockets}/agent.sock") as first,
        GuestClient(f"unix:{sockets}/agent.sock") as second,
    ):
        answers: list[object] = []

        async def pings(client: GuestClient) -> None:
            for _ in range(20):
                answers.append((await client.call("ping"))["pong"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(pings, first)
            tg.start_soon(pings, second)
        assert answers == [True] * 40


async def test_clients_wait_until_the_proxy_admits_them_and_admit_has_the_link_meanwhile(
    sockets: Path, agent_handler: ChannelHandler
) -> None:
    """A restored VM's supervisor lets clients in only once the guest is back in the present
    (its clock, name and randomness renewed), and meanwhile uses the link itself (a first
    ping: the restored guest's code is translated again while the renewal runs)."""
    opened: list[str] = []
    agent_opened = anyio.Event()

    async def agent(stream: ByteStream) -> None:
        opened.append("agent")
        agent_opened.set()
        await agent_handler(stream)

    client_waits = anyio.Event()
    echoed: list[bytes] = []

    async def admit(mux: Mux) -> None:
        async with await mux.open("vnc") as own:
            await own.send(b"hi")
            echoed.append(await own.receive())
        await client_waits.wait()
        # a client let in would reach the guest within moments: give it a second (a slow
        # host can only make this pass, never fail)
        with anyio.move_on_after(1.0):
            await agent_opened.wait()
        assert opened == [], "a client got in before it was admitted"

    listeners = {"agent": await listen(sockets / "agent.sock")}
    async with link_pair() as (host_link, guest_link), anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(proxy, host_link, listeners, admit=admit))
        tg.start_soon(serve_mux, guest_link, {"agent": agent, "vnc": echo})
        with anyio.fail_after(30):
            async with GuestClient(f"unix:{sockets}/agent.sock") as client:
                client_waits.set()  # connected: in the listener's backlog
                assert (await client.call("ping"))["pong"] is True
        tg.cancel_scope.cancel()
    assert echoed == [b"echo:hi"] and opened == ["agent"]


async def test_each_kind_reaches_its_handler_and_a_failure_stays_in_its_channel(
    sockets: Path, agent_handler: ChannelHandler
) -> None:
    handlers = {"agent": agent_handler, "vnc": echo, "boom": boom}
    async with (
        vm(sockets, ["agent", "vnc", "boom", "nobody"], handlers),
        GuestClient(f"unix:{sockets}/agent.sock") as client,
    ):
        viewer = await unixstream.connect_unix(f"{sockets}/vnc.sock")
        async with viewer:
            await viewer.send(b"RFB 003.008\n")
            assert await viewer.receive() == b"echo:RFB 003.008\n"
            for kind in ("boom", "nobody"):  # a failing handler, a kind with none: EOF
                async with await unixstream.connect_unix(f"{sockets}/{kind}.sock") as other:
                    await other.send(b"x")
                    with pytest.raises(anyio.EndOfStream):
                        await other.receive()
            await viewer.send(b"again")
            assert await viewer.receive() == b"echo:again"
        assert (await client.call("ping"))["pong"] is True


async def test_when_the_vm_dies_the_proxy_closes_every_connection(
    sockets: Path, agent_handler: ChannelHandler
) -> None:
    listeners = {"agent": await listen(sockets / "agent.sock")}
    async with link_pair() as (host_link, guest_link), anyio.create_task_group() as tg:
        guest_scope = anyio.CancelScope()

        async def guest() -> None:
            with guest_scope:
                await serve_mux(guest_link, {"agent": agent_handler})

        proxy_done = anyio.Event()

        async def host() -> None:
            await proxy(host_link, listeners)  # returns: a dead VM broke no rule
            proxy_done.set()

        tg.start_soon(guest)
        tg.start_soon(host)
        async with GuestClient(f"unix:{sockets}/agent.sock") as client:
            assert (await client.call("ping"))["pong"] is True
            guest_scope.cancel()  # nothing more from the guest's side...
            await guest_link.aclose()  # ...and its port is gone
            with anyio.fail_after(10):
                await proxy_done.wait()
                lost = await client.wait_lost()
            assert "connection to the guest lost" in lost
            with pytest.raises(GuestUnavailable):
                await client.call("ping")
    with pytest.raises(OSError):  # the listener was closed with the proxy
        await unixstream.connect_unix(f"{sockets}/agent.sock")


async def test_a_guest_breaking_the_mux_protocol_ends_the_proxy(sockets: Path) -> None:
    listeners = {"agent": await listen(sockets / "agent.sock")}
    async with link_pair() as (host_link, raw_link), anyio.create_task_group() as tg:
        raw = RawPeer(raw_link)
        failed = anyio.Event()

        async def host() -> None:
            with pytest.raises(GuestProtocolError) as caught:
                await proxy(host_link, listeners)
            assert isinstance(caught.value.__cause__, MuxProtocolError)
            assert not caught.value.retryable
            failed.set()

        tg.start_soon(host)
        async with await unixstream.connect_unix(f"{sockets}/agent.sock") as conn:
            await conn.send(b"hello")
            stream_id, frame_type, nonce = await raw.frame()  # the host's resync first
            assert (stream_id, frame_type, len(nonce)) == (0, RESET, 8)
            await raw.send(encode_frame(0, RESET, nonce))
            assert await raw.frame() == (1, OPEN, b"agent")  # the host opened a channel
            assert await raw.frame() == (1, DATA, b"hello")
            await raw.send(HEADER.pack(1, 42, 0))  # no such frame type
            with pytest.raises(anyio.EndOfStream):  # the client is let go
                await conn.receive()
        with anyio.fail_after(10):
            await failed.wait()


async def test_serve_mux_propagates_a_protocol_error(agent_handler: ChannelHandler) -> None:
    async with link_pair() as (raw_link, guest_link):
        await RawPeer(raw_link).send(
            encode_frame(1, OPEN, b"agent"), encode_frame(1, OPEN, b"agent")
        )
        with anyio.fail_after(10), pytest.raises(MuxProtocolError, match="already open"):
            await serve_mux(guest_link, {"agent": agent_handler})


class PtyMaster(ByteStream):
    """The host end of a pseudo-terminal, as QEMU's end of the virtio-serial port."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            await anyio.wait_readable(self.fd)
            try:
                data = os.read(self.fd, max_bytes)
            except BlockingIOError:
                continue
            except OSError as exc:  # EIO: the device side is closed
                raise anyio.EndOfStream from exc
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        return None  # the test closes the fd


async def test_serve_mux_device_serves_a_character_device(
    sockets: Path, agent_handler: ChannelHandler
) -> None:
    master, device = os.openpty()
    tty.setraw(device)
    listeners = {"agent": await listen(sockets / "agent.sock")}
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_mux_device, Path(os.ttyname(device)), {"agent": agent_handler})
            tg.start_soon(proxy, PtyMaster(master), listeners)
            async with (
                GuestClient(f"unix:{sockets}/agent.sock") as first,
                GuestClient(f"unix:{sockets}/agent.sock") as second,
            ):
                with anyio.fail_after(10):
                    assert (await first.call("ping"))["pong"] is True
                    assert (await second.call("ping"))["pong"] is True
            tg.cancel_scope.cancel()
    finally:
        os.close(master)
        os.close(device)
