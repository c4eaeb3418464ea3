"""``nat`` sandboxes: private ranges refused by default, per-task allowlists, a connection log.

Real boxes, real nftables, real DNS. Nothing here touches a real address: each test builds
two network namespaces of its own, and the sandbox's supervisor (so slirp4netns, the host
filter and our DNS forwarder) runs in the first ("the host"), whose every route leads to
the second ("the world"). The world holds test hosts on documentation addresses (the
"public" internet), on private, CGNAT and link-local addresses (169.254.169.254 plays the
cloud metadata service) and a DNS server for names under ``.test``. Each test host answers
a TCP connection with its own address, so a probe knows who it reached.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox import netpolicy
from hivecell.sandbox.base import NetworkConnection, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local import dnsproxy, hostfilter, netlog
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.trace import NETWORK_FILE
from tests.agent.helpers import act, call, finish, system_prompt, tool_results
from tests.sandbox.host import host_ipv4_addresses, shell
from tests.server.helpers import events, next_event, serve, write_provider

pytestmark = [pytest.mark.anyio]

PUBLIC, OTHER_PUBLIC, DNS = "198.51.100.10", "198.51.100.11", "198.51.100.53"
PRIVATE = {
    "10.20.30.40": "10/8",
    "172.16.5.5": "172.16/12",
    "192.168.7.7": "192.168/16",
    "100.64.1.1": "100.64/10 (CGNAT)",
    "169.254.169.254": "cloud metadata",
    "0.0.0.1": "0/8",
    "198.18.0.5": "198.18/15 (benchmarking)",
}
NAMES = {
    "allowed.test": PUBLIC,
    "www.wild.test": OTHER_PUBLIC,
    "other.test": OTHER_PUBLIC,
    "private.test": "10.20.30.40",
    "metadata.test": "169.254.169.254",
}
PORT = 8080
WORLD_SERVER = """
import socket, struct, sys, threading
names = dict(arg.split("=") for arg in sys.argv[1:])

def tcp_host():
    server = socket.create_server(("0.0.0.0", 8080))
    server.settimeout(300)  # stops by itself should the test die without killing it
    while True:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            request = conn.recv(65536)  # the probe sends some bytes first: counted as sent
            conn.sendall(b"host " + conn.getsockname()[0].encode() + b" " + b"x" * 3000 + b"\\n")

def answer(query):
    pos, labels = 12, []
    while query[pos]:
        labels.append(query[pos + 1 : pos + 1 + query[pos]].decode())
        pos += 1 + query[pos]
    qtype = struct.unpack_from("!H", query, pos + 1)[0]
    end = pos + 5
    name = ".".join(labels).lower()
    address = names.get(name)
    records = b""
    if address and qtype == 1:
        records = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
    flags = 0x8180 if address else 0x8183
    header = struct.pack("!HHHHH", flags, 1, 1 if records else 0, 0, 0)
    return query[:2] + header + query[12:end] + records

def dns_udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("198.51.100.53", 53))
    while True:
        query, peer = sock.recvfrom(4096)
        sock.sendto(answer(query), peer)

def dns_tcp():
    server = socket.create_server(("198.51.100.53", 53))
    while True:
        conn, _ = server.accept()
        with conn:
            size = struct.unpack("!H", conn.recv(2))[0]
            reply = answer(conn.recv(size))
            conn.sendall(struct.pack("!H", len(reply)) + reply)

threading.Thread(target=dns_udp, daemon=True).start()
threading.Thread(target=dns_tcp, daemon=True).start()
print("ready", flush=True)
tcp_host()
"""
CREATE = """
import json, sys, anyio
from pathlib import Path
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider

async def main() -> None:
    home, pycache, dns, spec = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    if sys.argv[5] == "qemu":
        from tests.sandbox import qemu_env

        provider = qemu_env.provider(home, dns_servers=[dns])
    else:
        provider = LocalProvider(home, pycache=pycache, dns_servers=[dns])
    info = await provider.create(SandboxSpec.model_validate_json(spec))
    print(info.id)

