"""Escape attempts at what a sandbox can reach: host services, the hivecell server, unix and
abstract sockets, and a neighbouring sandbox's guest agent, VNC server and X display.

Two real boxes, one ``offline`` (A) and one ``nat`` (B), attack from inside; two real
``hivecell up`` servers run on the host meanwhile, one with a token on every address and
one ``--no-auth`` on loopback. Nothing may connect, and the host must notice nothing (no
queued connection, no task, no file). The nat allowlist and address ranges have a suite of
their own (network); here the target is the host itself and the neighbours.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from anyio.abc import Process
from Xlib.display import Display

from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local.provider import LocalProvider
from tests.guest.xdisplay import x_display
from tests.sandbox.conftest import short_tmp
from tests.sandbox.host import read_banner, sh_out, shell
from tests.security.conftest_escape import (
    CONNECT,
    host_addresses,
    host_unix_listeners,
    pending,
    run_probe,
    token,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HIVECELL_"))}


@dataclass
class Boxes:
    provider: LocalProvider
    offline: SandboxInfo  # A
    nat: SandboxInfo  # B

    def of(self, kind: str) -> SandboxInfo:
        return self.offline if kind == "offline" else self.nat


@dataclass
class Server:
    port: int
    token: str | None
    home: Path


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: the boxes and servers below serve every attack


@pytest.fixture(scope="module")
def module_home() -> Iterator[Path]:
    path = short_tmp("hc-reach-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def boxes(module_home: Path) -> AsyncIterator[Boxes]:
    provider = LocalProvider(module_home, pycache=module_home / "pycache")
    offline = await provider.create(SandboxSpec(network="offline"))
    nat = await provider.create(SandboxSpec(network="nat"))
    async with await provider.connect(nat.id) as guest:
        await guest.call("start_vnc")  # its socket becomes a target too
    yield Boxes(provider, offline, nat)
    for info in await provider.list():
        await provider.destroy(info.id)


@contextlib.asynccontextmanager
async def _hivecell_up(*args: str) -> AsyncIterator[Server]:
    """A real ``hivecell up`` process (API only) on its own home."""
    home = short_tmp("hc-up-")
    command = [sys.executable, "-m", "hivecell.cli.main", "up", "--home", str(home)]
    command += ["--port", "0", "--api-only", "--pool-size", "0", *args]
    try:
        async with await anyio.open_process(command, env=ENV) as process:
            try:
                link = await _read_link(process)
                port = int(link.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                _, _, secret = link.partition("/?token=")
                yield Server(port, secret or None, home)
            finally:
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def _read_link(process: Process) -> str:
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(180):  # importing the server takes ~20 s on a loaded 2-core host
        while b"\n" not in seen:
            seen += await process.stdout.receive()
    line = seen.decode().splitlines()[0]
    assert line.startswith("hivecell is up: "), line
    return line.removeprefix("hivecell is up: ")


@pytest.fixture(scope="module")
async def servers() -> AsyncIterator[list[Server]]:
    async with (
        _hivecell_up("--host", "0.0.0.0") as with_token,
        _hivecell_up("--host", "127.0.0.1", "--no-auth") as open_server,
    ):
        yield [with_token, open_server]


@pytest.fixture
async def guests(boxes: Boxes) -> AsyncIterator[dict[str, GuestClient]]:
    async with (
        await boxes.provider.connect(boxes.offline.id) as a,
        await boxes.provider.connect(boxes.nat.id) as b,
    ):
        yield {"offline": a, "nat": b}


@dataclass
class Listeners:
    loopback: socket.socket
    anywhere: socket.socket
    loopback6: socket.socket | None
    abstract: socket.socket
    abstract_name: str
    path: socket.socket
    path_name: str

    def all(self) -> list[socket.socket]:
        found = [self.loopback, self.anywhere, self.abstract, self.path]
        return found + ([self.loopback6] if self.loopback6 else [])


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    """TCP on 127.0.0.1, ::1 and 0.0.0.0; unix on an abstract name and on a /tmp path.

    Never accepted during the attack: the kernel would queue any completed connection,
    which ``pending`` finds afterwards.
    """
    abstract_name = token("hivecell-test")
    path_name = f"/tmp/{token()}.sock"
    with contextlib.ExitStack() as stack:
        loopback = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        anywhere = stack.enter_context(_everywhere())
        loopback6 = None
        with contextlib.suppress(OSError):  # a host without IPv6
            six = socket.create_server(("::1", 0), family=socket.AF_INET6)
            loopback6 = stack.enter_context(six)
        abstract = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        abstract.bind("\0" + abstract_name)
        abstract.listen(8)
        path = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        path.bind(path_name)
        path.listen(8)
        stack.callback(os.unlink, path_name)
        yield Listeners(loopback, anywhere, loopback6, abstract, abstract_name, path, path_name)


def _everywhere() -> socket.socket:
    """A listener on every address of the host, IPv6 ones too where the host has them."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("0.0.0.0", 0))


