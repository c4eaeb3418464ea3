"""What ``nat`` sandboxes may reach: an nftables filter on slirp4netns's sockets.

slirp4netns turns the box's traffic into ordinary sockets of a host process. So each
sandbox's slirp4netns runs with a group id of its own (``meta skgid``, the socket's fsgid:
works on every cgroup layout, unlike ``socket cgroupv2``; slirp4netns has no SO_MARK). The
output chain of the table ``inet hivecell_net`` maps that group to a conntrack mark (the
same number) and sends the packet through ``slirp``, which decides per packet, in order:

1. never the host itself: a destination the host's FIB calls local, broadcast, anycast or
   multicast (any of its addresses, not only 127.0.0.1; the FIB is read per packet, so
   addresses the host gains later are covered);
2. allowed: a CIDR the task's allowlist names (``cidr4``/``cidr6``), even a private one;
3. refused: private, link-local, metadata, loopback and reserved ranges (``DENIED4``/``6``);
4. allowed: an established connection, or an address our DNS forwarder answered for an
   allowlisted name (``named4``/``6``, with a timeout);
5. allowed: anything else if the box has no allowlist (its mark is in ``open``), else
   refused. A box missing from ``open`` is restricted: losing an element fails closed.

Only TCP and UDP leave (slirp4netns's ICMP echo is refused: it could not be recorded).
Every allowed flow is counted in ``sent*``/``recv*`` and every refused one in ``refused*``
(dynamic sets with counters, keyed by mark, address, protocol and ports), which the
supervisor reads into the box's connection log (``netlog.py``). A full flow set refuses
new flows instead of letting them through unrecorded. A socket of the reserved group
range without an entry in ``slirp`` is refused too.

DNS: slirp4netns runs with ``--disable-dns``; the box asks our forwarder (``dnsproxy.py``),
which runs on the host side and needs no hole in this filter.

A firewall reload (``flush ruleset``) or an admin may remove the table under running boxes:
each supervisor checks it every few seconds and puts it back (with the entries of every
sandbox that survived, and its own from memory), or stops its box if it cannot.

Stdlib only (the supervisor imports it). Table changes hold an flock, so concurrent
supervisors never race creating the table, picking a group or deleting the table with the
last sandbox. The table has its own name and lock (not the ``inet hivecell`` of earlier
versions, which is left alone should it still exist).
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

TABLE = "hivecell_net"
LOCK = Path("/run/hivecell-net-nftables.lock")
# systemd leaves 1879048192-2147352575 unallocated (docs/UIDS-GIDS); no host file or
# process should carry these groups, and the signed 32-bit range avoids tools' sign bugs.
GID_BASE = 2_113_929_216
GID_SLOTS = 65_536
GID_RANGE = f"{GID_BASE}-{GID_BASE + GID_SLOTS - 1}"
NEEDED_CAPS = ((12, "CAP_NET_ADMIN"), (6, "CAP_SETGID"), (21, "CAP_SYS_ADMIN"))
SBIN_PATH = "/usr/sbin:/sbin"  # not in ordinary users' PATH on Debian
_SAFE_COMMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
FLOW_TIMEOUT = 120  # seconds idle before a flow's counters go; the supervisor reads every 2 s
FLOW_SLOTS = 65_536  # per flow set, all sandboxes together

# Never reachable unless an allowlist names the CIDR. Documentation ranges (192.0.2.0/24,
# 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) stay open: they are never assigned to a
# network, so there is nothing to protect, and tests stand up "public" hosts there.
DENIED4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # carrier-grade NAT (Alibaba's metadata 100.100.100.200)
    "127.0.0.0/8",  # loopback
    "168.63.129.16/32",  # Azure's host endpoint (WireServer, DNS)
    "169.254.0.0/16",  # link-local: cloud metadata 169.254.169.254
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments (Oracle's metadata 192.0.0.192)
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking, used for internal fabrics
    "224.0.0.0/3",  # multicast, reserved, broadcast
)
DENIED6 = (
    "::/127",  # unspecified, loopback
    "::ffff:0:0/96",  # IPv4-mapped: would reach the IPv4 ranges above
    "64:ff9b::/96",  # NAT64: the same
    "64:ff9b:1::/48",  # local-use NAT64
    "100::/64",  # discard
    "2002::/16",  # 6to4: embeds IPv4 addresses
    "fc00::/7",  # unique local (AWS's metadata fd00:ec2::254)
    "fe80::/10",  # link-local
    "fec0::/10",  # site-local (deprecated)
    "ff00::/8",  # multicast
)

FLOW_KEY4 = "ct mark . ip daddr . meta l4proto . th dport . th sport"
FLOW_KEY6 = "ct mark . ip6 daddr . meta l4proto . th dport . th sport"
REPLY_KEY4 = "ct mark . ip saddr . meta l4proto . th sport . th dport"
REPLY_KEY6 = "ct mark . ip6 saddr . meta l4proto . th sport . th dport"
FLOW_TYPE4 = "mark . ipv4_addr . inet_proto . inet_service . inet_service"
FLOW_TYPE6 = "mark . ipv6_addr . inet_proto . inet_service . inet_service"
FLOW_SETS = ("sent4", "sent6", "recv4", "recv6", "refused4", "refused6")
_FLOW_FLAGS = f"flags dynamic, timeout; timeout {FLOW_TIMEOUT}s; size {FLOW_SLOTS}; counter;"

SETS = {
    "open": "type mark;",
    "cidr4": "type mark . ipv4_addr; flags interval;",
    "cidr6": "type mark . ipv6_addr; flags interval;",
    "named4": "type mark . ipv4_addr; flags timeout;",
    "named6": "type mark . ipv6_addr; flags timeout;",
    "denied4": f"type ipv4_addr; flags interval; elements = {{ {', '.join(DENIED4)} }};",
    "denied6": f"type ipv6_addr; flags interval; elements = {{ {', '.join(DENIED6)} }};",
    **{name: f"type {FLOW_TYPE4 if name[-1] == '4' else FLOW_TYPE6}; {_FLOW_FLAGS}"
       for name in FLOW_SETS},
}  # fmt: skip
CHAINS = {
    "output": (
        "type filter hook output priority filter; policy accept;",
        "ct mark set meta skgid map @slirp goto slirp",
        f"meta skgid {GID_RANGE} reject",  # a box whose entry went missing: fail closed
    ),
    "input": (
        "type filter hook input priority filter; policy accept;",
        f"ct mark {GID_BASE:#x}-{GID_BASE + GID_SLOTS - 1:#x} meta l4proto {{ tcp, udp }} "
        "goto received",
    ),
    "received": (
        f"update @recv4 {{ {REPLY_KEY4} }}",
        f"update @recv6 {{ {REPLY_KEY6} }}",
    ),
    "slirp": (
        "meta l4proto != { tcp, udp } goto refuse",
        "fib daddr type { local, broadcast, anycast, multicast } goto refuse",
        "ct mark . ip daddr @cidr4 goto allow",
        "ct mark . ip6 daddr @cidr6 goto allow",
        "ip daddr @denied4 goto refuse",
        "ip6 daddr @denied6 goto refuse",
        "ct state established,related goto allow",
        "ct mark . ip daddr @named4 goto allow",
        "ct mark . ip6 daddr @named6 goto allow",
        "ct mark @open goto allow",
        "goto refuse",
    ),
    "allow": (
        f"update @sent4 {{ {FLOW_KEY4} }} accept",
        f"update @sent6 {{ {FLOW_KEY6} }} accept",
        "reject with icmpx admin-prohibited",  # the flow set is full: nothing unrecorded
    ),
    "refuse": (
        f"update @refused4 {{ {FLOW_KEY4} }}",
        f"update @refused6 {{ {FLOW_KEY6} }}",
        "meta l4proto tcp reject with tcp reset",
        "reject with icmpx admin-prohibited",
    ),
}
RULES = sum(len(lines) for lines in CHAINS.values()) - 2  # two chain headers
DEFINITION = "".join(
    [
        f"table inet {TABLE} {{\n",
        "    map slirp { type gid : mark; }\n",
        *(f"    set {name} {{ {body} }}\n" for name, body in SETS.items()),
        *(
            f"    chain {name} {{\n" + "".join(f"        {line}\n" for line in lines) + "    }\n"
            for name, lines in CHAINS.items()
        ),
        "}\n",
    ]
)
# Adding then deleting makes the batch replace a damaged table instead of failing on it.
RESET = f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n"
_KEPT_SETS = ("open", "cidr4", "cidr6", "named4", "named6")  # put back after a repair
EXPIRING = ("named4", "named6", *FLOW_SETS)  # sets whose elements time out


class BoxRules:
    """One sandbox's entries: its group, whether it is open, its allowlisted CIDRs."""

    def __init__(self, sandbox_id: str, policy: dict[str, Any]) -> None:
        _check_comment(sandbox_id)
        self.sandbox_id = sandbox_id
        self.open = not policy.get("restricted", False)
        self.cidr4: list[str] = list(policy.get("cidr4", []))
        self.cidr6: list[str] = list(policy.get("cidr6", []))

    def script(self, gid: int, named: dict[str, int] | None = None) -> str:
        """Adds this box's elements; ``named``: address -> seconds left."""
        script = _elements("add", "slirp", [f'{gid} comment "{self.sandbox_id}" : {gid}'])
        script += _elements("add", "open", [str(gid)]) if self.open else ""
        for name, cidrs in (("cidr4", self.cidr4), ("cidr6", self.cidr6)):
            script += _elements("add", name, [f"{gid} . {c}" for c in cidrs]) if cidrs else ""
        return script + named_script(gid, named or {})