anyio.run(main)
"""
DNS_OVER_TCP = """
import socket, struct, sys
name = b"".join(bytes([len(x)]) + x.encode() for x in sys.argv[1].split(".")) + b"\\0"
query = b"\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00" + name + b"\\0\\1\\0\\1"
conn = socket.create_connection(("127.0.0.53", 53), timeout=5)
conn.sendall(struct.pack("!H", len(query)) + query)
size = struct.unpack("!H", conn.recv(2))[0]
reply = b""
while len(reply) < size:
    reply += conn.recv(size - len(reply))
print(reply[3] & 15, socket.inet_ntoa(reply[-4:]) if reply[7] else "-")
"""
PROBE = """
import errno, socket, sys
host = sys.argv[1]
try:
    address = socket.gethostbyname(host)
except OSError as exc:
    print("dns", type(exc).__name__, exc.args[0])
    sys.exit(1)
try:
    conn = socket.create_connection((address, int(sys.argv[2])), timeout=3)
except OSError as exc:
    print(type(exc).__name__, errno.errorcode.get(exc.errno or 0, exc.errno))
    sys.exit(1)
conn.sendall(b"y" * 2000)
conn.settimeout(5)
print(conn.recv(64).decode().split()[1])
"""


@dataclass
class World:
    """The namespace the sandbox's supervisor runs in, and how to create boxes there."""

    netns: str
    home: Path
    pycache: Path

    async def create(self, provider: str = "local", **spec: object) -> str:
        """A sandbox made (and so supervised) in the host namespace, asking our DNS test
        server; ``provider``: local or qemu."""
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-c", CREATE]
        argv += [str(self.home), str(self.pycache), DNS, SandboxSpec(**spec).model_dump_json()]  # type: ignore[arg-type]
        argv.append(provider)
        done = await anyio.run_process(argv, check=False, cwd=Path(__file__).parents[2])
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode().strip()


@pytest.fixture
async def world(home: Path, pycache: Path) -> AsyncIterator[World]:
    tag = f"{os.getpid() % 10000:04d}{random.randrange(4096):03x}"
    inner, outer = f"hc-nh-{tag}", f"hc-nw-{tag}"
    provider = LocalProvider(home, pycache=pycache)
    try:
        await anyio.to_thread.run_sync(_build, inner, outer, tag)
        with _serve(outer):
            yield World(inner, home, pycache)
            for info in await provider.list():
                await provider.destroy(info.id)
    finally:
        for netns in (inner, outer):
            await anyio.run_process(["ip", "netns", "del", netns], check=False)


def _build(inner: str, outer: str, tag: str) -> None:
    """``inner`` routes everything to ``outer``, which holds every test address."""
    here, there = f"hh{tag}", f"hw{tag}"
    for netns in (inner, outer):
        _add_netns(netns)
    _ip("-n", inner, "link", "add", here, "type", "veth", "peer", "name", there, "netns", outer)
    _ip("-n", inner, "addr", "add", "203.0.113.1/30", "dev", here)
    _ip("-n", inner, "link", "set", here, "up")
    _ip("-n", inner, "route", "add", "default", "via", "203.0.113.2")
    _ip("-n", outer, "addr", "add", "203.0.113.2/30", "dev", there)
    _ip("-n", outer, "link", "set", there, "up")
    for address in (PUBLIC, OTHER_PUBLIC, DNS, *PRIVATE):
        _ip("-n", outer, "addr", "add", f"{address}/32", "dev", "lo")


@contextlib.contextmanager
def _serve(netns: str, script: str | None = None) -> Iterator[None]:
    """A server in ``netns`` (the world's test hosts, unless ``script``) until the block ends;
    it prints "ready" once it listens."""
    names = [f"{name}={address}" for name, address in NAMES.items()]
    code = [WORLD_SERVER, *names] if script is None else [script]
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", *code]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        yield
    finally:
        server.kill()
        server.wait()


def _add_netns(netns: str, attempts: int = 5) -> None:
    """``ip netns add``, made again if another worker's ``ip netns add`` raced it (iproute2
    then leaves a name whose namespace cannot be entered: "Invalid argument")."""
    for attempt in range(attempts):
        subprocess.run(["ip", "netns", "add", netns], capture_output=True, check=False)
        up = subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], capture_output=True)
        if up.returncode == 0:
            return
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError(f"cannot make network namespace {netns}: {up.stderr.decode().strip()}")


