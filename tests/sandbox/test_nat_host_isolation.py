"""``nat`` sandboxes reach other hosts but never the host they run on, through any address.

Real boxes, real nftables. The non-host destination is a test host made here: a network
namespace behind a veth pair, on an unused /30 of 203.0.113.0/24 (a documentation range,
which the filter leaves open; private ranges are tested in tests/security/test_network_policy.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio import to_thread

from hivecell.errors import ConfigError
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local import dnsproxy, hostfilter
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox.conftest import MakeProvider
from tests.sandbox.host import host_ipv4_addresses, shell

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BANNER = "hello from the test host"
NFT = hostfilter.find_nft() or "nft"
PROBE = """
import errno, socket, sys
try:
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
except OSError as exc:
    print(type(exc).__name__, errno.errorcode.get(exc.errno or 0, exc.errno))
    sys.exit(1)
print("connected", flush=True)
conn.settimeout(3)
print(conn.recv(64).decode().strip())
"""
TEST_HOST_SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], 0))
server.settimeout(120)  # stops by itself should the test die without killing it
print(server.getsockname()[1], flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(sys.argv[2].encode() + b"\\n")
    conn.close()
"""
REFUSE_NAT = """
import sys, anyio
from pathlib import Path
from hivecell.errors import ConfigError
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider

async def main() -> None:
    try:
        await LocalProvider(Path(sys.argv[1])).create(SandboxSpec(network="nat"))
    except ConfigError as exc:
        print(exc)
        return
    print("created a nat sandbox")

anyio.run(main)
"""

# Run in a network namespace of its own (``unshare --net``): its nftables are its own, so
# flushing them cannot unfilter the sandboxes of tests running beside this one.
FLUSHED = """
import json, subprocess, sys
from hivecell.sandbox.local.hostfilter import TABLE, BoxRules, HostFilter, Table
nft = sys.argv[1]
host_filter = HostFilter(nft)
box_one = BoxRules("sb-one", {"restricted": True, "cidr4": ["198.51.100.0/24"]})
box_two = BoxRules("sb-two", {})

def table():
    listing = subprocess.run([nft, "-j", "list", "table", "inet", TABLE],
                             capture_output=True, text=True)
    return Table.parse(listing.stdout) if listing.returncode == 0 else None

one, two = host_filter.attach(box_one), host_filter.attach(box_two)
steps = {"attached": table().slirp == {one: "sb-one", two: "sb-two"}}
subprocess.run([nft, "flush", "ruleset"], check=True)
steps["flushed"] = host_filter.ensure(box_one, one, {}) and table().slirp == {one: "sb-one"}
steps["left alone"] = not host_filter.ensure(box_one, one, {})
steps["two back"] = host_filter.ensure(box_two, two, {}) and table().intact()
subprocess.run([nft, "flush", "chain", "inet", TABLE, "slirp"], check=True)
steps["rules back"] = host_filter.ensure(box_one, one, {}) and table().intact()
subprocess.run([nft, "flush", "set", "inet", TABLE, "denied4"], check=True)
steps["ranges back"] = host_filter.ensure(box_one, one, {}) and table().intact()
steps["entries kept"] = table().slirp == {one: "sb-one", two: "sb-two"}
steps["policy kept"] = table().sets["open"] == [two] and len(table().sets["cidr4"]) == 1
subprocess.run([nft, "delete", "element", "inet", TABLE, "open", f"{{ {two} }}"], check=True)
steps["open back"] = host_filter.ensure(box_two, two, {}) and table().sets["open"] == [two]
host_filter.add_named(one, {"198.51.100.7": 60})
host_filter.add_named(two, {"198.51.100.8": 60})
host_filter.detach("sb-one")
steps["one left"] = table().slirp == {two: "sb-two"} and table().sets["cidr4"] == []
steps["its names gone"] = [e["elem"]["val"]["concat"] for e in table().sets["named4"]] == [
    [two, "198.51.100.8"]
]
host_filter.detach("sb-two")
steps["table gone"] = table() is None
print(json.dumps(steps))
"""


@dataclass
class Listeners:
    any_port: int  # bound to 0.0.0.0: reachable through every address of the host
    loopback_port: int  # bound to 127.0.0.1
    addresses: list[str]  # the host's own addresses besides loopback


