"""The one interface every sandbox provider implements (local now; qemu and k8s later).

Providers pass the shared conformance suite in ``tests/sandbox/conformance.py``.
"""

from __future__ import annotations

import builtins
import contextlib
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hivecell.errors import HivecellError
from hivecell.sandbox import netpolicy

if TYPE_CHECKING:
    from hivecell.sandbox.guest_client import GuestClient

NetworkMode = Literal["offline", "nat"]
ProviderName = Literal["local", "qemu"]
Desktop = Literal["full", "minimal"]
Status = Literal["running", "stopped", "error"]


class SandboxSpec(BaseModel):
    """What to create. Defaults are what a user gets from a bare ``hivecell sandbox create``."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(1280, ge=320, le=7680)
    height: int = Field(800, ge=200, le=4320)
    depth: Literal[16, 24] = 24
    network: NetworkMode = "offline"
    memory_mb: int | None = Field(4096, ge=64, description="memory limit; None = unlimited")
    max_pids: int | None = Field(1024, ge=16, description="process limit; None = unlimited")
    # Resource ceilings (limits, not reservations); see docs/sandbox.md "Limits".
    cpus: float | None = Field(2.0, gt=0, le=1024, description="CPU ceiling; None = unlimited")
    disk_mb: int | None = Field(
        4096, ge=32, description="size cap on home + /shared together; None = uncapped"
    )
    tmpfs_mb: int = Field(1024, ge=1, description="size of each of /tmp, /var/tmp, /dev/shm")
    max_file_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    glx: bool = Field(
        False,
        description="GLX (software OpenGL) for apps that need it; costs ~55 MB per sandbox",
    )
    desktop: Desktop = Field(
        "full",
        description="full: wallpaper, panel (launcher, task list, clock), file manager, menu; "
        "minimal: Xvfb and openbox on a black screen (the lightest box)",
    )
    name: str | None = Field(None, max_length=64)
    provider: ProviderName | None = Field(
        None,
        description="local: a bubblewrap box on this kernel; qemu: a virtual machine from "
        "a template (hivecell template build); unset: the caller's default",
    )
    inbox_writable: bool = Field(
        False, description="/shared/inbox writable inside the box (default: read-only)"
    )
    network_allow: list[str] = Field(
        default_factory=list,
        description="nat only: the domains (example.org), wildcards (*.example.org) and "
        "CIDRs (198.51.100.0/24) the sandbox may reach; empty = the public internet. "
        "Private, link-local and loopback ranges stay refused unless a CIDR here names them.",
    )

    @field_validator("network_allow")
    @classmethod
    def _allow_entries(cls, entries: list[str]) -> list[str]:
        return netpolicy.normalize(entries)

    @model_validator(mode="after")
    def _allow_needs_nat(self) -> SandboxSpec:
        if self.network_allow and self.network != "nat":
            raise ValueError("network_allow needs network='nat' (offline boxes reach nothing)")
        return self


class NetworkConnection(BaseModel):
    """One outbound flow of a ``nat`` sandbox, or one question to its DNS."""

    model_config = ConfigDict(extra="forbid")

    id: str
    time: float = Field(description="first seen (Unix time)")
    last: float = Field(description="last seen with traffic")
    proto: Literal["tcp", "udp", "dns"]
    ip: str | None = Field(description="destination address; null for a DNS question")
    port: int
    host: str | None = Field(description="the name our DNS answered with this address")
    verdict: Literal["allowed", "denied"]
    sent: int = Field(description="bytes the sandbox sent (IP packets)")
    received: int = Field(description="bytes it received")
    detail: str = ""


class SandboxInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    provider: str
    status: Status
    spec: SandboxSpec
    created_at: float
    endpoint: str = Field(
        description="guest agent address: unix:/path, tcp:host:port or serial:/path"
    )
    shared_dir: str = Field(description="host folder mounted at /shared inside the sandbox")
    guest_socket: str | None = Field(
        None, description="host path of the guest agent's unix socket, if it has one"
    )
    vnc_endpoint: str | None = None
    host_uid: int | None = Field(
        None,
        description="host uid the sandbox user runs as: its own unprivileged uid when "
        "hivecell runs as root, else the invoking user's",
    )
    detail: str = ""


class SandboxUsage(BaseModel):
    """What one sandbox costs the host right now, as its provider measures it.

    ``cpu_seconds`` is cumulative, so a sampler derives CPU % from two readings; a stopped
    sandbox reads zero for CPU, memory and processes (its disk stays)."""

    model_config = ConfigDict(extra="forbid")

    sandbox_id: str
    time: float = Field(description="when it was measured (Unix time)")
    cpu_seconds: float = Field(
        ge=0, description="user + system CPU time of all its processes, supervisor included"
    )
    memory_rss_mb: float = Field(ge=0, description="resident memory, shared pages counted fully")
    memory_pss_mb: float = Field(
        ge=0, description="proportional set size: shared pages split among their users"
    )
    disk_used_mb: float = Field(ge=0, description="home + /shared on host disk")
    processes: int = Field(ge=0)


@runtime_checkable
class SandboxProvider(Protocol):
    """Creates, runs and removes sandboxes; hands out guest connections."""

    name: str

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        """Create and start a sandbox; returns once the guest answers ``ping``."""
        ...

    async def start(self, sandbox_id: str) -> SandboxInfo: ...

    async def stop(self, sandbox_id: str) -> SandboxInfo: ...

    async def destroy(self, sandbox_id: str) -> None:
        """Stop and remove everything: processes, mounts, folders. Idempotent."""
        ...

    async def connect(self, sandbox_id: str) -> GuestClient:
        """An open client to the sandbox's guest agent (caller closes it)."""
        ...

    async def info(self, sandbox_id: str) -> SandboxInfo: ...

    async def list(self) -> list[SandboxInfo]: ...

    async def freeze(self, sandbox_id: str, frozen: bool) -> bool:
        """Pause (``True``) or resume (``False``) every process of a running sandbox, so the
        host can copy from it consistently; ``False`` when it cannot (then nothing changed)."""
        ...

    async def network_log(self, sandbox_id: str) -> builtins.list[NetworkConnection]:
        """Its outbound connections and DNS questions so far (``nat``; empty otherwise)."""
        ...

    async def usage(self, sandbox_id: str) -> SandboxUsage:
        """What it uses now: CPU time so far, memory, disk, processes (cheap: a sampler
        reads every sandbox every few seconds)."""
        ...


