"""What a local sandbox must not see or touch, checked from inside with the shell tool."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import hivecell
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox.conftest import short_tmp
from tests.sandbox.host import host_ipv4_addresses, sh_out, shell

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
NAMESPACES = ("pid", "mnt", "net", "user", "ipc", "uts", "cgroup")
BOX_PROGRAMS = {"bwrap", "python3.11", "Xvfb", "openbox", "tint2", "sh", "ps"}  # tint2: the panel
# the session bus and the accessibility registry (comm names are cut at 15 characters)
BOX_PROGRAMS |= {"dbus-daemon", "at-spi2-registr"}


@dataclass
class Boxes:
    provider: LocalProvider
    offline: SandboxInfo
    nat: SandboxInfo


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope, so the sandboxes below are booted once for all tests


@pytest.fixture(scope="module")
def module_home() -> Iterator[Path]:
    path = short_tmp("hc-iso-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def boxes(module_home: Path) -> AsyncIterator[Boxes]:
    provider = LocalProvider(module_home, pycache=module_home / "pycache")
    offline = await provider.create(SandboxSpec(network="offline"))
    nat = await provider.create(SandboxSpec(network="nat"))
    yield Boxes(provider, offline, nat)
    for info in await provider.list():
        await provider.destroy(info.id)


@pytest.fixture
async def guest(boxes: Boxes) -> AsyncIterator[GuestClient]:
    async with await boxes.provider.connect(boxes.offline.id) as client:
        yield client


@pytest.fixture
async def nat_guest(boxes: Boxes) -> AsyncIterator[GuestClient]:
    async with await boxes.provider.connect(boxes.nat.id) as client:
        yield client


@pytest.fixture
def host_service() -> Iterator[int]:
    """A TCP service on the host's 127.0.0.1 (the kernel completes handshakes from the backlog)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def _connect_script(host: str, port: int) -> str:
    return (
        "python3 -c 'import socket,sys\n"
        f'try: socket.create_connection(("{host}", {port}), timeout=3)\n'
        "except OSError as e: print(type(e).__name__); sys.exit(1)\n"
        'print("connected")\''
    )


async def _exists_inside(guest: GuestClient, path: str) -> bool:
    return (await shell(guest, f"test -e '{path}'"))["exit_code"] == 0


PROJECT = Path(hivecell.__file__).resolve().parents[2]


async def test_host_home_root_and_project_are_invisible(guest: GuestClient) -> None:
    for path in ("/root", str(Path.home()), "/work", str(PROJECT), "/farm", "/mnt", "/old_root"):
        assert not await _exists_inside(guest, path), path
    assert await sh_out(guest, "ls -A /home") == "user\n"
    # private /tmp: the display's sockets, the runtime dir, the desktop's session files
    assert await sh_out(guest, "ls -A /tmp") == ".X11-unix\nhivecell-desktop\nxdg-runtime\n"
    assert await sh_out(guest, "ls -A /") == (
        "bin\ndev\netc\nhome\nlib\nlib64\nopt\nproc\nrun\nsbin\nshared\ntmp\nusr\nvar\n"
    )


async def test_other_sandbox_folders_are_invisible(boxes: Boxes, guest: GuestClient) -> None:
    other = Path(boxes.nat.shared_dir).parent
    await anyio.Path(other / "shared" / "inbox" / "secret.txt").write_text("for the other box")
    for path in (other, other / "shared", boxes.provider.home, Path(boxes.offline.shared_dir)):
        assert not await _exists_inside(guest, str(path)), path
    assert await sh_out(guest, "ls -A /shared/inbox") == ""


async def test_host_processes_are_invisible(guest: GuestClient) -> None:
    listing = await sh_out(guest, "ps -e -o pid=,comm=")
    programs = {line.split(None, 1)[1] for line in listing.splitlines()}
    assert programs <= BOX_PROGRAMS, programs
    pids = [int(line.split()[0]) for line in listing.splitlines()]
    assert max(pids) < 100 and 1 in pids
    assert not await _exists_inside(guest, f"/proc/{os.getpid()}/cwd")


async def test_secrets_in_etc_are_absent(guest: GuestClient) -> None:
    for path in ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/ssh", "/etc/ssl/private"):
        assert not await _exists_inside(guest, path), path
    passwd = await sh_out(guest, "cat /etc/passwd")
    assert [line.split(":")[0] for line in passwd.splitlines()] == ["root", "user", "nobody"]


async def test_system_folders_are_read_only(guest: GuestClient) -> None:
    for target in ("/usr/x", "/etc/passwd", "/opt/hivecell/src/x", "/opt/hivecell/pycache/x"):
        result = await shell(guest, f"touch {target}")
        assert result["exit_code"] != 0, target
        # An existing host file the box user does not own (always so when hivecell runs
        # as root) fails the permission check before the read-only one.
        refusals = ("Read-only file system", "Permission denied")
        expected = refusals if target == "/etc/passwd" else refusals[:1]
        assert any(e in result["stderr"] for e in expected), result["stderr"]
    await sh_out(guest, "touch ~/ok /tmp/ok /shared/workspace/ok /dev/shm/ok")


async def test_no_capabilities_and_no_privilege(guest: GuestClient) -> None:
    status = await sh_out(guest, "grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status")
    assert {line.split()[1] for line in status.splitlines()} == {"0000000000000000"}
    assert await sh_out(guest, "id") == "uid=1000(user) gid=1000(user) groups=1000(user)\n"


async def test_namespaces_differ_from_the_host(guest: GuestClient) -> None:
    inside = await sh_out(guest, " ; ".join(f"readlink /proc/self/ns/{n}" for n in NAMESPACES))
    assert set(inside.split()).isdisjoint(_host_namespaces())


async def test_offline_has_only_loopback(guest: GuestClient, host_service: int) -> None:
    network = await guest.call("get_network_info")
    assert [i["name"] for i in network["interfaces"]] == ["lo"]
    assert network["has_default_route"] is False
    result = await shell(guest, _connect_script("127.0.0.1", host_service))
    assert (result["exit_code"], result["stdout"]) == (1, "ConnectionRefusedError\n")


async def test_offline_cannot_reach_host_addresses(guest: GuestClient) -> None:
    addresses = host_ipv4_addresses()
    assert addresses, "the host should have a non-loopback address to probe"
    with socket.create_server(("0.0.0.0", 0)) as server:
        port = server.getsockname()[1]
        for address in addresses:
            result = await shell(guest, _connect_script(address, port))
            assert result["exit_code"] == 1 and "connected" not in result["stdout"], address


async def test_nat_has_a_routed_interface(nat_guest: GuestClient) -> None:
    network = await nat_guest.call("get_network_info")
    interfaces = {i["name"]: i["addresses"] for i in network["interfaces"]}
    assert interfaces["tap0"] == ["10.0.2.100"] and network["has_default_route"] is True
    assert await sh_out(nat_guest, "cat /etc/resolv.conf") == "nameserver 127.0.0.53\n"


async def test_nat_cannot_reach_host_loopback(nat_guest: GuestClient, host_service: int) -> None:
    # 10.0.2.2 is slirp's alias for the host's loopback, closed by --disable-host-loopback.
    for address in ("127.0.0.1", "10.0.2.2"):
        result = await shell(nat_guest, _connect_script(address, host_service))
        assert result["exit_code"] == 1 and "connected" not in result["stdout"], address


def _host_namespaces() -> set[str]:
    return {str(Path(f"/proc/self/ns/{n}").readlink()) for n in NAMESPACES}
