"""``nat`` VMs behind the same host filter as local boxes: QEMU's user network runs in a
namespace of its own whose only way out is slirp4netns, so the filter, our DNS and the
connection log treat a VM exactly like a local box.

Real QEMU (TCG here), slirp4netns, nftables and DNS, in the two-namespace world of
test_network_policy.py: the VM's supervisor runs in "the host", every address it may try is
a test host in "the world". One worker runs all VM tests (xdist group): the first nat VM of
the run saves its shape's warm state, the second starts from it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.sandbox.base import NetworkConnection
from hivecell.sandbox.local import hostfilter
from hivecell.sandbox.qemu.provider import QemuProvider
from tests.sandbox import qemu_env
from tests.sandbox.host import shell
from tests.security.test_network_policy import (
    DNS,
    DNS_OVER_TCP,
    OTHER_PUBLIC,
    PRIVATE,
    PUBLIC,
    World,
    _log_until,
    _probe,
    _serve,
    world,
)

__all__ = ["world"]  # the fixture, shared with the local boxes' tests
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.xdist_group("qemu"),
    pytest.mark.timeout(1800),  # the first VM of a run may build the template (minutes)
]
SHAPE: dict[str, object] = {"width": 800, "height": 600, "memory_mb": 1024, "cpus": 1}
REFUSED = "ConnectionRefusedError ECONNREFUSED"
HOST_PORT = 8081
HOST_SERVICE = f"""
import socket
server = socket.create_server(("0.0.0.0", {HOST_PORT}))
server.settimeout(300)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(b"host service\\n")
"""


@pytest.fixture
def host_service(world: World) -> Iterator[None]:
    """A service of "the host" on all its addresses, loopback included."""
    with _serve(world.netns, HOST_SERVICE):
        yield


@pytest.fixture
async def vms(world: World, home: Path) -> AsyncIterator[QemuProvider]:
    """The VMs' provider; they are destroyed before the world goes."""
    provider = await anyio.to_thread.run_sync(qemu_env.provider, home)
    yield provider
    for info in await provider.list():
        await provider.destroy(info.id)


async def test_a_nat_vm_reaches_the_world_but_not_the_host_or_private_ranges(
    world: World, vms: QemuProvider, host_service: None
) -> None:
    vm = await world.create("qemu", network="nat", **SHAPE)
    async with await vms.connect(vm) as guest:
        assert await _probe(guest, PUBLIC) == PUBLIC
        for address, what in PRIVATE.items():
            assert await _probe(guest, address) == REFUSED, what
        # "The host": its address on the way out, and its loopback through QEMU's alias for
        # it (10.0.2.2 leads to the loopback of QEMU's own namespace, not the host's)
        assert await _probe(guest, "203.0.113.1", HOST_PORT) == REFUSED
        assert await _probe(guest, "10.0.2.2", HOST_PORT) == REFUSED
        # Names resolve through our DNS (the guest's gateway), which is all that listens
        # there: QEMU's alias for the host's loopback leads into QEMU's own namespace.
        assert await _probe(guest, "allowed.test") == PUBLIC
        assert await _probe(guest, "metadata.test") == REFUSED
        assert (await shell(guest, "cat /etc/resolv.conf"))["stdout"] == "nameserver 10.0.2.2\n"
        kernel = (await shell(guest, "uname -r"))["stdout"]
        assert "cloud" in kernel  # a VM's kernel, not the host's

    def complete(log: list[NetworkConnection]) -> bool:
        verdicts = {(c.ip, c.verdict) for c in log if c.proto == "tcp"}
        return {(PUBLIC, "allowed"), ("10.20.30.40", "denied")} <= verdicts

    log = await _log_until(vms, vm, complete, timeout=30)  # type: ignore[arg-type]
    questions = {(c.host, c.verdict) for c in log if c.proto == "dns"}
    assert ("allowed.test", "allowed") in questions


async def test_a_nat_vm_keeps_to_its_allowlist(world: World, vms: QemuProvider) -> None:
    allow = ["allowed.test", "private.test"]
    vm = await world.create("qemu", network="nat", network_allow=allow, **SHAPE)
    async with await vms.connect(vm) as guest:
        assert await _probe(guest, "allowed.test") == PUBLIC
        assert await _probe(guest, "other.test") == "dns gaierror -2"  # NXDOMAIN
        over_tcp = DNS_OVER_TCP.replace("127.0.0.53", "10.0.2.2")
        script = f"python3 - other.test <<'EOF'\n{over_tcp}EOF\n"
        assert (await shell(guest, script))["stdout"].strip() == "3 -"  # over TCP too
        # An allowlisted name does not open a private address; unnamed addresses stay shut.
        assert await _probe(guest, "private.test") == REFUSED
        assert await _probe(guest, OTHER_PUBLIC) == REFUSED
        assert await _probe(guest, DNS, 53) == REFUSED  # the real resolver: only through ours
    # the VM's entry in the host filter lives exactly as long as it runs (a start boots
    # the VM again: a minute under TCG, left to the local boxes' tests of the same code)
    assert len(await _entries_of(world, vm)) == 1
    await vms.stop(vm)
    assert await _entries_of(world, vm) == []
    log = await vms.network_log(vm)  # kept after the stop, counted to its end
    assert {(c.ip, c.verdict) for c in log if c.proto == "tcp"} >= {
        (PUBLIC, "allowed"),
        (OTHER_PUBLIC, "denied"),
    }


async def _entries_of(world: World, sandbox_id: str) -> list[int]:
    """The groups the host filter (in the world's "host" namespace) holds for a sandbox."""
    nft = hostfilter.find_nft()
    assert nft is not None
    argv = ["ip", "netns", "exec", world.netns, nft, "-j", "list", "table", "inet"]
    listing = await anyio.run_process([*argv, hostfilter.TABLE], check=False)
    if listing.returncode != 0:
        return []  # no table: the last sandbox took it with it
    table = hostfilter.Table.parse(listing.stdout.decode())
    return sorted(gid for gid, owner in table.slirp.items() if owner == sandbox_id)
