"""The host's ends of a VM's control port and of its supervisor's request socket, against
peers that misbehave: stale and hostile replies, silence, malformed requests."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import anyio
import pytest

from hivecell.errors import SandboxError
from hivecell.protocol import unixstream
from hivecell.sandbox.qemu import guestctl, ops
from hivecell.sandbox.qemu.guestctl import GuestControl
from hivecell.sandbox.qemu.saverequest import SaveRequest
from tests.protocol.test_mux import link_pair

pytestmark = pytest.mark.anyio


async def _guest_lines(stream: unixstream.UnixStream, count: int) -> list[str]:
    data = b""
    while data.count(b"\n") < count:
        data += await stream.receive()
    return data.decode().splitlines()


async def test_commands_wait_for_their_own_reply() -> None:
    async with link_pair() as (host_end, guest_end):
        control = GuestControl(host_end)
        await guest_end.send(b"ready\n")
        await control.wait_ready(5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(control.command, "mount")
            (line,) = await _guest_lines(guest_end, 1)
            tag = line.split()[0]
            assert line == f"{tag} mount"
            # a restored guest may still answer an earlier host's command first: skipped
            await guest_end.send(f"c999 error stale\n{tag} ok\n".encode())
        async with anyio.create_task_group() as tg:
            tg.start_soon(guest_end.send, b"c2 error mount failed\n")
            with pytest.raises(SandboxError, match="could not umount: mount failed"):
                await control.command("umount")


async def test_a_silent_guest_is_a_timeout_and_words_are_checked() -> None:
    async with link_pair() as (host_end, _guest_end):
        control = GuestControl(host_end)
        with pytest.raises(SandboxError, match="did not answer 'mount'") as caught:
            await control.command("mount", timeout=0.2)
        assert caught.value.retryable
        for bad in ("two words", "semi;colon", "", "$(reboot)", "a\nb"):
            with pytest.raises(ValueError):
                await control.command("hostname", bad)


async def test_an_endless_line_from_the_guest_is_refused() -> None:
    async with link_pair() as (host_end, guest_end):
        control = GuestControl(host_end)
        async with anyio.create_task_group() as tg:
            tg.start_soon(guest_end.send, b"x" * (guestctl.MAX_LINE + 10))
            with pytest.raises(SandboxError, match="control line over"):
                await control.wait_ready(5)


class _Saver:
    def __init__(self) -> None:
        self.requests: list[SaveRequest] = []

    async def save(self, request: SaveRequest) -> None:
        self.requests.append(request)
        if request.state.endswith("boom"):
            raise SandboxError("QEMU could not save")


async def test_the_ops_socket_validates_requests_and_reports_failures(tmp_path: Path) -> None:
    path = tmp_path / "ops.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(path))
    bound.listen(4)
    saver = _Saver()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ops.serve_ops, saver, bound)
        await ops.request(path, SaveRequest(op="save", state="/x/state.bin"))
        with pytest.raises(SandboxError, match="QEMU could not save"):
            await ops.request(path, SaveRequest(op="save", state="/x/boom"))
        for junk in (b"not json\n", b'{"op": "save", "state": "s", "extra": 1}\n', b"{}\n"):
            async with await unixstream.connect_unix(str(path)) as conn:
                await conn.send(junk)
                reply = json.loads(await conn.receive())
            assert reply["ok"] is False and "bad request" in reply["error"], reply
        tg.cancel_scope.cancel()
    assert [r.state for r in saver.requests] == ["/x/state.bin", "/x/boom"]


async def test_a_request_to_a_gone_supervisor_names_the_socket(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="does not answer"):
        await ops.request(tmp_path / "ops.sock", SaveRequest(op="save", state="s"))


def test_a_vm_supervisor_starts_without_the_request_model() -> None:
    """Every warm start waits for its supervisor's imports: pydantic (~55 ms here) comes
    with the first save request, not before the guest's first ping."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, hivecell.sandbox.qemu.supervisor; "
         "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert loaded.stdout.strip() == "[]", loaded.stdout


@pytest.mark.parametrize("answer", [b"not json\n", b"{" * 100 + b"\n", b"", None])
async def test_a_restored_guests_first_ping_never_ends_the_vm(
    answer: bytes | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor's own first ping to a restored guest (a warm-up) gets garbage, an
    end, or silence from a hostile or stuck agent: it returns, and the link still works."""
    from hivecell.guest.muxserve import serve_mux
    from hivecell.protocol.mux import Mux
    from hivecell.sandbox.qemu import supervisor

    monkeypatch.setattr(supervisor, "FIRST_PING_TIMEOUT", 0.5)

    async def agent(stream: anyio.abc.ByteStream) -> None:
        await stream.receive()
        if answer is None:
            await anyio.sleep_forever()
        await stream.send(answer or b"")

    async def echo(stream: anyio.abc.ByteStream) -> None:
        await stream.send(await stream.receive())

    async with link_pair() as (host_link, guest_link), anyio.create_task_group() as tg:
        mux = Mux(host_link, initiator=True, accept=False)
        tg.start_soon(mux.run)
        tg.start_soon(serve_mux, guest_link, {"agent": agent, "vnc": echo})
        with anyio.fail_after(10):
            await supervisor._first_ping(mux)
            async with await mux.open("vnc") as other:  # the link serves on
                await other.send(b"still here")
                assert await other.receive() == b"still here"
        tg.cancel_scope.cancel()
