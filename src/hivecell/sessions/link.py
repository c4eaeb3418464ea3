"""The server's side of a supervisor's socket: framed requests and replies over a stream
opened without following links (``sandbox.unixsock``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from hivecell.errors import HivecellError
from hivecell.sandbox.unixsock import connect_unix_nofollow
from hivecell.sessions import framing
from hivecell.sessions.framing import Frame, FrameType
from hivecell.sessions.spec import SOCKET, SupervisorStatus

REPLY_TIMEOUT = 15.0


class SupervisorGone(HivecellError):
    code = "session_exited"


class Link:
    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._reader = BufferedByteReceiveStream(stream)

    @classmethod
    async def open(cls, folder: Path) -> Link:
        try:
            return cls(await connect_unix_nofollow(folder / SOCKET))
        except OSError as exc:
            raise SupervisorGone(
                f"the session's supervisor does not answer ({exc.strerror}): restart or "
                "destroy the session",
                op="session_connect",
                context={"session": folder.name},
            ) from None

    async def send(self, frame: bytes) -> None:
        await self.stream.send(frame)

    async def receive(self) -> Frame:
        return framing.decode(await self.receive_raw())

    async def receive_raw(self) -> bytes:
        """One frame as it came, its header checked: what a relay forwards unchanged."""
        header = await self._reader.receive_exactly(framing.HEADER.size)
        _kind, _agent, length = framing.parse_header(header)
        payload = await self._reader.receive_exactly(length) if length else b""
        return header + payload

    async def request(self, message: dict[str, Any]) -> SupervisorStatus:
        """A control op; the supervisor answers with its status."""
        await self.send(framing.control(message))
        with anyio.fail_after(REPLY_TIMEOUT):
            while True:
                frame = await self.receive()
                if frame.type is FrameType.CONTROL and frame.control()["op"] == "status":
                    return SupervisorStatus.model_validate(frame.control())

    async def aclose(self) -> None:
        await self.stream.aclose()