def named_script(gid: int, named: dict[str, int]) -> str:
    """(Re)add addresses our DNS answered, each with a fresh timeout: add, delete, add
    (one atomic batch) because adding an existing element keeps its old timeout."""
    script = ""
    for address, seconds in named.items():
        name = "named6" if ":" in address else "named4"
        element = f"{gid} . {address}"
        script += _elements("add", name, [element]) + _elements("delete", name, [element])
        script += _elements("add", name, [f"{element} timeout {max(1, seconds)}s"])
    return script


class Table:
    """What the kernel holds of the table: elements by set, and how many rules."""

    def __init__(self, sets: dict[str, list[Any]], slirp: dict[int, str], rules: int) -> None:
        self.sets = sets
        self.slirp = slirp  # gid -> sandbox id
        self.rules = rules

    @classmethod
    def parse(cls, listing: str) -> Table:
        """From ``nft -j list table``."""
        sets: dict[str, list[Any]] = {}
        slirp: dict[int, str] = {}
        rules = 0
        for item in json.loads(listing)["nftables"]:
            if "set" in item:
                sets[item["set"]["name"]] = item["set"].get("elem", [])
            elif "map" in item and item["map"]["name"] == "slirp":
                sets["slirp"] = []
                for key, _mark in item["map"].get("elem", []):
                    entry = key["elem"] if isinstance(key, dict) else {"val": key}
                    slirp[int(entry["val"])] = str(entry.get("comment", ""))
            rules += "rule" in item
        return cls(sets, slirp, rules)

    def intact(self) -> bool:
        """Every set and rule there, and the refused ranges all in place (a flushed
        ``denied4`` would open the private ranges while every rule still stands)."""
        denied = len(self.sets.get("denied4", [])), len(self.sets.get("denied6", []))
        complete = denied == (len(DENIED4), len(DENIED6))
        return set(self.sets) == {"slirp", *SETS} and self.rules == RULES and complete

    def has(self, gid: int, box: BoxRules) -> bool:
        """Whether ``box``'s group entry (and its open flag) is in place."""
        if self.slirp.get(gid) != box.sandbox_id:
            return False
        return not box.open or gid in self.sets.get("open", [])

    def flows(self, name: str, gid: int) -> dict[tuple[str, str, int, int], tuple[int, int]]:
        """(address, protocol, dport, sport) -> (packets, bytes) of ``gid`` in a flow set."""
        found = {}
        for elem in self.sets.get(name, []):
            entry = elem.get("elem", elem) if isinstance(elem, dict) else {}
            key = entry.get("val", {}).get("concat") if isinstance(entry, dict) else None
            if not key or key[0] != gid:
                continue
            counter = entry.get("counter") or {}
            found[(str(key[1]), str(key[2]), int(key[3]), int(key[4]))] = (
                int(counter.get("packets", 0)),
                int(counter.get("bytes", 0)),
            )
        return found

    def elements_script(self) -> str:
        """Adds back this table's per-box elements to a rebuilt one."""
        script = "".join(
            _elements("add", "slirp", [_gid_element(gid, owner)])
            for gid, owner in self.slirp.items()
        )
        for name in _KEPT_SETS:
            kept = [_element_text(e) for e in self.sets.get(name, [])]
            script += _elements("add", name, [k for k in kept if k]) if any(kept) else ""
        return script