@dataclass
class OtherHost:
    address: str
    port: int


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    # Never accepted: the kernel completes handshakes from the backlog, which is all we need.
    with (
        socket.create_server(("0.0.0.0", 0)) as anywhere,
        socket.create_server(("127.0.0.1", 0)) as loopback,
    ):
        addresses = host_ipv4_addresses()
        assert addresses, "the host should have a non-loopback address to probe"
        yield Listeners(anywhere.getsockname()[1], loopback.getsockname()[1], addresses)


@pytest.fixture
def test_host() -> Iterator[OtherHost]:
    """A listener in a network namespace of its own, on a veth the host routes to."""
    tag = f"{os.getpid() % 10000:04d}{random.randrange(256):02x}"
    netns, outer, inner = f"hc-th-{tag}", f"hct{tag}", f"hci{tag}"
    host_side, address = _free_block()
    try:
        _make_netns(netns, outer, inner, host_side, address)
        with _serve(netns, address) as port:
            with socket.create_connection((address, port), timeout=3) as conn:
                assert conn.recv(64).decode().strip() == BANNER  # the host reaches it
            yield OtherHost(address, port)
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", outer], capture_output=True, check=False)


def _free_block() -> tuple[str, str]:
    """Two addresses of a /30 in 203.0.113.0/24 that no route on the host covers yet."""
    for _ in range(50):
        fourth = random.randrange(64) * 4
        host_side = f"203.0.113.{fourth + 1}"
        routes = _ip("-4", "-o", "route", "show", "to", "match", host_side)
        if all(line.startswith("default") for line in routes.splitlines()):
            return host_side, f"203.0.113.{fourth + 2}"
    raise AssertionError("no free /30 in 203.0.113.0/24")


def _make_netns(netns: str, outer: str, inner: str, host_side: str, address: str) -> None:
    _ip("netns", "add", netns)
    _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", netns)
    _ip("addr", "add", f"{host_side}/30", "dev", outer)
    _ip("link", "set", outer, "up")
    _ip("-n", netns, "addr", "add", f"{address}/30", "dev", inner)
    _ip("-n", netns, "link", "set", inner, "up")


@contextlib.contextmanager
def _serve(netns: str, address: str) -> Iterator[int]:
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", TEST_HOST_SERVER, address, BANNER]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline())
    finally:
        server.kill()
        server.wait()


def _ip(*args: str, attempts: int = 5) -> str:
    """Run `ip`; retried because netlink calls race with other workers' namespaces under load."""
    for attempt in range(attempts):
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return proc.stdout
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


