"""The JSON-RPC wire behaviour of a real agent, spoken to with raw bytes on real sockets."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hivecell.sandbox.guest_client as guest_client
from hivecell.errors import Unauthenticated
from hivecell.guest import transports
from hivecell.guest.agent import build_dispatcher
from hivecell.guest.context import GuestConfig, Services
from hivecell.guest.run import serve
from hivecell.guest.server import Connection
from hivecell.protocol.framing import MAX_FRAME_BYTES, FrameReader, Oversized
from hivecell.protocol.methods import NOTIFICATIONS
from hivecell.protocol.unixstream import connect_unix
from hivecell.sandbox.guest_client import GuestClient

pytestmark = pytest.mark.anyio

PING = b'{"jsonrpc":"2.0","id":"p","method":"ping"}\n'


class Peer:
    """The host end of a connection, speaking raw bytes and reading whole messages."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._frames = FrameReader(stream)
        self.heartbeats: list[dict[str, Any]] = []

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def message(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next message that is not a heartbeat."""
        with anyio.fail_after(timeout):
            while True:
                msg = await self._any_message()
                if msg.get("method") != "heartbeat":
                    return msg
                self.heartbeats.append(msg)

    async def _any_message(self) -> dict[str, Any]:
        frame = await self._frames.__anext__()
        assert not isinstance(frame, Oversized)
        msg = json.loads(frame)
        assert_valid_message(msg)
        return msg

    async def call(self, data: bytes) -> dict[str, Any]:
        await self.send(data)
        return await self.message()

    async def ping_works(self) -> bool:
        reply = await self.call(PING)
        return reply["id"] == "p" and reply["result"]["pong"] is True


def assert_valid_message(msg: Any) -> None:
    """A JSON-RPC 2.0 response or one of the documented notifications, nothing else."""
    assert isinstance(msg, dict) and msg.get("jsonrpc") == "2.0", msg
    if "method" in msg:
        assert msg["method"] in NOTIFICATIONS and "id" not in msg, msg
        return
    assert "id" in msg and (msg["id"] is None or isinstance(msg["id"], int | str)), msg
    assert ("result" in msg) != ("error" in msg), msg
    if "error" in msg:
        error = msg["error"]
        assert isinstance(error["code"], int) and isinstance(error["message"], str), msg
        assert set(error) <= {"code", "message", "data"}, msg


@asynccontextmanager
async def agent(
    config: GuestConfig | None = None, max_frame: int = MAX_FRAME_BYTES
) -> AsyncIterator[Path]:
    """The agent's listener + Connection (what ``run.serve`` wires up) on a unix socket.

    On exit every connection is cancelled at once, whatever its peer is sending: the
    agent's unix streams (``hivecell.protocol.unixstream``) take that without the event
    loop reporting an error from a callback, which the anyio test runner would fail on.
    """
    services = Services(config or GuestConfig(roots=[Path(tempfile.gettempdir())]))
    dispatcher = build_dispatcher()
    services.method_names = dispatcher.names

    async def handle(stream: ByteStream) -> None:
        await Connection(stream, dispatcher, services, max_frame).serve()

    with tempfile.TemporaryDirectory(prefix="hc") as folder:  # short: sun_path is 108 bytes
        sock = Path(folder) / "g.sock"
        listener = await transports.unix_listener(sock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(transports.serve_listener, listener, handle)
            yield sock
            tg.cancel_scope.cancel()


@asynccontextmanager
async def peer(
    config: GuestConfig | None = None, max_frame: int = MAX_FRAME_BYTES
) -> AsyncIterator[Peer]:
    async with agent(config, max_frame) as sock:
        stream = await connect_unix(str(sock))
        async with stream:
            yield Peer(stream)


# --- malformed frames ----------------------------------------------------------------------
async def test_invalid_json_is_a_parse_error() -> None:
    async with peer() as p:
        for junk in (b"{not json}\n", b'{"jsonrpc":"2.0",\n', b"\xff\xfe\n"):
            reply = await p.call(junk)
            assert reply["error"]["code"] == -32700
            assert reply["id"] is None
        assert await p.ping_works()


@pytest.mark.parametrize(
    "frame",
    [b"[1,2]", b'"text"', b"42", b"null", b"[]", b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]'],
)
async def test_non_objects_and_batches_are_invalid_requests(frame: bytes) -> None:
    async with peer() as p:
        reply = await p.call(frame + b"\n")
        assert reply["error"]["code"] == -32600
        assert await p.ping_works()


@pytest.mark.parametrize(
    "doc",
    [
        {"id": 5, "method": "ping"},
        {"jsonrpc": "1.0", "id": 5, "method": "ping"},
        {"jsonrpc": "2.0", "id": 5},
        {"jsonrpc": "2.0", "id": 5, "method": ""},
        {"jsonrpc": "2.0", "id": 5, "method": 7},
        {"jsonrpc": "2.0", "id": 5, "method": "ping", "params": [1]},
        {"jsonrpc": "2.0", "id": 5, "method": "ping", "extra": True},
    ],
)
async def test_malformed_requests_are_invalid_and_keep_the_id(doc: dict[str, Any]) -> None:
    async with peer() as p:
        reply = await p.call(json.dumps(doc).encode() + b"\n")
        assert reply["error"]["code"] == -32600
        assert reply["id"] == 5
        assert await p.ping_works()


async def test_unknown_method() -> None:
    async with peer() as p:
        reply = await p.call(b'{"jsonrpc":"2.0","id":9,"method":"no_such_method"}\n')
        assert (reply["id"], reply["error"]["code"]) == (9, -32601)
        assert "no_such_method" in reply["error"]["message"]


async def test_bad_params_name_the_field() -> None:
    async with peer() as p:
        reply = await p.call(b'{"jsonrpc":"2.0","id":1,"method":"wait","params":{"seconds":"x"}}\n')
        assert reply["error"]["code"] == -32602
        assert "seconds" in reply["error"]["message"]
        reply = await p.call(
            b'{"jsonrpc":"2.0","id":2,"method":"read_file","params":{"path":"/x","bogus":1}}\n'
        )
        assert reply["error"]["code"] == -32602
        assert "bogus" in reply["error"]["message"]
        assert reply["error"]["data"]["error"] == "invalid_params"


async def test_empty_lines_are_ignored() -> None:
    async with peer() as p:
        await p.send(b"\n\r\n   \n")
        assert await p.ping_works()


async def test_frame_over_the_limit_then_the_connection_still_works() -> None:
    async with peer(max_frame=1 << 20) as p:
        big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * (2 << 20)
        reply = await p.call(big + b'"}}\n')
        assert reply["error"]["code"] == -32600
        assert reply["id"] is None  # the id was never read
        assert "limit" in reply["error"]["message"]
        assert await p.ping_works()


async def test_frame_over_the_default_64_mib_limit() -> None:
    async with peer() as p:
        started = time.monotonic()
        chunk = b"y" * (1 << 20)
        for _ in range(65):
            await p.send(chunk)
        reply = await p.call(b"\n")
        assert reply["error"]["code"] == -32600
        assert str(65 << 20) in reply["error"]["message"]
        assert await p.ping_works()
        assert time.monotonic() - started < 5


async def test_notifications_get_no_response() -> None:
    async with peer() as p:
        await p.send(b'{"jsonrpc":"2.0","method":"ping"}\n')
        await p.send(b'{"jsonrpc":"2.0","method":"no_such_method"}\n')
        await p.send(b'{"jsonrpc":"2.0","method":"wait","params":{"seconds":"x"}}\n')
        await p.send(b'{"jsonrpc":"2.0","method":"cancel","params":{"id":123}}\n')
        assert await p.ping_works()
        with anyio.move_on_after(0.3) as quiet:
            extra = await p.message(timeout=1)
        assert quiet.cancelled_caught, f"unexpected reply {extra}"


async def test_cancel_of_an_unknown_id() -> None:
    async with peer() as p:
        reply = await p.call(b'{"jsonrpc":"2.0","id":1,"method":"cancel","params":{"id":"nope"}}\n')
        assert reply == {"jsonrpc": "2.0", "id": 1, "result": {"cancelled": False}}


async def test_cancel_of_an_inflight_request() -> None:
    async with peer() as p:
        await p.send(b'{"jsonrpc":"2.0","id":"slow","method":"wait","params":{"seconds":30}}\n')
        await anyio.sleep(0.1)
        cancel = await p.call(
            b'{"jsonrpc":"2.0","id":2,"method":"cancel","params":{"id":"slow"}}\n'
        )
        assert cancel["result"] == {"cancelled": True}
        cancelled = await p.message()
        assert cancelled["id"] == "slow"
        assert cancelled["error"]["code"] == -32006


async def test_cancel_still_works_after_an_id_was_reused() -> None:
    async with peer() as p:
        await p.send(b'{"jsonrpc":"2.0","id":"dup","method":"wait","params":{"seconds":0.05}}\n')
        await p.send(b'{"jsonrpc":"2.0","id":"dup","method":"wait","params":{"seconds":30}}\n')
        first = await p.message()
        assert first["id"] == "dup" and "result" in first
        cancel = await p.call(b'{"jsonrpc":"2.0","id":1,"method":"cancel","params":{"id":"dup"}}\n')
        assert cancel["result"] == {"cancelled": True}
        assert (await p.message())["error"]["code"] == -32006


async def test_heartbeats_arrive() -> None:
    config = GuestConfig(roots=[Path(tempfile.gettempdir())], heartbeat_interval=0.1)
    async with peer(config) as p:
        await anyio.sleep(0.55)
        assert await p.ping_works()
        seqs = [beat["params"]["seq"] for beat in p.heartbeats]
        assert len(seqs) >= 4
        assert seqs == list(range(1, len(seqs) + 1))


# --- host client health --------------------------------------------------------------------
async def test_client_stays_healthy_while_heartbeats_arrive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(guest_client, "HEARTBEAT_INTERVAL", 0.1)
    config = GuestConfig(roots=[Path(tempfile.gettempdir())], heartbeat_interval=0.1)
    async with agent(config) as sock, GuestClient(f"unix:{sock}") as client:
        for _ in range(8):
            await anyio.sleep(0.1)
            assert client.healthy


async def test_client_turns_unhealthy_when_heartbeats_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guest_client, "HEARTBEAT_INTERVAL", 0.05)
    with tempfile.TemporaryDirectory(prefix="hc") as folder:
        sock = Path(folder) / "silent.sock"
        accepted: list[ByteStream] = []

        async def silent_peer(stream: ByteStream) -> None:
            accepted.append(stream)  # a real socket that accepts and never says a word
            await anyio.sleep_forever()

        listener = await anyio.create_unix_listener(sock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent_peer)
            async with GuestClient(f"unix:{sock}") as client:
                assert client.healthy
                await anyio.sleep(0.2)
                assert not client.healthy
                assert accepted
            tg.cancel_scope.cancel()


async def test_client_turns_unhealthy_when_the_agent_goes_away() -> None:
    config = GuestConfig(roots=[Path(tempfile.gettempdir())], heartbeat_interval=0.1)
    with tempfile.TemporaryDirectory(prefix="hc") as folder:
        sock = Path(folder) / "g.sock"
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, Services(config), sock)
            await _until_accepting(lambda: anyio.connect_unix(sock))
            async with GuestClient(f"unix:{sock}") as client:
                assert client.healthy
                await client.call("shutdown")  # serve() returns and closes the connection
                with anyio.fail_after(5):
                    while client.healthy:  # noqa: ASYNC110 (a property, not an event)
                        await anyio.sleep(0.01)


async def _until_accepting(connect: Callable[[], Awaitable[ByteStream]]) -> None:
    with anyio.fail_after(5):
        while True:
            try:
                stream = await connect()
            except OSError:
                await anyio.sleep(0.01)
                continue
            await stream.aclose()
            return


# --- TCP with a token ----------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@asynccontextmanager
async def tcp_agent(token: str) -> AsyncIterator[int]:
    port = _free_port()
    config = GuestConfig(roots=[Path(tempfile.gettempdir())], token=token)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, Services(config), None, f"127.0.0.1:{port}")
        await _until_accepting(lambda: anyio.connect_tcp("127.0.0.1", port))
        yield port
        tg.cancel_scope.cancel()


async def test_tcp_requires_authentication() -> None:
    async with tcp_agent("s3cret-token") as port:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            p = Peer(stream)
            early = await p.call(PING)
            assert early["error"]["code"] == -32007
            wrong = await p.call(
                b'{"jsonrpc":"2.0","id":1,"method":"authenticate","params":{"token":"guess"}}\n'
            )
            assert wrong["error"]["code"] == -32007
            assert (await p.call(PING))["error"]["code"] == -32007
            cancel = await p.call(b'{"jsonrpc":"2.0","id":3,"method":"cancel","params":{"id":1}}\n')
            assert cancel["error"]["code"] == -32007
            right = await p.call(
                b'{"jsonrpc":"2.0","id":2,"method":"authenticate","params":{"token":"s3cret-token"}}\n'
            )
            assert right["result"] == {"ok": True}
            assert await p.ping_works()


async def test_tcp_with_the_guest_client() -> None:
    async with tcp_agent("s3cret-token") as port:
        async with GuestClient(f"tcp:127.0.0.1:{port}", token="s3cret-token") as client:
            assert (await client.call("ping"))["pong"] is True
        with pytest.raises(Unauthenticated):
            async with GuestClient(f"tcp:127.0.0.1:{port}", token="wrong"):
                pass


# --- fuzz ----------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# methods that cannot hurt the machine whatever their params (no exec, no writes, no X)
SAFE_METHODS = [
    "ping",
    "get_agent_info",
    "wait",
    "cancel",
    "authenticate",
    "stat_file",
    "read_file",
    "list_directory",
    "get_system_info",
    "no_such_method",
]
request_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2, None]),
        "id": st.none() | st.integers() | st.text(max_size=5) | st.floats() | st.booleans(),
        "method": st.sampled_from(SAFE_METHODS) | st.text(max_size=10),
        "params": json_values,
    },
)
garbage = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    request_like.map(lambda d: json.dumps(d).encode()),
)


@pytest.fixture
async def fuzz_peer(tmp_path: Path) -> AsyncIterator[Peer]:
    async with peer(GuestConfig(roots=[tmp_path], heartbeat_interval=0.05)) as p:
        yield p
        assert await p.ping_works()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(garbage, min_size=1, max_size=4))
async def test_garbage_never_breaks_the_connection(fuzz_peer: Peer, frames: list[bytes]) -> None:
    sentinel = f"sentinel-{time.monotonic_ns()}"
    await fuzz_peer.send(b"\n".join(frames) + b"\n")
    await fuzz_peer.send(
        json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "ping"}).encode() + b"\n"
    )
    while True:  # every reply on the way is checked by Peer.message
        reply = await fuzz_peer.message()
        assert reply.get("error", {}).get("code") != -32603, reply  # no internal errors
        if reply["id"] == sentinel:
            break
