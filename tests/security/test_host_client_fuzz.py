"""The host's GuestClient against a hostile guest (issue 7, item 6, host side).

The box is untrusted, so the real attack surface is what a guest sends back. A real unix
socket server in this test plays the guest: it reads each request and answers with hostile
bytes (deep nesting, invalid UTF-8, NaN, wrong types where the client indexes, oversized
frames, garbage forever, silence, half frames). Every call must end, within its timeout,
in a result or a typed ``HivecellError`` (``GuestProtocolError`` for broken frames), and
nothing may escape the client's own task group into the caller.

Size: ``HIVECELL_FUZZ_FRAMES`` (read only here) scales the generated part with the guest suite
(one example of ~5 frames per 20 frames asked for: 150 examples by default).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hivecell.errors import GuestProtocolError, GuestUnavailable, HivecellError, Timeout
from hivecell.protocol.framing import MAX_FRAME_BYTES, FrameReader
from hivecell.sandbox.guest_client import GuestClient, _effective_timeout

pytestmark = [pytest.mark.anyio, pytest.mark.fuzz]

EXAMPLES = max(20, math.ceil(int(os.environ.get("HIVECELL_FUZZ_FRAMES", "3000")) / 20))
CALL_TIMEOUT = 1.0
SLACK = 2.0  # seconds past the call's timeout that still count as "no hang"
ID = b"$ID"  # replaced by the id of the request being answered


# --- a hostile guest on a real socket --------------------------------------------------------
@dataclass
class HostileGuest:
    """Answers every request with ``script`` (``$ID`` -> the request's id), then maybe closes."""

    sock: Path
    script: list[bytes] = field(default_factory=list)
    close_after: bool = False
    read_requests: bool = True

    async def handle(self, stream: ByteStream) -> None:
        # the client leaving mid-script is what it should do after a violation
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            async with stream:
                await self._answer(stream)

    async def _answer(self, stream: ByteStream) -> None:
        if not self.read_requests:  # a guest that never reads: the host's sends back up
            await anyio.sleep_forever()
        async for frame in FrameReader(stream):
            request = json.loads(frame)
            if "id" not in request:
                continue  # a cancel notification
            rid = str(request["id"]).encode()
            for line in self.script:
                await stream.send(line.replace(ID, rid) + b"\n")
            if self.close_after:
                return


@asynccontextmanager
async def hostile_guest() -> AsyncIterator[HostileGuest]:
    with tempfile.TemporaryDirectory(prefix="hch") as folder:
        guest = HostileGuest(Path(folder) / "g.sock")
        listener = await anyio.create_unix_listener(guest.sock)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, guest.handle)
            yield guest
            tg.cancel_scope.cancel()


async def outcome(
    guest: HostileGuest, method: str = "ping", timeout: float = CALL_TIMEOUT, **params: Any
) -> Any:
    """Call once on a fresh client; the result or the typed error, never anything else."""
    bound = _effective_timeout(timeout, params) or timeout  # the client's own wait rule
    started = time.monotonic()
    try:
        async with GuestClient(f"unix:{guest.sock}") as client:
            try:
                return await client.call(method, params, timeout=timeout)
            except HivecellError as exc:
                if isinstance(exc, GuestProtocolError):  # closed for good: later calls too
                    with pytest.raises(GuestProtocolError):
                        await client.call("ping", timeout=CALL_TIMEOUT)
                return exc
    finally:
        assert time.monotonic() - started < bound + SLACK


# --- named attacks ---------------------------------------------------------------------------
ATTACKS = {
    "deep nesting": [b"[" * 100_000],
    "deep inside a result": [
        b'{"jsonrpc":"2.0","id":$ID,"result":' + b"[" * 5000 + b"]" * 5000 + b"}"
    ],
    "invalid utf-8": [b'{"jsonrpc":"2.0","id":$ID,"result":"\xff"}'],
    "nan result": [b'{"jsonrpc":"2.0","id":$ID,"result":NaN}'],
    "huge number": [b'{"jsonrpc":"2.0","id":$ID,"result":' + b"9" * 10_000 + b"}"],
    "duplicate id": [b'{"jsonrpc":"2.0","id":$ID,"id":$ID,"result":1}'],
    "error is a number": [b'{"jsonrpc":"2.0","id":$ID,"error":5}'],
    "error code is text": [b'{"jsonrpc":"2.0","id":$ID,"error":{"code":"x","message":"m"}}'],
    "list id": [b'{"jsonrpc":"2.0","id":[$ID],"result":1}'],
    "object id": [b'{"jsonrpc":"2.0","id":{},"result":1}'],
    "result and error": [b'{"jsonrpc":"2.0","id":$ID,"result":1,"error":{"code":1,"message":"m"}}'],
    "params not an object": [b'{"jsonrpc":"2.0","method":"heartbeat","params":5}'],
    "exec.output with a list id": [
        b'{"jsonrpc":"2.0","method":"exec.output","params":{"request_id":[1],"data":"x"}}'
    ],
    "a request to the host": [b'{"jsonrpc":"2.0","id":1,"method":"shutdown"}'],
    "a batch": [b'[{"jsonrpc":"2.0","id":$ID,"result":1}]'],
    "not json": [b"hello"],
    "a bare string": [b'"' + b"x" * 100_000 + b'"'],
}
BIG_TIMEOUT = 30.0  # seconds for frames of megabytes to arrive on a loaded machine


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_each_attack_fails_the_call_with_a_protocol_error(name: str) -> None:
    async with hostile_guest() as guest:
        guest.script = ATTACKS[name]
        result = await outcome(guest)
        assert isinstance(result, GuestProtocolError), result
        assert result.retryable is False


