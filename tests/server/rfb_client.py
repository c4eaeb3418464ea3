"""A minimal RFB 3.8 client over a WebSocket, enough to prove what the relay forwards."""

from __future__ import annotations

import struct
from typing import Any

from websockets.asyncio.client import ClientConnection


class RfbClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._buf = bytearray()
        self.bytes_per_pixel = 4

    async def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            message: Any = await self.ws.recv()
            self._buf += message if isinstance(message, bytes) else message.encode()
        out, self._buf = bytes(self._buf[:n]), self._buf[n:]
        return out

    async def handshake(self) -> tuple[int, int]:
        """Version, security None, ClientInit; returns the framebuffer size from ServerInit."""
        version = await self._read(12)
        assert version.startswith(b"RFB 003.")
        await self.ws.send(b"RFB 003.008\n")
        (count,) = await self._read(1)
        types = await self._read(count)
        assert 1 in types, f"security None not offered: {list(types)}"
        await self.ws.send(b"\x01")
        assert await self._read(4) == b"\0\0\0\0"
        await self.ws.send(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", await self._read(4))
        self.bytes_per_pixel = (await self._read(16))[0] // 8  # pixel format: bits first
        (name_len,) = struct.unpack(">I", await self._read(4))
        await self._read(name_len)
        return width, height

    async def pointer(self, x: int, y: int, buttons: int = 0) -> None:
        await self.ws.send(struct.pack(">BBHH", 5, buttons, x, y))

    async def update_request(self, width: int, height: int) -> None:
        await self.ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))

    async def first_update(self) -> int:
        """Reads a FramebufferUpdate header (message type 0); returns its rectangle count."""
        kind = (await self._read(1))[0]
        assert kind == 0, f"expected a framebuffer update, got message type {kind}"
        await self._read(1)
        (rects,) = struct.unpack(">H", await self._read(2))
        return int(rects)

    async def whole_update(self) -> int:
        """Reads a whole FramebufferUpdate (raw rectangles: no SetEncodings was sent), so the
        next message can be read too; returns its rectangle count."""
        rects = await self.first_update()
        for _ in range(rects):
            _, _, width, height, encoding = struct.unpack(">HHHHi", await self._read(12))
            assert encoding == 0, f"expected raw rectangles, got encoding {encoding}"
            await self._read(width * height * self.bytes_per_pixel)
        return rects
