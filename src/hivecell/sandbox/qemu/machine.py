"""What the supervisor asks of QEMU itself, over QMP (the ``qemu.qmp`` library).

- **State to and from a file**: a paused VM's device state is written with a migration
  into a file descriptor passed over the QMP socket (QEMU's own seccomp sandbox forbids
  ``exec:`` migrations); a VM started with ``-incoming defer`` reads one back. Its RAM goes
  beside it (ramfile.py). With the disk as it was at that moment, that is a whole running
  desktop, restored in well under a second of the host's time instead of a boot.
- **/shared on and off**: virtio-fs (vhost-user) cannot be migrated, so its device is never
  on QEMU's command line: it is hot-plugged into a PCIe root port after a boot or a restore
  and unplugged (the guest lets go of it first) before a state is saved.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
from anyio.abc import SocketAttribute
from qemu.qmp import EventListener, QMPClient
from qemu.qmp.protocol import ConnectError

from hivecell.errors import SandboxError
from hivecell.protocol import unixstream

T = TypeVar("T")

SHARED_DEVICE = "vfs0"
SHARED_CHARDEV = "vfs"
HOTPLUG_PORT = "hp0"
MIGRATION_POLL = 0.02
BALLOON_POLL = 0.2
BALLOON_STALL_S = 1.0  # a balloon that shrank and then held this long is as small as it gets
LISTEN_TIMEOUT = 30.0  # virtiofsd listens within milliseconds of binding, but TCG loads the host
UNPLUG_TIMEOUT = 30.0  # an ACPI eject under TCG on a loaded host; a guest that refuses is stuck


async def connect(socket: Path, name: str) -> QMPClient:
    qmp = QMPClient(name)

    async def attempt() -> None:
        try:
            await qmp.connect(str(socket))
        except ConnectError as exc:  # back to IDLE: it may be tried again
            if isinstance(exc.exc, ConnectionRefusedError):
                raise exc.exc from None
            raise

    await when_listening(attempt, socket, "QEMU's QMP monitor")
    return qmp


async def save_state(qmp: QMPClient, path: Path) -> None:
    """Pause the VM and write its devices' state to ``path`` (it stays paused: ``cont``
    resumes it). Its RAM is not in it: the caller copies that (ramfile.py)."""
    await qmp.execute("stop")
    await _leave_ram_out(qmp)
    await _pass_fd(qmp, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
    await qmp.execute("migrate", {"uri": "fd:state"})
    await _migration_done(qmp, "save")


async def load_state(qmp: QMPClient, path: Path) -> None:
    """Into a VM started with ``-incoming defer`` whose RAM holds what it held then
    (ramfile.py): it is paused with that state after."""
    await _leave_ram_out(qmp)
    await _pass_fd(qmp, os.open(path, os.O_RDONLY | os.O_NOFOLLOW))
    await qmp.execute("migrate-incoming", {"uri": "fd:state"})
    await _migration_done(qmp, "restore")


async def resume(qmp: QMPClient) -> None:
    await qmp.execute("cont")


async def when_listening(
    connect: Callable[[], Awaitable[T]], socket: Path, server: str, timeout: float = LISTEN_TIMEOUT
) -> T:
    """``connect()`` (to ``socket``) once its server listens. A unix socket's file appears
    at its bind, a moment before its listen, and a connect in between is refused: a warm
    start failed so with virtiofsd on a loaded host. Probing by connecting is no option:
    virtiofsd serves one connection and exits when it closes."""
    with anyio.move_on_after(timeout):
        while True:
            try:
                return await connect()
            except ConnectionRefusedError:
                await anyio.sleep(0.01)
    raise SandboxError(
        f"nothing listens on {socket} after {timeout:g} s: {server} did not start serving",
        op="start",
    )


async def connect_when_listening(
    socket: Path, server: str, timeout: float = LISTEN_TIMEOUT
) -> anyio.abc.SocketStream:
    return await when_listening(
        lambda: unixstream.connect_unix(str(socket)), socket, server, timeout
    )


async def attach_shared(qmp: QMPClient, socket: Path) -> None:
    """virtiofsd must be listening on ``socket``; the guest mounts the tag ``shared``. QEMU
    gets a connection made here, not the path: it runs as a uid that cannot reach it."""
    connection = await connect_when_listening(socket, "virtiofsd (/shared)")
    try:
        qmp.send_fd_scm(connection.extra(SocketAttribute.raw_socket).fileno())
        await qmp.execute("getfd", {"fdname": SHARED_CHARDEV})
    finally:
        await connection.aclose()  # QEMU holds its own copy
    await qmp.execute(
        "chardev-add",
        {
            "id": SHARED_CHARDEV,
            "backend": {
                "type": "socket",
                "data": {
                    "addr": {"type": "fd", "data": {"str": SHARED_CHARDEV}},
                    "server": False,
                },
            },
        },
    )
    await qmp.execute(
        "device_add",
        {
            "driver": "vhost-user-fs-pci",
            "id": SHARED_DEVICE,
            "chardev": SHARED_CHARDEV,
            "tag": "shared",
            "bus": HOTPLUG_PORT,
        },
    )


async def detach_shared(qmp: QMPClient) -> None:
    """Unplug the virtio-fs device (the guest must have unmounted it) and its chardev."""
    events = EventListener(("DEVICE_DELETED",))
    with qmp.listen(events):
        await qmp.execute("device_del", {"id": SHARED_DEVICE})
        try:
            with anyio.fail_after(UNPLUG_TIMEOUT):
                async for event in events:
                    data = event["data"]
                    if isinstance(data, dict) and data.get("device") == SHARED_DEVICE:
                        break
        except TimeoutError:
            raise SandboxError(
                f"the guest did not release /shared's device within {UNPLUG_TIMEOUT:.0f} s",
                op="snapshot",
                retryable=True,
            ) from None
    await qmp.execute("chardev-remove", {"id": SHARED_CHARDEV})


async def _leave_ram_out(qmp: QMPClient) -> None:
    """The shared RAM (the supervisor's memfd) stays out of the stream, both ways."""
    await qmp.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "x-ignore-shared", "state": True}]},
    )