def _host_can_reach(target: list[Any]) -> bool:
    """The same connect, made on the host: proves a target was live when the box failed."""
    with contextlib.suppress(OSError):
        if target[0] == "tcp":
            socket.create_connection((target[1], target[2]), timeout=3).close()
            return True
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(3)
            sock.connect(target[1] if target[0] == "unix" else "\0" + target[1])
            return True
    return False


def _tcp_targets(kind: str, listeners: Listeners, servers: list[Server]) -> list[list[Any]]:
    ports = [listeners.loopback.getsockname()[1], listeners.anywhere.getsockname()[1]]
    ports += [server.port for server in servers]
    addresses = ["127.0.0.1", "localhost", "::1", *host_addresses()]
    addresses += sorted({a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None)})
    if kind == "offline":  # nat would ask a real resolver; offline resolves only from files
        addresses.append(socket.gethostname())
    if kind == "nat":
        addresses += ["10.0.2.2"]  # slirp's alias for the host's loopback
    targets: list[list[Any]] = [["tcp", a, p] for a in dict.fromkeys(addresses) for p in ports]
    if listeners.loopback6 is not None:
        targets.append(["tcp", "::1", listeners.loopback6.getsockname()[1]])
    return targets


async def _assert_nothing_queued(listeners: Listeners, servers: list[Server]) -> None:
    assert not any(pending(s) for s in listeners.all()), "a listener got a connection"
    for server in servers:  # and nothing reached either server's API
        headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
        base_url = f"http://127.0.0.1:{server.port}"
        async with httpx2.AsyncClient(base_url=base_url, headers=headers) as client:
            tasks = await client.get("/api/v1/tasks")
            assert tasks.status_code == 200 and tasks.json()["total"] == 0, tasks.text


@pytest.mark.parametrize("kind", ["offline", "nat"])
async def test_host_tcp_services_and_the_server_are_unreachable(
    kind: str,
    guests: dict[str, GuestClient],
    listeners: Listeners,
    servers: list[Server],
) -> None:
    """Attack: from an offline and a nat box, connect to host TCP services: a listener on
    127.0.0.1, one on ::1, one on 0.0.0.0, and two real ``hivecell up`` servers (token on
    0.0.0.0, ``--no-auth`` on 127.0.0.1, the one a web page could drive), through
    127.0.0.1, localhost, ::1, every other host address, the host's name and, for nat,
    slirp's host alias 10.0.2.2. Nothing connects; no listener queues a connection and
    neither server saw a task."""
    targets = _tcp_targets(kind, listeners, servers)
    live = [t for t in targets if t[1] == "127.0.0.1"]  # every port listens there
    anywhere = listeners.anywhere.getsockname()[1]
    live += [t for t in targets if t[1] in host_addresses() and t[2] == anywhere]
    v4 = [a for a in host_addresses() if ":" not in a]
    live += [t for t in targets if t[1] in v4 and t[2] == servers[0].port]  # on 0.0.0.0
    assert [await anyio.to_thread.run_sync(_host_can_reach, t) for t in live] == [True] * len(live)
    await anyio.to_thread.run_sync(_drain, listeners)
    verdicts = await run_probe(guests[kind], CONNECT, targets, timeout=300)
    connected = [t for t, v in verdicts.items() if v == "connected"]
    assert not connected, connected
    assert len(verdicts) == len(targets)
    await _assert_nothing_queued(listeners, servers)


@pytest.mark.parametrize("kind", ["offline", "nat"])
async def test_host_unix_and_abstract_sockets_are_unreachable(
    kind: str, boxes: Boxes, guests: dict[str, GuestClient], listeners: Listeners
) -> None:
    """Attack: connect to every unix socket listening on the host (its /proc/net/unix:
    D-Bus, PostgreSQL, X servers of the host, ...), to an abstract socket
    ``@hivecell-test-<random>`` and a /tmp path socket made by this test, and to both
    boxes' guest and VNC sockets by their host paths. Abstract sockets are scoped by
    network namespace and paths by mount namespace, so nothing may connect (the box's own
    X socket name is skipped: its own server answers there)."""
    own = [["abstract", listeners.abstract_name], ["unix", listeners.path_name]]
    for info in (boxes.offline, boxes.nat):
        own += [["unix", info.endpoint.removeprefix("unix:")]]
        own += [["unix", info.vnc_endpoint.removeprefix("unix:")]] if info.vnc_endpoint else []
    for target in own:
        live = await anyio.to_thread.run_sync(_host_can_reach, target)
        assert live or target[1].endswith("vnc.sock"), target  # A runs no VNC server
    await anyio.to_thread.run_sync(_drain, listeners)
    targets = own + host_unix_listeners()[:400]
    verdicts = await run_probe(guests[kind], CONNECT, targets, timeout=300)
    connected = [t for t, v in verdicts.items() if v == "connected"]
    assert not connected, connected
    assert not pending(listeners.abstract) and not pending(listeners.path)