class HostFilter:
    """The ``inet hivecell_net`` table, shared by every sandbox on the host."""

    def __init__(self, nft: str) -> None:
        self.nft = nft

    def attach(self, box: BoxRules) -> int:
        """Filter ``box``'s next slirp4netns; returns the group it must run with."""
        with _locked():
            gid = pick_gid(box.sandbox_id, self._repair(self.read()).slirp)
            self._apply(box.script(gid))
        return gid

    def ensure(
        self, box: BoxRules, gid: int, named: dict[str, int], table: Table | None = None
    ) -> bool:
        """Put back the table and ``box``'s entries if something removed them; returns
        whether it had to. ``table``: as just read, if the caller has it."""
        table = table or self.read()
        if table is not None and table.intact() and table.has(gid, box):
            return False
        with _locked():
            self._repair(self.read())
            self._apply(box.script(gid, named))
        return True

    def add_named(self, gid: int, named: dict[str, int]) -> None:
        """Allow ``gid`` to reach addresses our DNS answered, for the seconds given."""
        with _locked():
            self._apply(named_script(gid, named))

    def detach(self, sandbox_id: str) -> None:
        """Forget ``sandbox_id``'s group and entries once its slirp4netns is gone; the last
        sandbox takes the table with it."""
        with _locked():
            table = self.read()
            if table is None:
                return
            mine = sorted(gid for gid, owner in table.slirp.items() if owner == sandbox_id)
            if len(mine) == len(table.slirp):
                self._apply(f"delete table inet {TABLE}\n")
            elif mine:
                self._apply(_forget_script(table, mine, EXPIRING, keep=True))
                # Elements with a timeout may expire between listing and deleting, which
                # fails a whole batch: those go in one of their own, whose failure is fine
                # (what it missed expires by itself).
                with contextlib.suppress(OSError):
                    self._apply(_forget_script(table, mine, EXPIRING, keep=False))

    def read(self) -> Table | None:
        """The table as the kernel holds it; None when it does not exist."""
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
        survivors = table or Table({}, {}, 0)
        self._apply(RESET + DEFINITION + survivors.elements_script())
        return survivors

    def _apply(self, script: str) -> None:
        if not script:
            return
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