async def _pass_fd(qmp: QMPClient, fd: int) -> None:
    """QEMU gets its own copy of ``fd`` as "state" (ours is closed either way)."""
    try:
        qmp.send_fd_scm(fd)
        await qmp.execute("getfd", {"fdname": "state"})
    finally:
        os.close(fd)


async def _migration_done(qmp: QMPClient, op: str) -> None:
    while True:
        status = await qmp.execute("query-migrate")
        if not isinstance(status, dict):
            raise SandboxError(f"QEMU answered query-migrate with {status!r}", op=op)
        state = status.get("status")
        if state == "completed":
            return
        if state in ("failed", "cancelled"):
            raise SandboxError(
                f"QEMU could not {op} the VM's state: {status.get('error-desc', state)}",
                op=op,
            )
        await anyio.sleep(MIGRATION_POLL)


async def squeeze(qmp: QMPClient, memory_mb: int, floor_mb: int, timeout: float) -> int:
    """Inflate the balloon towards ``floor_mb`` and let it go again: the pages the guest gives
    up are released on the host (holes in its RAM), then handed back empty (untouched until
    used). Before a warm state is saved: its clones then neither copy nor hold the guest's
    free pages. Returns the balloon's lowest size in MiB.

    Done when the balloon shrank and then held still for ``BALLOON_STALL_S`` (as far as the
    guest can spare); until it starts, it waits (up to ``timeout``): a just-restored guest
    under TCG can take seconds to answer, and giving up at the first unchanged reading left
    the whole RAM resident."""
    lowest = memory_mb
    await qmp.execute("balloon", {"value": floor_mb << 20})
    still = 0.0
    with anyio.move_on_after(timeout):
        while lowest > floor_mb and (lowest == memory_mb or still < BALLOON_STALL_S):
            await anyio.sleep(BALLOON_POLL)
            size = await _balloon_mb(qmp, memory_mb)
            still = 0.0 if size < lowest else still + BALLOON_POLL
            lowest = min(lowest, size)
    await qmp.execute("balloon", {"value": memory_mb << 20})
    # and until the guest has taken it all back: a state saved halfway would have every
    # clone go on deflating after its restore, in the moment it should answer
    # (polled: QEMU throttles its BALLOON_CHANGE events to one a second)
    with anyio.move_on_after(timeout):
        while (await _balloon_mb(qmp, memory_mb)) < memory_mb:  # noqa: ASYNC110 (QEMU's)
            await anyio.sleep(BALLOON_POLL)
    return lowest


async def _balloon_mb(qmp: QMPClient, memory_mb: int) -> int:
    actual = await qmp.execute("query-balloon")
    return int(actual["actual"]) >> 20 if isinstance(actual, dict) else memory_mb
