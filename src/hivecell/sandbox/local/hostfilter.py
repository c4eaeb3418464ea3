"""Keeps ``nat`` sandboxes off the host itself: an nftables filter on slirp4netns's sockets.

slirp4netns turns the box's traffic into ordinary sockets of a host process, and the kernel
hands a connect to *any* address of the host (not only 127.0.0.1, which
``--disable-host-loopback`` covers) to the service bound there. So each sandbox's
slirp4netns runs with a group id of its own, listed in the set ``slirp`` of the table
``inet hivecell``, whose output chain rejects what sockets of those groups send to a
destination the host's FIB calls local, IPv4 and IPv6 (broadcast, multicast and anycast
too: the kernel delivers those to host sockets as well). The FIB is consulted per packet,
so addresses the host gains later are covered; DNAT to a local address is seen too
(the filter hook runs after nat output).

Why a group (``meta skgid``, the socket's fsgid): it works on every cgroup layout, while
nft's ``socket cgroupv2`` resolves paths only under /sys/fs/cgroup (hybrid hosts mount
cgroup2 elsewhere) and slirp4netns has no SO_MARK option. Installing the table needs
CAP_NET_ADMIN and running slirp4netns with another group CAP_SETGID, so ``nat`` needs root.

One exception: slirp4netns forwards the box's DNS (10.0.2.3) to the resolver named in
/etc/resolv.conf, often a local stub (systemd-resolved's 127.0.0.53); TCP and UDP port 53
of the resolvers listed there stay open.

A firewall reload (``flush ruleset`` in /etc/nftables.conf) or an admin may remove the
table under running boxes: each supervisor checks its entry every few seconds and puts the
table back (with every sandbox's entry that survived), or stops its box if it cannot.

Stdlib only (the supervisor imports it). Every change holds an flock, so concurrent
supervisors never race creating the table, picking a group or deleting the table with the
last sandbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TABLE = "hivecell"
LOCK = Path("/run/hivecell-nftables.lock")
RESOLV_CONF = Path("/etc/resolv.conf")
# systemd leaves 1879048192-2147352575 unallocated (docs/UIDS-GIDS); no host file or
# process should carry these groups, and the signed 32-bit range avoids tools' sign bugs.
GID_BASE = 2_113_929_216
GID_SLOTS = 65_536
NEEDED_CAPS = ((12, "CAP_NET_ADMIN"), (6, "CAP_SETGID"))
SBIN_PATH = "/usr/sbin:/sbin"  # not in ordinary users' PATH on Debian
_SAFE_COMMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

SETS = {"slirp": "gid", "dns4": "ipv4_addr", "dns6": "ipv6_addr"}
OUTPUT_RULES = ("meta skgid @slirp jump slirp",)
SLIRP_RULES = (
    "fib daddr type != { local, broadcast, anycast, multicast } accept",
    "meta l4proto { tcp, udp } th dport 53 ip daddr @dns4 accept",
    "meta l4proto { tcp, udp } th dport 53 ip6 daddr @dns6 accept",
    "meta l4proto tcp reject with tcp reset",
    "reject with icmpx admin-prohibited",
)
DEFINITION = "".join(
    [
        f"table inet {TABLE} {{\n",
        *(f"    set {name} {{ type {kind}; }}\n" for name, kind in SETS.items()),
        "    chain output {\n        type filter hook output priority filter; policy accept;\n",
        *(f"        {rule}\n" for rule in OUTPUT_RULES),
        "    }\n    chain slirp {\n",
        *(f"        {rule}\n" for rule in SLIRP_RULES),
        "    }\n}\n",
    ]
)
# Adding then deleting makes the batch replace a damaged table instead of failing on it.
RESET = f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"


class Table:
    """What the kernel holds of the table: set elements and how many rules."""

    def __init__(self, sets: dict[str, list[Any]], rules: int) -> None:
        self.sets = sets
        self.rules = rules

    @classmethod
    def parse(cls, listing: str) -> Table:
        """From ``nft -j list table``."""
        sets: dict[str, list[Any]] = {}
        rules = 0
        for item in json.loads(listing)["nftables"]:
            if "set" in item:
                sets[item["set"]["name"]] = item["set"].get("elem", [])
            rules += "rule" in item
        return cls(sets, rules)

    @property
    def slirp(self) -> dict[int, str]:
        """gid -> sandbox id."""
        found: dict[int, str] = {}
        for elem in self.sets.get("slirp", []):
            entry = elem["elem"] if isinstance(elem, dict) else {"val": elem}
            found[int(entry["val"])] = str(entry.get("comment", ""))
        return found

    def intact(self) -> bool:
        return set(self.sets) == set(SETS) and self.rules == len(OUTPUT_RULES) + len(SLIRP_RULES)

    def elements_script(self) -> str:
        """Adds back this table's elements to a rebuilt one."""
        slirp = [_gid_element(gid, owner) for gid, owner in self.slirp.items()]
        script = _set_script("add", "slirp", slirp) if slirp else ""
        for name in ("dns4", "dns6"):
            addresses = [str(a) for a in self.sets.get(name, []) if isinstance(a, str)]
            script += _set_script("add", name, addresses) if addresses else ""
        return script