async def test_too_many_containers_is_a_protocol_error() -> None:
    async with hostile_guest() as guest:
        guest.script = [b'{"jsonrpc":"2.0","id":$ID,"result":[' + b"[]," * 300_000 + b"[]]}"]
        result = await outcome(guest, timeout=BIG_TIMEOUT)
        assert isinstance(result, GuestProtocolError), result
        assert "arrays and objects" in str(result)


async def test_a_frame_over_the_limit_is_a_protocol_error_not_a_hang() -> None:
    async with hostile_guest() as guest:
        guest.script = [b'{"jsonrpc":"2.0","id":$ID,"result":"' + b"x" * MAX_FRAME_BYTES + b'"}']
        result = await outcome(guest, timeout=BIG_TIMEOUT)
        assert isinstance(result, GuestProtocolError), result
        assert "frame limit" in str(result)


async def test_a_half_frame_then_close_is_unavailable() -> None:
    async with hostile_guest() as guest:
        guest.script, guest.close_after = [b'{"jsonrpc":"2.0","id":$ID,"res'], True
        result = await outcome(guest)
        assert isinstance(result, GuestUnavailable), result


async def test_a_long_error_message_is_cut() -> None:
    async with hostile_guest() as guest:
        message = "m" * 1_000_000
        guest.script = [
            json.dumps({"jsonrpc": "2.0", "id": 0, "error": {"code": -32004, "message": message}})
            .encode()
            .replace(b'"id":0', b'"id":$ID')
        ]
        result = await outcome(guest)
        assert isinstance(result, HivecellError) and not isinstance(result, GuestUnavailable)
        assert len(result.message) <= 4096


async def test_a_guest_that_stops_reading_cannot_hold_a_send() -> None:
    """Before, ``call`` waited for the send without a timeout: a full socket hung it forever."""
    async with hostile_guest() as guest:
        guest.read_requests = False
        result = await outcome(guest, "write_file", path="a.txt", content="x" * (16 << 20))
        assert isinstance(result, GuestUnavailable), result


async def test_garbage_forever_ends_in_a_protocol_error() -> None:
    async with hostile_guest() as guest:
        guest.script = [os.urandom(4096).replace(b"\n", b" ") for _ in range(200)]
        result = await outcome(guest)
        assert isinstance(result, GuestProtocolError), result


async def test_heartbeats_without_an_answer_time_out() -> None:
    async with hostile_guest() as guest:
        guest.script = [b'{"jsonrpc":"2.0","method":"heartbeat","params":{"seq":1}}'] * 50
        result = await outcome(guest)
        assert isinstance(result, Timeout), result


# --- generated ------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
ids = st.sampled_from(["$ID", "$ID", "[$ID]", '"$ID"', "$ID.0", "true", "null", "{}", "-1"])
members = st.dictionaries(
    st.sampled_from(["jsonrpc", "result", "error", "method", "params", "data", "x"]),
    json_values,
    max_size=4,
)
TOKENS = [b"NaN", b"Infinity", b"1e999", b"9" * 5000, b"\xff", b"\xed\xa0\x80", b"[" * 3000]


@st.composite
def hostile_frame(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["response", "error", "notification", "mutated", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=256)).replace(b"\n", b" ")
    if kind == "notification":
        doc = {"jsonrpc": "2.0", "method": draw(st.sampled_from(["heartbeat", "exec.output", "x"]))}
        doc["params"] = draw(json_values | st.fixed_dictionaries({"request_id": json_values}))
        return json.dumps(doc).encode()
    doc = {"jsonrpc": draw(st.sampled_from(["2.0", "2.0", "1.0"])), **draw(members)}
    if kind == "error":
        doc["error"] = draw(json_values | st.fixed_dictionaries({"code": json_values}))
    body = json.dumps(doc).encode()
    frame = b'{"id":' + draw(ids).encode() + (b"," + body[1:] if len(body) > 2 else b"}")
    if kind == "mutated":
        at = draw(st.integers(0, len(frame)))
        frame = frame[:at] + draw(st.sampled_from(TOKENS)) + frame[at:]
    return frame


@dataclass(frozen=True)
class Script:
    frames: list[bytes]
    close_after: bool


scripts = st.builds(
    Script, frames=st.lists(hostile_frame(), min_size=1, max_size=8), close_after=st.booleans()
)


async def test_generated_hostile_replies() -> None:
    async with hostile_guest() as guest:
        seen: list[str] = []

        def one(script: Script) -> None:
            guest.script, guest.close_after = script.frames, script.close_after
            result = anyio.from_thread.run(outcome, guest)
            seen.append(type(result).__name__)

        run = settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(script=scripts)(one))
        await anyio.to_thread.run_sync(run)
        assert len(seen) >= EXAMPLES
        assert "GuestProtocolError" in seen


async def test_a_guest_that_never_accepts_is_unavailable_not_a_bare_timeout() -> None:
    """A listener whose backlog is full (an agent that stopped accepting) makes connects hang:
    the client gives up after connect_timeout with GuestUnavailable naming the setting."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):  # fill the accept queue; later SYNs are dropped, not refused
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            with pytest.raises(GuestUnavailable, match="connect_timeout") as caught:
                async with GuestClient(f"tcp:127.0.0.1:{port}", connect_timeout=0.5):
                    pass
            assert caught.value.op == "connect" and caught.value.retryable
        finally:
            for filler in fillers:
                filler.close()
