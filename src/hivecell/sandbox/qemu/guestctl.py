"""The host end of a VM's control port: root-only housekeeping the guest agent cannot do.

The guest agent runs as the sandbox user, yet a VM that was restored from a snapshot needs
root to come back into the present: set its clock, take its new hostname, reseed its random
generator, mount /shared again. A root process in the guest (hivecell/guest/rootctl.py)
reads one command per line from the virtio-serial port ``org.hivecell.control.0`` and
answers each with ``<id> ok`` or ``<id> error <why>``; the port's device is root's only, so
nothing the sandbox user runs can speak on it. The supervisor holds the host end for the
VM's life.

The guest is untrusted here too: its lines are bounded, and a reply that never comes is a
timeout, never a hang.
"""

from __future__ import annotations

import secrets

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from hivecell.errors import SandboxError

PORT = "org.hivecell.control.0"
MAX_LINE = 4096
REPLY_TIMEOUT = 60.0  # a mount under TCG on a loaded host takes seconds, never a minute
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


class GuestControl:
    """Commands to the guest's root control loop, one at a time."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._lines = BufferedByteReceiveStream(stream)
        self._lock = anyio.Lock()
        self._next = 0

    async def wait_ready(self, timeout: float) -> None:
        """A freshly booted guest says ``ready`` once its control loop runs."""
        with anyio.fail_after(timeout):
            while (await self._line()) != "ready":
                pass

    async def command(self, *words: str, timeout: float = REPLY_TIMEOUT) -> None:
        for word in words:
            if not word or not set(word) <= _SAFE:
                raise ValueError(f"not a control word: {word!r}")
        async with self._lock:
            self._next += 1
            tag = f"c{self._next}"
            await self._stream.send((" ".join((tag, *words)) + "\n").encode())
            try:
                with anyio.fail_after(timeout):
                    while True:
                        reply = (await self._line()).split(" ", 2)
                        if reply[0] == tag:  # stale replies (a restored guest's) are skipped
                            break
            except TimeoutError:
                raise SandboxError(
                    f"the guest did not answer {words[0]!r} within {timeout:.0f} s",
                    op="control",
                    context={"command": words[0]},
                    retryable=True,
                ) from None
        if reply[1:2] != ["ok"]:
            raise SandboxError(
                f"the guest could not {words[0]}: {' '.join(reply[2:]) or 'no reason given'}",
                op="control",
                context={"command": words[0]},
            )

    async def come_back(self, hostname: str, now: float) -> None:
        """After a restore: the present time, this sandbox's name, fresh randomness."""
        await self.command("come-back", f"{now:.6f}", hostname, secrets.token_hex(32))

    async def _line(self) -> str:
        try:
            raw = await self._lines.receive_until(b"\n", MAX_LINE)
        except anyio.IncompleteRead:
            raise SandboxError("the guest closed its control port", op="control") from None
        except anyio.DelimiterNotFound:
            raise SandboxError(
                f"the guest sent a control line over {MAX_LINE} bytes", op="control"
            ) from None
        return raw.decode(errors="replace").strip()