class HostFilter:
    """The ``inet hivecell`` table, shared by every sandbox on the host."""

    def __init__(self, nft: str) -> None:
        self.nft = nft

    def attach(self, sandbox_id: str) -> int:
        """Filter ``sandbox_id``'s next slirp4netns; returns the group it must run with."""
        _check_comment(sandbox_id)
        with _locked():
            gid = pick_gid(sandbox_id, self._repair(self._read()).slirp)
            self._apply(_attach_script(gid, sandbox_id))
        return gid

    def ensure(self, sandbox_id: str, gid: int) -> bool:
        """Put back the table and ``sandbox_id``'s entry if something removed them; returns
        whether it had to."""
        with _locked():
            table = self._read()
            if table is not None and table.intact() and table.slirp.get(gid) == sandbox_id:
                return False
            self._repair(table)
            self._apply(_attach_script(gid, sandbox_id))
        return True

    def detach(self, sandbox_id: str) -> None:
        """Forget ``sandbox_id``'s group once its slirp4netns is gone; the last one takes the
        table with it."""
        with _locked():
            table = self._read()
            if table is None:
                return
            taken = table.slirp
            mine = sorted(gid for gid, owner in taken.items() if owner == sandbox_id)
            if len(mine) == len(taken):
                self._apply(f"delete table inet {TABLE}\n")
            elif mine:
                self._apply(_set_script("delete", "slirp", [str(gid) for gid in mine]))

    def _read(self) -> Table | None:
        """None when the table does not exist."""
        listing = _nft(self.nft, ["-j", "list", "table", "inet", TABLE])
        if listing.returncode != 0:
            if "No such file or directory" in listing.stderr:
                return None
            raise OSError(f"nft cannot list the {TABLE} table: {listing.stderr.strip()}")
        return Table.parse(listing.stdout)

    def _repair(self, table: Table | None) -> Table:
        """The table as it is if intact, else rebuilt with the elements that survived."""
        if table is not None and table.intact():
            return table
        survivors = table or Table({}, 0)
        self._apply(RESET + DEFINITION + survivors.elements_script())
        return survivors

    def _apply(self, script: str) -> None:
        result = _nft(self.nft, ["-f", "-"], script)
        if result.returncode != 0:
            raise OSError(f"nft refused the {TABLE} table change: {result.stderr.strip()}")


def find_nft() -> str | None:
    from shutil import which  # provider side only: the supervisor gets the path in its plan

    return which("nft") or which("nft", path=SBIN_PATH)


def unavailable(nft: str | None) -> str | None:
    """Why the filter cannot be installed by this process, None when it can."""
    caps = _effective_caps()
    lacking = [name for bit, name in NEEDED_CAPS if not caps >> bit & 1]
    if lacking:
        return f"that needs root ({' and '.join(lacking)} missing): run hivecell as root"
    if nft is None:
        return "nft is not installed: apt install nftables"
    probe = _nft(nft, ["--check", "-f", "-"], DEFINITION)
    if probe.returncode != 0:
        return f"nftables refused the filter ({probe.stderr.strip()})"
    return None


def _nft(nft: str, args: list[str], script: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([nft, *args], input=script, capture_output=True, text=True, check=False)


def pick_gid(sandbox_id: str, taken: dict[int, str]) -> int:
    """A previous run's group if its supervisor died before detaching, else a free one.

    Spread by the id rather than the lowest free: after a ruleset flush a new sandbox then
    hardly ever takes a group that a running one uses but has not put back yet.
    """
    for gid, owner in taken.items():
        if owner == sandbox_id:
            return gid
    start = zlib.crc32(sandbox_id.encode())
    for step in range(GID_SLOTS):
        gid = GID_BASE + (start + step) % GID_SLOTS
        if gid not in taken:
            return gid
    raise OSError(f"all {GID_SLOTS} sandbox network groups are in use")


def nameservers(resolv_conf: str) -> dict[str, list[str]]:
    """The resolvers slirp4netns may forward DNS to, by set: {"dns4": [...], "dns6": [...]}."""
    found: dict[str, list[str]] = {"dns4": [], "dns6": []}
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        address = fields[1].split("%")[0]  # fe80::1%eth0: the set holds the bare address
        family = _address_set(address)
        if family is not None and address not in found[family]:
            found[family].append(address)
    return found


def _address_set(address: str) -> str | None:
    import socket  # only nat boxes need it; the supervisor of any other starts without it

    for family, name in ((socket.AF_INET, "dns4"), (socket.AF_INET6, "dns6")):
        try:
            socket.inet_pton(family, address)
        except OSError:
            continue
        return name
    return None


def _attach_script(gid: int, sandbox_id: str) -> str:
    script = _set_script("add", "slirp", [_gid_element(gid, sandbox_id)])
    for name, addresses in nameservers(_resolv_conf()).items():
        if addresses:
            script += _set_script("add", name, addresses)
    return script


def _gid_element(gid: int, owner: str) -> str:
    # nft strings have no escapes: a comment we did not write is dropped, not quoted.
    return f'{gid} comment "{owner}"' if _SAFE_COMMENT.match(owner) else str(gid)


def _set_script(verb: str, name: str, elements: list[str]) -> str:
    return f"{verb} element inet {TABLE} {name} {{ {', '.join(elements)} }}\n"


def _check_comment(sandbox_id: str) -> None:
    # The id becomes an nft string, which has no escapes.
    if not _SAFE_COMMENT.match(sandbox_id):
        raise ValueError(f"sandbox id {sandbox_id!r} cannot label an nftables element")


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _resolv_conf() -> str:
    try:
        return RESOLV_CONF.read_text()
    except OSError:
        return ""  # then slirp4netns has no resolver to forward to either


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
