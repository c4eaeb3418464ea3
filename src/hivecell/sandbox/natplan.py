"""``nat`` networking as both providers set it up: the checks before a sandbox is made, the
plan its supervisor follows, and the clean-up after a supervisor that was killed.

Both run slirp4netns behind the host filter (local/network.py, local/hostfilter.py): a local
box's namespace is bwrap's, a VM's is the one its QEMU runs in (qemu/supervisor.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hivecell.errors import ConfigError, SandboxError
from hivecell.sandbox import netpolicy
from hivecell.sandbox.local import dnsproxy, hostfilter


def require_host_filter(network: str) -> None:
    """Refuse ``nat`` where nothing could keep the sandbox off the host's own addresses."""
    if network != "nat":
        return
    why = hostfilter.unavailable(hostfilter.find_nft())
    if why is not None:
        raise ConfigError(
            "--network nat must keep the sandbox off the host's own addresses with an "
            f"nftables filter, but {why}; otherwise use --network offline (no network).",
            op="create",
            context={"network": "nat", "reason": why},
        )


def plan(network_allow: list[str], dns_servers: list[str] | None) -> dict[str, Any]:
    """The supervisor's ``nat`` plan: the allowlist and the resolvers our DNS asks (the
    host's, from resolv.conf, unless given)."""
    servers = dns_servers
    if servers is None:
        servers = dnsproxy.nameservers(_read_text(dnsproxy.RESOLV_CONF))
    return {"policy": netpolicy.plan(network_allow), "dns_servers": servers}


def leave_host_filter(plan_file: Path, sandbox_id: str) -> None:
    """Remove the sandbox's entry from the host filter: its supervisor detaches when it
    stops, this covers one that was SIGKILLed. Call only once its slirp4netns is gone."""
    try:
        saved = json.loads(plan_file.read_text())
    except (OSError, ValueError):
        return
    nft = saved.get("nft") or hostfilter.find_nft()
    if saved.get("network") != "nat" or nft is None:
        return
    try:
        hostfilter.HostFilter(nft).detach(sandbox_id)
    except OSError as exc:
        raise SandboxError(str(exc), op="destroy", retryable=True) from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