def _ip(*args: str, attempts: int = 5) -> str:
    """Run `ip`; retried because netlink calls race with other workers' namespaces under load."""
    for attempt in range(attempts):
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return proc.stdout
        time.sleep(0.2 * (attempt + 1))
    raise AssertionError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


async def _probe(guest: GuestClient, host: str, port: int = PORT) -> str:
    """What a connection from inside reached: the test host's address, or the error."""
    result = await shell(guest, f"python3 - {host} {port} <<'EOF'\n{PROBE}EOF\n")
    return (str(result["stdout"]) + str(result["stderr"])).strip()


async def _log_until(
    provider: LocalProvider,
    box: str,
    done: Callable[[list[NetworkConnection]], bool],
    timeout: float = 15.0,
) -> list[NetworkConnection]:
    """The connection log once ``done(log)`` holds (the supervisor writes it every 2 s)."""
    deadline = anyio.current_time() + timeout
    while True:
        log = await provider.network_log(box)
        if done(log):
            return log
        assert anyio.current_time() < deadline, [c.model_dump() for c in log]
        await anyio.sleep(0.2)


# --- the tests -----------------------------------------------------------------------------------
@pytest.mark.slow
async def test_default_reaches_the_public_test_host_but_no_private_range(
    world: World, home: Path, pycache: Path
) -> None:
    provider = LocalProvider(home, pycache=pycache)
    box = await world.create(network="nat")
    async with await provider.connect(box) as guest:
        assert await _probe(guest, PUBLIC) == PUBLIC
        for address, what in PRIVATE.items():
            assert await _probe(guest, address) == "ConnectionRefusedError ECONNREFUSED", what
        # Names resolve through our DNS; a name pointing at metadata still cannot connect.
        assert await _probe(guest, "allowed.test") == PUBLIC
        assert await _probe(guest, "metadata.test") == "ConnectionRefusedError ECONNREFUSED"
        resolv = await shell(guest, "cat /etc/resolv.conf")
        assert resolv["stdout"] == "nameserver 127.0.0.53\n"
        # slirp4netns's own DNS relay (to the host's resolver) is off.
        assert "dns" in await _probe(guest, "10.0.2.3", 53) or "Refused" in await _probe(
            guest, "10.0.2.3", 53
        )


@pytest.mark.slow
async def test_a_cidr_allowlist_reaches_only_that_cidr(
    world: World, home: Path, pycache: Path
) -> None:
    provider = LocalProvider(home, pycache=pycache)
    box = await world.create(network="nat", network_allow=[f"{PUBLIC}/32", "10.20.30.40"])
    async with await provider.connect(box) as guest:
        assert await _probe(guest, PUBLIC) == PUBLIC
        assert await _probe(guest, OTHER_PUBLIC) == "ConnectionRefusedError ECONNREFUSED"
        # A private address the list names explicitly is reachable; the others are not.
        assert await _probe(guest, "10.20.30.40") == "10.20.30.40"
        assert await _probe(guest, "169.254.169.254") == "ConnectionRefusedError ECONNREFUSED"
        # No name is on the list, so none resolves (and none is asked upstream).
        assert await _probe(guest, "allowed.test") == "dns gaierror -2"


