"""Serve every channel the host opens on a VM's one virtio-serial port.

A VM has a single port to its host (``/dev/virtio-ports/org.hivecell.agent.0``) but the host
needs many streams into the guest: JSON-RPC clients of the agent, VNC viewers. The host
multiplexes them (``hivecell.protocol.mux``); here each channel goes to the handler for its
kind ("agent": a JSON-RPC ``Connection``; "vnc": a relay to x11vnc), contained so that one
channel's failure never ends another.

The guest cannot tell when the host side of a virtio-serial port disconnects (reads just
block until the next host connects). That is fine: the host's VM supervisor holds the port
for the VM's whole life. Should the port still end, or a new host speak into the middle of
an old mux (a protocol error), ``serve_mux_device`` starts a fresh mux on the device.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio
from anyio.abc import ByteStream, TaskGroup

from hivecell.guest.transports import CharDeviceStream
from hivecell.protocol.mux import DEFAULT_MAX_CHANNELS, Mux, MuxProtocolError, check_kind

log = logging.getLogger("hivecell.guest")
ChannelHandler = Callable[[ByteStream], Awaitable[None]]
REOPEN_BACKOFF = 0.1  # seconds before a fresh mux on a device whose mux ended: poll gently


async def serve_mux(
    link: ByteStream,
    handlers: Mapping[str, ChannelHandler],
    *,
    max_channels: int = DEFAULT_MAX_CHANNELS,
) -> None:
    """Serve channels until the link ends (returns) or breaks the protocol (raises
    ``MuxProtocolError``); every channel and its handler are ended either way. A channel of
    a kind with no handler is closed. The caller keeps ownership of ``link``."""
    for kind in handlers:
        check_kind(kind)
    mux = Mux(link, initiator=False, max_channels=max_channels)
    error: MuxProtocolError | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_accept_loop, mux, handlers, tg)
        try:
            await mux.run()
        except MuxProtocolError as exc:  # raised below, not wrapped in the group
            error = exc
        tg.cancel_scope.cancel()  # the link is gone: so is every channel's handler
    if error is not None:
        raise error


async def serve_mux_device(path: Path, handlers: Mapping[str, ChannelHandler]) -> None:
    """``serve_mux`` on a virtio-serial port until cancelled, afresh whenever a mux ends."""
    while True:
        link = CharDeviceStream(path)
        try:
            await serve_mux(link, handlers)
            log.info("mux on %s ended; opening it again", path)
        except MuxProtocolError as exc:
            log.warning("host broke the mux protocol on %s (%s); starting afresh", path, exc)
        finally:
            with anyio.CancelScope(shield=True):
                await link.aclose()
        await anyio.sleep(REOPEN_BACKOFF)


async def _accept_loop(mux: Mux, handlers: Mapping[str, ChannelHandler], tg: TaskGroup) -> None:
    while True:
        try:
            kind, channel = await mux.accept()
        except anyio.BrokenResourceError:
            return  # the mux ended; serve_mux cancels the handlers
        handler = handlers.get(kind)
        if handler is None:
            log.warning("host opened a %r channel; no handler for that kind, closing it", kind)
            await channel.aclose()
            continue
        tg.start_soon(_contained, handler, channel, name=f"mux channel {channel.id} ({kind})")


async def _contained(handler: ChannelHandler, channel: ByteStream) -> None:
    """Like ``transports._contained``: a handler's error costs its own channel only."""
    try:
        await handler(channel)
    except Exception:
        log.exception("mux channel handler failed; the other channels keep serving")
    finally:
        with anyio.CancelScope(shield=True):
            await channel.aclose()