def _forget_script(table: Table, gids: list[int], sets: tuple[str, ...], keep: bool) -> str:
    """Deletes the elements of ``gids`` in ``sets`` (``keep``: in every other set, and the
    group entries)."""
    script = _elements("delete", "slirp", [str(gid) for gid in gids]) if keep else ""
    for name, elements in table.sets.items():
        if name in ("slirp", "denied4", "denied6") or (name in sets) == keep:
            continue
        mine = [_element_text(e) for e in elements if _element_gid(e) in gids]
        script += _elements("delete", name, [m.split(" timeout ")[0] for m in mine if m])
    return script


def _element_gid(elem: Any) -> int | None:
    if isinstance(elem, int):
        return elem
    entry = elem.get("elem", elem) if isinstance(elem, dict) else {}
    value = entry.get("val", entry) if isinstance(entry, dict) else entry
    if isinstance(value, dict) and "concat" in value:
        return int(value["concat"][0])
    return int(value) if isinstance(value, int) else None


def _element_text(elem: Any) -> str:
    """An element of ``nft -j`` as nft syntax (with its time left), "" if unknown."""
    if isinstance(elem, int):
        return str(elem)
    entry = elem.get("elem", elem) if isinstance(elem, dict) else {}
    value = entry.get("val", entry) if isinstance(entry, dict) else entry
    parts = value.get("concat") if isinstance(value, dict) else None
    if not parts:
        return ""
    text = " . ".join(_part_text(p) for p in parts)
    expires = entry.get("expires") if isinstance(entry, dict) else None
    return f"{text} timeout {max(1, int(expires))}s" if expires is not None else text


def _part_text(part: Any) -> str:
    if isinstance(part, dict) and "prefix" in part:
        return f"{part['prefix']['addr']}/{part['prefix']['len']}"
    if isinstance(part, dict) and "range" in part:
        return f"{part['range'][0]}-{part['range'][1]}"
    return str(part)


def _gid_element(gid: int, owner: str) -> str:
    # nft strings have no escapes: a comment we did not write is dropped, not quoted.
    label = f' comment "{owner}"' if _SAFE_COMMENT.match(owner) else ""
    return f"{gid}{label} : {gid}"


def _elements(verb: str, name: str, elements: list[str]) -> str:
    if not elements:
        return ""
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


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