@pytest.mark.slow
async def test_a_domain_allowlist_resolves_and_reaches_only_its_names(
    world: World, home: Path, pycache: Path
) -> None:
    provider = LocalProvider(home, pycache=pycache)
    allow = ["allowed.test", "*.wild.test", "private.test"]
    box = await world.create(network="nat", network_allow=allow)
    async with await provider.connect(box) as guest:
        assert await _probe(guest, "allowed.test") == PUBLIC
        assert await _probe(guest, "www.wild.test") == OTHER_PUBLIC
        for name in ("other.test", "wild.test", "metadata.test"):
            assert await _probe(guest, name) == "dns gaierror -2", name  # NXDOMAIN
        # The same over TCP (length-prefixed), as resolvers fall back to for long answers.
        for name, expected in (("allowed.test", f"0 {PUBLIC}"), ("other.test", "3 -")):
            script = f"python3 - {name} <<'EOF'\n{DNS_OVER_TCP}EOF\n"
            assert (await shell(guest, script))["stdout"].strip() == expected, name
        # An allowlisted name does not open a private address it resolves to.
        assert await _probe(guest, "private.test") == "ConnectionRefusedError ECONNREFUSED"
        # Raw addresses: only those our DNS answered.
        assert await _probe(guest, PUBLIC) == PUBLIC
        assert await _probe(guest, DNS, 53) == "ConnectionRefusedError ECONNREFUSED"

    def complete(log: list[NetworkConnection]) -> bool:
        refused = {c.ip for c in log if c.verdict == "denied" and c.proto == "tcp"}
        return {"10.20.30.40", DNS} <= refused

    log = await _log_until(provider, box, complete)
    flows = [c for c in log if c.proto == "tcp"]
    reached = [c for c in flows if c.ip == PUBLIC and c.verdict == "allowed"]
    assert reached and all(c.host == "allowed.test" and c.port == PORT for c in reached)
    assert all(c.sent >= 2000 and c.received >= 3000 for c in reached), reached
    refused = {(c.ip, c.port, c.host) for c in flows if c.verdict == "denied"}
    assert ("10.20.30.40", PORT, "private.test") in refused
    assert (DNS, 53, None) in refused
    questions = {(c.host, c.verdict) for c in log if c.proto == "dns"}
    assert {("allowed.test", "allowed"), ("other.test", "denied")} <= questions


@pytest.mark.slow
async def test_connections_made_over_the_stop_are_logged(
    world: World, home: Path, pycache: Path
) -> None:
    provider = LocalProvider(home, pycache=pycache)
    box = await world.create(network="nat")
    async with await provider.connect(box) as guest:
        assert await _probe(guest, PUBLIC) == PUBLIC
        assert await _probe(guest, "192.168.7.7") == "ConnectionRefusedError ECONNREFUSED"
    await provider.stop(box)  # the supervisor reads the counters one last time
    log = await provider.network_log(box)
    verdicts = {(c.ip, c.verdict) for c in log if c.proto == "tcp"}
    assert verdicts == {(PUBLIC, "allowed"), ("192.168.7.7", "denied")}, log
    raw = (home / "sandboxes" / box / "network.jsonl").read_text()
    assert all(json.loads(line)["id"] for line in raw.splitlines())


# --- through a task: the trace, the API ----------------------------------------------------------
@pytest.mark.slow
async def test_a_task_keeps_its_connections_in_the_trace_and_the_api(home: Path) -> None:
    # The box tries this host's own address: refused (and so never leaves the host).
    with socket.create_server(("0.0.0.0", 0)) as listener:
        address, port = host_ipv4_addresses()[0], listener.getsockname()[1]
        probe = f"python3 - {address} {port} <<'EOF'\n{PROBE}EOF\n"
        steps = [act(call("run_shell", command=probe)), *finish("tried")]
        async with ScriptedLLMServer(steps) as llm:
            write_provider(home, llm.base_url)
            async with serve(home) as running, events(running) as ws:
                data = {"description": "try", "network_allow": "Allowed.test, 203.0.113.0/24"}
                files = {"files": ("note.txt", b"multipart, like the dashboard\n", "text/plain")}
                response = await running.post("/tasks", data=data, files=files)
                assert response.status_code == 201, response.text
                task_id = response.json()["id"]
                # Final once the task has finished: its box is stopped, the last flows counted.
                await next_event(ws, "task.finished", task_id)
                task = await running.task(task_id)
                network = (await running.get(f"/tasks/{task_id}/network")).json()
    assert task["status"] == "completed" and task["settings"]["network"] == "nat"
    assert task["settings"]["network_allow"] == ["allowed.test", "203.0.113.0/24"]
    prompt = system_prompt(llm.chat_requests[0])  # the model is told what it may reach
    assert "destinations only: allowed.test, 203.0.113.0/24" in prompt
    stdout = tool_results(llm.chat_requests[1])[0]["stdout"]
    assert stdout == "ConnectionRefusedError ECONNREFUSED\n"
    assert network["source"] == "trace"
    [refused] = [c for c in network["items"] if c["proto"] == "tcp"]
    assert (refused["ip"], refused["port"], refused["verdict"]) == (address, port, "denied")
    assert refused["detail"] == "an address of this host" and refused["sent"] > 0
    saved = Path(task["trace_dir"]) / NETWORK_FILE
    assert [json.loads(line) for line in saved.read_text().splitlines()] == network["items"]