# --- what the host sees ------------------------------------------------------------------------
def _filter_entries() -> dict[int, str] | None:
    """gid -> sandbox id in the filter's table; None when there is no table.

    Holds the filter's lock, so a concurrent create or destroy is never seen half done.
    """
    fd = os.open(hostfilter.LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        listing = subprocess.run([NFT, "-j", "list", "table", "inet", hostfilter.TABLE],
                                 capture_output=True, text=True, check=False)  # fmt: skip
    finally:
        os.close(fd)
    if listing.returncode != 0:
        return None
    return _slirp_map(json.loads(listing.stdout)["nftables"])


def _slirp_map(items: list[dict[str, object]]) -> dict[int, str]:
    for item in items:
        found = item.get("map")
        if isinstance(found, dict) and found["name"] == "slirp":
            pairs = [(key["elem"], mark) for key, mark in found.get("elem", [])]
            assert all(int(key["val"]) == mark for key, mark in pairs)  # mark = group
            return {int(key["val"]): key["comment"] for key, _ in pairs}
    raise AssertionError(f"the filter's table has no slirp map: {items}")


async def _gids_of(sandbox_id: str) -> list[int]:
    entries = await to_thread.run_sync(_filter_entries)
    assert entries is None or entries, "the table outlived its last sandbox"
    return sorted(gid for gid, owner in (entries or {}).items() if owner == sandbox_id)


def _slirp_groups() -> list[list[str]]:
    """The Gid and Groups lines of every slirp4netns process on the host."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() == "slirp4netns":
                status = (proc / "status").read_text().splitlines()
                found.append([line for line in status if line.startswith(("Gid:", "Groups:"))])
    return found


def _slirp_with(gid: int) -> bool:
    """Whether a slirp4netns runs with group ``gid`` and no supplementary group."""
    expected = [f"Gid:\t{gid}\t{gid}\t{gid}\t{gid}", "Groups:\t"]
    return any([line.rstrip(" ") for line in lines] == expected for lines in _slirp_groups())


async def _slirp_runs_with(gid: int) -> bool:
    return await to_thread.run_sync(_slirp_with, gid)


def _await_no_slirp_with(gid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _slirp_with(gid):
        assert time.monotonic() < deadline, f"slirp4netns with group {gid} is still running"
        time.sleep(0.05)


def _await_entry(sandbox_id: str, gid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (_filter_entries() or {}).get(gid) != sandbox_id:
        assert time.monotonic() < deadline, f"the filter entry of {sandbox_id} was not put back"
        time.sleep(0.1)


# --- from inside ---------------------------------------------------------------------------------
async def _probe(guest: GuestClient, host: str, port: int) -> str:
    result = await shell(guest, f"python3 - {host} {port} <<'EOF'\n{PROBE}EOF\n")
    return str(result["stdout"]) + str(result["stderr"])


async def _assert_host_unreachable(guest: GuestClient, listeners: Listeners) -> None:
    for address in listeners.addresses:
        for port in (listeners.any_port, listeners.loopback_port):
            # Refused at once: the filter answers, not a timeout somewhere.
            assert await _probe(guest, address, port) == "ConnectionRefusedError ECONNREFUSED\n"
    for address in ("127.0.0.1", "10.0.2.2"):
        for port in (listeners.any_port, listeners.loopback_port):
            assert "connected" not in await _probe(guest, address, port), address


async def _assert_reaches(guest: GuestClient, target: OtherHost) -> None:
    assert await _probe(guest, target.address, target.port) == f"connected\n{BANNER}\n"


async def _nat_boxes(provider: LocalProvider, count: int) -> list[SandboxInfo]:
    boxes: list[SandboxInfo] = []

    async def create() -> None:
        boxes.append(await provider.create(SandboxSpec(network="nat")))

    async with anyio.create_task_group() as group:
        for _ in range(count):
            group.start_soon(create)
    return boxes


# --- the tests -----------------------------------------------------------------------------------
async def test_nat_reaches_other_hosts_but_not_this_one(
    make_provider: MakeProvider, listeners: Listeners, test_host: OtherHost
) -> None:
    provider = make_provider()
    box = await provider.create(SandboxSpec(network="nat"))
    async with await provider.connect(box.id) as guest:
        await _assert_host_unreachable(guest, listeners)
        await _assert_reaches(guest, test_host)
    # The filter is on slirp4netns alone: the host itself still reaches its own services.
    for address in listeners.addresses:
        stream = await anyio.connect_tcp(address, listeners.any_port)
        await stream.aclose()


async def test_offline_has_no_route_anywhere(
    make_provider: MakeProvider, listeners: Listeners, test_host: OtherHost
) -> None:
    provider = make_provider()
    box = await provider.create(SandboxSpec(network="offline"))
    async with await provider.connect(box.id) as guest:
        for address in (*listeners.addresses, test_host.address):
            assert await _probe(guest, address, listeners.any_port) == "OSError ENETUNREACH\n"
    assert await _gids_of(box.id) == []


async def test_filter_entry_lives_exactly_as_long_as_the_sandbox(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()
    box = await provider.create(SandboxSpec(network="nat"))
    [gid] = await _gids_of(box.id)
    assert hostfilter.GID_BASE <= gid < hostfilter.GID_BASE + hostfilter.GID_SLOTS
    assert await _slirp_runs_with(gid)  # and with no supplementary group
    await provider.stop(box.id)
    assert await _gids_of(box.id) == [] and not await _slirp_runs_with(gid)
    await provider.start(box.id)
    assert len(await _gids_of(box.id)) == 1
    await provider.destroy(box.id)
    assert await _gids_of(box.id) == []


async def test_destroy_cleans_up_after_a_killed_supervisor(make_provider: MakeProvider) -> None:
    provider = make_provider()
    box = await provider.create(SandboxSpec(network="nat"))
    [gid] = await _gids_of(box.id)
    meta = json.loads(await anyio.Path(Layout.of(provider.home, box.id).meta).read_text())
    os.kill(meta["supervisor_pid"], signal.SIGKILL)
    await to_thread.run_sync(_await_no_slirp_with, gid)  # it exits with its supervisor
    assert await _gids_of(box.id) == [gid]  # nobody detached it...
    await provider.destroy(box.id)
    assert await _gids_of(box.id) == []  # ...until destroy


async def test_a_removed_filter_entry_is_put_back(
    make_provider: MakeProvider, listeners: Listeners
) -> None:
    provider = make_provider()
    box = await provider.create(SandboxSpec(network="nat"))
    [gid] = await _gids_of(box.id)
    await anyio.run_process(
        [NFT, "delete", "element", "inet", hostfilter.TABLE, "slirp", f"{{ {gid} }}"]
    )
    await to_thread.run_sync(_await_entry, box.id, gid)
    async with await provider.connect(box.id) as guest:
        await _assert_host_unreachable(guest, listeners)
    log = await anyio.Path(Layout.of(provider.home, box.id).log).read_text()
    assert "the host filter had been removed" in log
    listing = await anyio.run_process([NFT, "-j", "list", "table", "inet", hostfilter.TABLE])
    table = hostfilter.Table.parse(listing.stdout.decode())
    assert table.intact() and f'{gid} comment "{box.id}" : {gid}' in table.elements_script()


async def test_the_filter_rebuilds_itself_after_a_flush() -> None:
    child = await anyio.run_process(["unshare", "--net", sys.executable, "-c", FLUSHED, NFT])
    steps = json.loads(child.stdout)
    assert all(steps.values()) and len(steps) == 12, steps


async def test_two_sandboxes_are_filtered_and_one_stays_so_alone(
    make_provider: MakeProvider, listeners: Listeners, test_host: OtherHost
) -> None:
    provider = make_provider()
    first, second = await _nat_boxes(provider, 2)
    gids = {first.id: await _gids_of(first.id), second.id: await _gids_of(second.id)}
    assert len(gids[first.id]) == len(gids[second.id]) == 1 and gids[first.id] != gids[second.id]
    for box in (first, second):
        async with await provider.connect(box.id) as guest:
            await _assert_host_unreachable(guest, listeners)
    await provider.destroy(first.id)
    assert await _gids_of(first.id) == [] and await _gids_of(second.id) == gids[second.id]
    async with await provider.connect(second.id) as guest:
        await _assert_host_unreachable(guest, listeners)
        await _assert_reaches(guest, test_host)


async def test_nat_is_refused_without_root(home: Path) -> None:
    if os.geteuid() != 0:
        with pytest.raises(ConfigError) as caught:
            await LocalProvider(home).create(SandboxSpec(network="nat"))
        message = str(caught.value)
    else:  # as nobody: nothing of root's may leak in
        await to_thread.run_sync(os.chown, home, 65534, 65534)
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        child = await anyio.run_process([*drop, sys.executable, "-c", REFUSE_NAT, str(home)])
        message = child.stdout.decode()
    assert "needs root" in message and "CAP_NET_ADMIN" in message, message
    assert "--network offline" in message, message
    assert [p async for p in anyio.Path(home).iterdir()] == []  # refused before making anything


def test_nameservers_are_read_from_resolv_conf() -> None:
    conf = (
        "# generated\nsearch example\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n"
        "nameserver 127.0.0.53\nnameserver not-an-address\noptions edns0\nnameserver ::1\n"
    )
    assert dnsproxy.nameservers(conf) == ["127.0.0.53", "fe80::1%eth0", "::1"]


def test_groups_are_reused_for_the_same_sandbox_and_never_shared() -> None:
    first = hostfilter.pick_gid("sb-a", {})
    assert hostfilter.GID_BASE <= first < hostfilter.GID_BASE + hostfilter.GID_SLOTS
    assert hostfilter.pick_gid("sb-a", {first: "sb-a"}) == first  # its run whose supervisor died
    after = hostfilter.GID_BASE + (first - hostfilter.GID_BASE + 1) % hostfilter.GID_SLOTS
    assert hostfilter.pick_gid("sb-a", {first: "sb-b"}) == after
    assert hostfilter.pick_gid("sb-b", {}) != first  # spread: a flush rarely makes them meet
