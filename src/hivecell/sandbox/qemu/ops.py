"""The supervisor's request socket (``sockets/ops.sock``): what only the VM's owner can do.

The supervisor holds the VM's QMP connection and its control port for the VM's life, so a
provider (any process with the same home) asks it, one JSON line per connection, and reads
one JSON line back: ``{"ok": true}`` or ``{"ok": false, "error": "..."}``. Only the host's
processes reach the socket (it sits in the VM's 0700 folder, outside anything the guest
sees); requests are still validated, and one request runs at a time.
"""

from __future__ import annotations

import functools
import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from hivecell.errors import SandboxError
from hivecell.protocol import unixstream

if TYPE_CHECKING:  # its model (pydantic, ~55 ms) is imported by the first request, not at
    # every VM's start: the supervisor imports this module on the way to the guest's ping
    from hivecell.sandbox.qemu.saverequest import SaveRequest

MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0  # to send the request line: a client that dawdles is dropped
REPLY_TIMEOUT = 600.0  # a save writes the RAM and copies the disk: minutes on slow disks


class Saver(Protocol):
    async def save(self, request: SaveRequest) -> None: ...


async def serve_ops(vm: Saver, bound: socket.socket) -> None:
    listener = await unixstream.unix_listener(bound)
    async with listener:
        await listener.serve(functools.partial(_one, vm))


async def _one(vm: Saver, conn: ByteStream) -> None:
    from pydantic import ValidationError

    from hivecell.sandbox.qemu.saverequest import SaveRequest

    async with conn:
        try:
            with anyio.fail_after(REQUEST_TIMEOUT):
                line = await BufferedByteReceiveStream(conn).receive_until(b"\n", MAX_REQUEST)
            request = SaveRequest.model_validate_json(line)
            await vm.save(request)
            reply: dict[str, object] = {"ok": True}
        except (ValidationError, ValueError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        except (TimeoutError, anyio.IncompleteRead, anyio.EndOfStream):
            return
        except Exception as exc:  # reported to the requester, and the VM keeps running
            reply = {"ok": False, "error": str(exc) or type(exc).__name__}
        with anyio.move_on_after(REQUEST_TIMEOUT):
            await conn.send((json.dumps(reply) + "\n").encode())


async def request(ops_socket: Path, save: SaveRequest) -> None:
    """Ask a VM's supervisor; its failure comes back as a ``SandboxError``."""
    try:
        stream = await unixstream.connect_unix(str(ops_socket))
    except OSError as exc:
        raise SandboxError(
            f"the VM's supervisor does not answer on {ops_socket}: {exc}", op=save.op
        ) from exc
    async with stream:
        await stream.send((save.model_dump_json() + "\n").encode())
        try:
            with anyio.fail_after(REPLY_TIMEOUT):
                line = await BufferedByteReceiveStream(stream).receive_until(b"\n", MAX_REQUEST)
        except (anyio.IncompleteRead, anyio.EndOfStream):
            line = b'{"ok": false, "error": "the supervisor ended before it answered"}'
    reply = json.loads(line)
    if not reply.get("ok"):
        raise SandboxError(f"cannot {save.op} the VM: {reply.get('error')}", op=save.op)