class SnapshotInfo(BaseModel):
    """A saved moment of a running sandbox: its memory, devices and disk (not /shared, which
    is the host's folder and stays as the host left it)."""

    model_config = ConfigDict(extra="forbid")

    sandbox_id: str
    name: str
    created_at: float
    size_bytes: int = Field(ge=0, description="state and disk copy on the host")


@runtime_checkable
class Snapshotting(Protocol):
    """What providers of whole machines add (qemu); the others refuse by not having it."""

    async def snapshot(self, sandbox_id: str, name: str) -> SnapshotInfo:
        """Save the running sandbox's state as ``name``; it keeps running."""
        ...

    async def restore(self, sandbox_id: str, name: str) -> SandboxInfo:
        """Rewind the sandbox to its snapshot ``name`` (running or not)."""
        ...

    async def fork(self, sandbox_id: str) -> SandboxInfo:
        """A new sandbox from the running one's current state, with a copy of its /shared."""
        ...

    async def snapshots(self, sandbox_id: str) -> builtins.list[SnapshotInfo]: ...

    async def delete_snapshot(self, sandbox_id: str, name: str) -> None: ...


async def create_owned(provider: SandboxProvider, spec: SandboxSpec) -> SandboxInfo:
    """``provider.create`` for a caller that owns the sandbox (a task's): one that fails to
    boot is destroyed at once.

    A provider keeps a box that did not boot, stopped, for a person to inspect (the CLI says
    so). A task's error already carries the log's tail, and nobody else learns the box's id,
    so it would stay (its folder, disk mount and loop device) until deleted by hand: under
    load, every boot that timed out left one (``hivecell bench server --tasks`` found them).
    """
    try:
        return await provider.create(spec)
    except HivecellError as exc:
        sandbox_id = exc.context.get("id")
        if isinstance(sandbox_id, str):
            with anyio.CancelScope(shield=True), contextlib.suppress(HivecellError):
                await provider.destroy(sandbox_id)
        raise
