"""Serve the agent on one transport until a ``shutdown``/``reboot`` call or cancellation."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
from anyio.abc import ByteStream

from hivecell.guest import muxserve, transports, vncrelay
from hivecell.guest.agent import build_dispatcher
from hivecell.guest.context import Services
from hivecell.guest.server import Connection

log = logging.getLogger("hivecell.guest")


async def serve(
    services: Services,
    unix: Path | None = None,
    tcp: str | None = None,
    device: Path | None = None,
    *,
    listen_fd: int | None = None,
    vnc_fd: int | None = None,
    mux_device: Path | None = None,
) -> str:
    """Returns the stop reason ("shutdown" or "reboot").

    ``listen_fd``: serve on this already bound unix socket instead of a path; ``vnc_fd``:
    relay viewers connecting there to x11vnc's socket (see ``vncrelay``). ``mux_device``: a
    VM's virtio-serial port carrying many host streams (agent clients and VNC viewers; see
    ``hivecell.protocol.mux``).
    """
    dispatcher = build_dispatcher()
    services.method_names = dispatcher.names

    async def handle(stream: ByteStream) -> None:
        await Connection(stream, dispatcher, services).serve()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(services.idle.run)
            if mux_device is not None:
                tg.start_soon(_serve_mux, mux_device, handle, services.config.vnc_socket)
            elif listen_fd is not None:
                tg.start_soon(_serve_fd, listen_fd, handle)
            else:
                tg.start_soon(_listen, handle, unix, tcp, device, services)
            if vnc_fd is not None:
                tg.start_soon(vncrelay.serve, vnc_fd, services.config.vnc_socket)
            await services.stop.wait()
            await anyio.sleep(0.05)  # let the shutdown reply reach the host
            tg.cancel_scope.cancel()
    finally:
        await _stop_children(services)
        services.close()
    return services.stop_reason


async def _serve_fd(fd: int, handle) -> None:  # type: ignore[no-untyped-def]
    listener = await transports.fd_listener(fd)
    log.info("serving")
    await transports.serve_listener(listener, handle)


async def _serve_mux(path: Path, handle, vnc_socket: Path) -> None:  # type: ignore[no-untyped-def]
    async def vnc(viewer: ByteStream) -> None:
        await vncrelay.relay(viewer, vnc_socket)

    log.info("serving on %s", path)
    await muxserve.serve_mux_device(path, {"agent": handle, "vnc": vnc})


async def _listen(handle, unix, tcp, device, services: Services) -> None:  # type: ignore[no-untyped-def]
    if unix is not None:
        await transports.serve_listener(await transports.unix_listener(unix), handle)
    elif tcp is not None:
        host, _, port = tcp.rpartition(":")
        listener = await transports.tcp_listener(
            host or "127.0.0.1", int(port), services.config.token
        )
        await transports.serve_listener(listener, handle)
    elif device is not None:
        await transports.serve_device(device, handle)


async def _stop_children(services: Services) -> None:
    with anyio.CancelScope(shield=True):
        vnc = services.vnc
        if vnc is not None:
            vnc.terminate()
            with anyio.move_on_after(1):
                await vnc.wait()
            services.vnc = None