async def test_bad_allowlists_are_refused_naming_the_entry(home: Path) -> None:
    cases = [
        ({"network_allow": ["not a domain!"]}, "'not a domain!'"),
        ({"network_allow": ["10.0.0.1/8"]}, "host bits set"),
        ({"network_allow": ["0.0.0.0/0"]}, "every address"),
        ({"network_allow": ["com"]}, "'com'"),
        ({"network": "offline", "network_allow": ["example.org"]}, "needs network nat"),
    ]
    async with serve(home) as running:
        for extra, words in cases:
            response = await running.post("/tasks", json={"description": "x", **extra})
            assert response.status_code == 422, response.text
            message = response.json()["error"]["message"]
            assert "network_allow" in message and words in message, message
        response = await running.post("/sandboxes", json={"network_allow": ["bad entry!"]})
        assert response.status_code == 422 and "'bad entry!'" in response.text, response.text
    with pytest.raises(ValidationError, match="needs network='nat'"):
        SandboxSpec(network_allow=["example.org"])
    assert SandboxSpec(network="nat", network_allow=["A.Example.ORG.", "::1"]).network_allow == [
        "a.example.org",
        "::1/128",
    ]


def test_names_match_exactly_or_under_a_wildcard() -> None:
    policy = netpolicy.plan(["example.org", "*.wild.example"])
    assert netpolicy.name_allowed(policy, "example.org")
    assert not netpolicy.name_allowed(policy, "www.example.org")  # not a wildcard
    assert netpolicy.name_allowed(policy, "a.b.wild.example")
    assert not netpolicy.name_allowed(policy, "wild.example")  # the wildcard is below it
    assert not netpolicy.name_allowed(policy, "evilwild.example")
    assert netpolicy.name_allowed(netpolicy.plan([]), "anything.at.all")


def test_our_dns_refuses_names_that_are_not_plain_labels() -> None:
    def query(*labels: bytes) -> bytes:
        name = b"".join(bytes([len(x)]) + x for x in labels) + b"\0"
        return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"

    assert dnsproxy.Question.parse(query(b"www", b"example", b"org")).name == "www.example.org"
    # A dot inside a label would read as a subdomain of an allowlisted name.
    assert dnsproxy.Question.parse(query(b"evil.example", b"org")) is None
    assert dnsproxy.Question.parse(query(b"a\0b", b"org")) is None
    pointer = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    assert dnsproxy.Question.parse(pointer) is None
    proxy = dnsproxy.DnsProxy([], lambda name: False, lambda n, a: None, lambda *a: None)
    reply = proxy.resolve(query(b"other", b"test"), tcp=False)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dnsproxy.NXDOMAIN


def test_the_log_is_capped_and_counts_flows_across_element_expiry(tmp_path: Path) -> None:
    path = tmp_path / "network.jsonl"
    log = netlog.ConnectionLog(path, restricted=True, cidrs=[], max_bytes=4096)

    def table(sent: int) -> hostfilter.Table:
        elem = {"val": {"concat": [7, PUBLIC, "tcp", 443, 5000]}, "counter": {"bytes": sent}}
        return hostfilter.Table({"sent4": [{"elem": elem}]}, {}, 0)

    log.update(table(100), 7)
    log.update(table(250), 7)
    log.update(hostfilter.Table({}, {}, 0), 7)  # expired: the flow is over
    log.update(table(40), 7)  # the same ports again: a new flow
    flows = netlog.read(path)
    assert [(f["sent"], f["ip"], f["port"]) for f in flows] == [
        (250, PUBLIC, 443),
        (40, PUBLIC, 443),
    ]
    for n in range(200):  # a box asking name after name cannot grow the file without end
        log.question(f"n{n}.example", "A", False, "not in the allowlist")
    assert log.full and path.stat().st_size <= 4096 + 100
    assert json.loads(path.read_text().splitlines()[-1])["truncated"] is True
