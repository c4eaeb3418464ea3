"""Relay VNC viewers from the host's socket to x11vnc's socket inside the box.

x11vnc only listens on a path it creates itself, and that path is in a folder the box
writes: a host that connected there could be sent (by a planted symlink) to another
sandbox's socket or a host service. So the host binds the viewers' socket in a folder the
box never sees and hands it over as an fd; here each viewer is joined to x11vnc's socket.
Resolving that path inside the box can only reach what the box itself can reach.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import anyio
from anyio.abc import ByteStream

from hivecell.guest import transports
from hivecell.protocol import unixstream

log = logging.getLogger("hivecell.guest.vnc")
CHUNK = 64 * 1024


async def serve(fd: int, target: Path) -> None:
    """Accept viewers on the host's socket ``fd`` until cancelled."""

    async def handle(viewer: ByteStream) -> None:
        await relay(viewer, target)

    await transports.serve_listener(await transports.fd_listener(fd), handle)


async def relay(viewer: ByteStream, target: Path) -> None:
    """Join one viewer (a host socket's connection, or a VM's mux channel) to x11vnc."""
    async with viewer:
        try:
            server = await unixstream.connect_unix(str(target))
        except OSError as exc:
            log.info("vnc viewer refused: x11vnc is not listening (%s)", exc)
            return  # start_vnc was not called, or x11vnc died: the viewer sees EOF
        async with server, anyio.create_task_group() as tg:
            tg.start_soon(_pump, viewer, server, tg.cancel_scope)
            tg.start_soon(_pump, server, viewer, tg.cancel_scope)


async def _pump(source: ByteStream, sink: ByteStream, scope: anyio.CancelScope) -> None:
    with contextlib.suppress(
        anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
    ):
        while True:
            await sink.send(await source.receive(CHUNK))
    scope.cancel()  # either side ending ends the other
