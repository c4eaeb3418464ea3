"""A task's network allowlist: which domains and CIDRs a ``nat`` sandbox may reach.

Entries are domain names (``example.org``: that name only), wildcards (``*.example.org``:
every name under it, not the name itself) and IPv4/IPv6 addresses or CIDRs
(``198.51.100.0/24``). A CIDR is allowed even inside a private range (it is the way to
let a box reach one LAN host); the host's own addresses stay out of reach whatever the
list says. An empty list keeps the public internet open (private ranges stay refused).

Stdlib only: the supervisor reads the plan this builds.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

MAX_ENTRIES = 256
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize(entries: list[str]) -> list[str]:
    """Each entry checked and in canonical form (lower case, network address), unique, in
    the order given; ValueError names the first bad entry."""
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"at most {MAX_ENTRIES} network_allow entries, got {len(entries)}")
    found: list[str] = []
    for entry in entries:
        canonical = _canonical(entry)
        if canonical not in found:
            found.append(canonical)
    return found


def plan(entries: list[str]) -> dict[str, Any]:
    """What the supervisor needs: restricted or not, CIDRs by family, names and wildcards."""
    cidr4: list[str] = []
    cidr6: list[str] = []
    names: list[str] = []
    wildcards: list[str] = []
    for entry in normalize(entries):
        if entry.startswith("*."):
            wildcards.append(entry[2:])
        elif _is_network(entry):
            (cidr6 if ":" in entry else cidr4).append(entry)
        else:
            names.append(entry)
    return {
        "restricted": bool(entries),
        "cidr4": cidr4,
        "cidr6": cidr6,
        "names": names,
        "wildcards": wildcards,
    }


def name_allowed(policy: dict[str, Any], name: str) -> bool:
    """Whether our DNS may answer ``name`` (lower case, no trailing dot) for this policy."""
    if not policy.get("restricted"):
        return True
    if name in policy.get("names", []):
        return True
    return any(name.endswith("." + suffix) for suffix in policy.get("wildcards", []))


def _canonical(entry: str) -> str:
    text = entry.strip().lower().rstrip(".") if isinstance(entry, str) else ""
    if not text:
        raise ValueError("an empty network_allow entry; give a domain, *.domain or a CIDR")
    if _is_network(text):
        return _network(entry.strip(), text)
    name = text[2:] if text.startswith("*.") else text
    if not _is_domain(name):
        raise ValueError(
            f"network_allow entry {entry!r} is neither a domain (example.org), a wildcard "
            "(*.example.org) nor an IP address or CIDR (198.51.100.0/24)"
        )
    return text


def _is_network(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f:.]+(/\d{1,3})?", text)) and (
        ":" in text or re.fullmatch(r"[\d.]+(/\d{1,2})?", text) is not None
    )


def _network(entry: str, text: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(
            f"network_allow entry {entry!r} is not a valid IP address or CIDR ({exc}); "
            "e.g. 198.51.100.0/24 or 2001:db8::/32"
        ) from None
    if network.prefixlen == 0:
        raise ValueError(
            f"network_allow entry {entry!r} allows every address, private ranges included; "
            "leave network_allow empty for the public internet"
        )
    return str(network)


def _is_domain(name: str) -> bool:
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(x) for x in labels)
