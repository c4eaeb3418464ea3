"""Join the host's unix sockets to channels on a VM's one virtio-serial link.

A VM has one port to its host, which its supervisor holds for the VM's life; the host's
clients (agent JSON-RPC clients, VNC viewers) still connect to one unix socket per kind, as
for other sandboxes. Here each connection accepted on a kind's listener opens a channel of
that kind (``hivecell.protocol.mux``) and bytes are pumped both ways until either side ends.

The guest is untrusted: it may not open channels towards the host (each OPEN is answered
with CLOSE), and a frame that breaks the mux protocol ends the proxy with
``GuestProtocolError``, as a bad JSON-RPC frame ends a ``GuestClient``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio
from anyio.abc import ByteStream, Listener, ObjectReceiveStream, TaskGroup

from hivecell.errors import GuestProtocolError
from hivecell.protocol.mux import DEFAULT_MAX_CHANNELS, Mux, MuxProtocolError, check_kind

log = logging.getLogger("hivecell.sandbox")
CHUNK = 64 * 1024
ACCEPT_BACKOFF = 0.1  # seconds after a failed accept (out of fds): a client must leave first
_ENDS = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


async def proxy(
    link: ByteStream,
    listeners: Mapping[str, Listener[ByteStream]],
    *,
    max_channels: int = DEFAULT_MAX_CHANNELS,
    restarts: ObjectReceiveStream[None] | None = None,
    admit: Callable[[Mux], Awaitable[None]] | None = None,
) -> None:
    """Serve ``listeners`` (kind -> listener) over ``link`` until the link ends (the VM
    died; returns) or the guest breaks the protocol (raises ``GuestProtocolError``).
    Every connection and the listeners are closed then; the caller keeps the link."""
    for kind in listeners:
        check_kind(kind)
    mux = Mux(link, initiator=True, accept=False, max_channels=max_channels, resync=True)
    error: MuxProtocolError | None = None
    async with contextlib.AsyncExitStack() as stack:
        for listener in listeners.values():
            await stack.enter_async_context(listener)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_admit_then_accept, mux, listeners, tg, admit)
            if restarts is not None:
                tg.start_soon(_resync_on_restart, mux, restarts)
            try:
                await mux.run()
            except MuxProtocolError as exc:
                error = exc
            tg.cancel_scope.cancel()  # the link is gone: so is every connection
    if error is not None:
        raise GuestProtocolError(
            f"the guest broke the channel protocol: {error}", op="mux", context=error.context
        ) from error


async def _resync_on_restart(mux: Mux, restarts: ObjectReceiveStream[None]) -> None:
    """The guest rebooted: its agent's mux is a new one, which knows none of our channels."""
    async for _ in restarts:
        log.info("the guest restarted: ending its connections and resyncing")
        mux.resync()


async def _admit_then_accept(
    mux: Mux,
    listeners: Mapping[str, Listener[ByteStream]],
    tg: TaskGroup,
    admit: Callable[[Mux], Awaitable[None]] | None,
) -> None:
    if admit is not None:
        await admit(mux)
    for kind, listener in listeners.items():
        tg.start_soon(_accept_loop, mux, kind, listener, tg)


async def _accept_loop(mux: Mux, kind: str, listener: Listener[ByteStream], tg: TaskGroup) -> None:
    """Accept until the listener closes; a failed accept (EMFILE) is retried, never fatal."""
    while True:
        try:
            conn = await listener.accept()  # type: ignore[attr-defined]
        except anyio.ClosedResourceError:
            return
        except (anyio.BrokenResourceError, OSError) as exc:
            log.warning("accept on the %s socket failed (%s); retrying", kind, exc.__cause__ or exc)
            await anyio.sleep(ACCEPT_BACKOFF)
            continue
        tg.start_soon(_relay, mux, kind, conn, name=f"mux {kind} connection")


async def _relay(mux: Mux, kind: str, conn: ByteStream) -> None:
    async with conn:
        try:
            channel = await mux.open(kind)
        except anyio.BrokenResourceError:
            return  # the mux ended meanwhile: the client sees end of stream
        async with channel, anyio.create_task_group() as tg:
            tg.start_soon(_pump, conn, channel, tg.cancel_scope)
            tg.start_soon(_pump, channel, conn, tg.cancel_scope)


async def _pump(source: ByteStream, sink: ByteStream, scope: anyio.CancelScope) -> None:
    with contextlib.suppress(*_ENDS):
        while True:
            await sink.send(await source.receive(CHUNK))
    scope.cancel()  # either side ending ends the other