def _drain(listeners: Listeners) -> None:
    """Accept the host's own sanity connections so only the box's could be left queued."""
    for server in listeners.all():
        while pending(server):
            pass


async def test_a_neighbour_guest_and_vnc_cannot_be_driven(
    boxes: Boxes, guests: dict[str, GuestClient]
) -> None:
    """Attack: from box A, drive box B (and back): connect to B's guest socket and VNC
    socket by their host paths (both are in sandbox info), by the path each has inside its
    own box, and by guessing paths built from B's id under every folder A can see. Only
    the host can reach B's sockets (checked: B's VNC answers the host with an RFB banner)."""
    vnc = boxes.nat.vnc_endpoint or ""
    assert (await read_banner(vnc, 3)) == b"RFB"
    for me, other in (("offline", boxes.nat), ("nat", boxes.offline)):
        paths = [other.endpoint.removeprefix("unix:"), (other.vnc_endpoint or "")[5:]]
        for folder in ("/run/hivecell", "/tmp", "/shared", "/home/user", "/run", "/"):
            paths += [f"{folder}/{other.id}/run/guest.sock", f"{folder}/sandboxes/{other.id}"]
        targets = [["unix", p] for p in paths] + [["abstract", p] for p in paths]
        verdicts = await run_probe(guests[me], CONNECT, targets)
        assert "connected" not in verdicts.values(), (me, verdicts)
        # Its own X socket is reachable inside, so the probe could have connected. (Its guest
        # socket has no path inside: the guest serves an fd the supervisor bound outside.)
        # ("/./": a name the probe does not skip as the box's own)
        own = await run_probe(guests[me], CONNECT, [["unix", "/tmp/./.X11-unix/X0"]])
        assert list(own.values()) == ["connected"]


# --- X displays ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def host_display() -> Iterator[tuple[str, str]]:
    """A host Xvfb (its abstract socket is in the host's network namespace) with a window
    whose title is unique; yields (display name, title)."""
    title = token("hc-escape-host-window")
    with x_display() as name:
        display = Display(name)
        try:
            window = display.screen().root.create_window(0, 0, 50, 50, 0, 0)
            window.set_wm_name(title)
            window.map()
            display.sync()
            yield name, title
        finally:
            display.close()


async def _open_titled_window(guest: GuestClient, title: str) -> None:
    await guest.call("open_app", {"name": f"xterm -T {title}"})
    with anyio.fail_after(30):
        while True:  # polling the box's own window list: the state we wait on
            if title in json.dumps(await guest.call("list_windows")):
                return
            await anyio.sleep(0.05)


async def test_x_displays_are_each_box_own(
    guests: dict[str, GuestClient], host_display: tuple[str, str]
) -> None:
    """Attack: X servers listen on the abstract socket @/tmp/.X11-unix/X<n>, which any
    process of the same network namespace can reach. A and B each open a window with a
    unique title; A then deletes its /tmp/.X11-unix/X0 so clients must use the abstract
    socket, and lists the windows of :0. It sees only its own title, never B's or the
    host X server's; the host's display number is unreachable from either box."""
    host_name, host_title = host_display
    titles = {kind: token(f"hc-escape-{kind}-window") for kind in guests}
    for kind, guest in guests.items():
        await _open_titled_window(guest, titles[kind])
    await sh_out(guests["offline"], "rm -f /tmp/.X11-unix/X0")
    for kind, guest in guests.items():
        listing = await sh_out(guest, "DISPLAY=:0 wmctrl -l")
        others = [t for k, t in titles.items() if k != kind] + [host_title]
        assert titles[kind] in listing and not any(t in listing for t in others), listing
        stolen = await shell(guest, f"DISPLAY={host_name} wmctrl -l")
        assert stolen["exit_code"] != 0 and host_title not in stolen["stdout"], stolen
