"""Admission control: never start a sandbox the host cannot hold.

Three caps, all global to one sandbox home (so sandboxes made by the SDK, the CLI or
another process count too, because they are in ``provider.list()``): how many sandboxes
run, how much memory they use, and how many CPUs they keep busy. A sandbox's own
``memory_mb`` / ``cpus`` are ceilings, not reservations: what counts is what each one
really uses (the metrics sampler's PSS and CPU %), and an estimate for a box not measured
yet. Unset caps are derived from the host so that idle sandboxes fit by the hundred.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
from pydantic import BaseModel, ConfigDict, Field

from hivecell.errors import HivecellError
from hivecell.sandbox.base import SandboxInfo, SandboxProvider, SandboxSpec

# What a box costs before it has been measured: an idle desktop's RSS (README, bench
# sandbox), rounded up. Also the unit the default sandbox cap is derived from.
NEW_BOX_MB = 120.0
NEW_BOX_CPUS = 0.05  # an idle desktop; a boot's burst is the boot throttle's business
HOST_MEMORY_SHARE = 0.8  # the rest stays for the host, the server and its browsers
SETTING = "capacity.{} (Settings → Capacity, or PUT /api/v1/settings)"


class CapacitySettings(BaseModel):
    """Caps over all sandboxes of this home; ``None`` = derived from the host."""

    model_config = ConfigDict(extra="forbid")

    max_sandboxes: int | None = Field(None, ge=1, le=100_000)
    max_memory_mb: int | None = Field(None, ge=64, description="sum of the sandboxes' PSS")
    max_cpus: float | None = Field(None, gt=0, le=4096, description="sum of their CPU use")


class Caps(BaseModel):
    """The caps in force (settings with the host's defaults filled in)."""

    model_config = ConfigDict(extra="forbid")

    max_sandboxes: int
    max_memory_mb: int
    max_cpus: float


class Usage(BaseModel):
    """What the running sandboxes take now, plus admissions still booting."""

    model_config = ConfigDict(extra="forbid")

    sandboxes: int
    memory_mb: float
    cpus: float
    booting: int = Field(description="admitted and still being created")


class Measured(Protocol):
    """One sandbox's latest figures (the metrics sampler's ``SandboxStats``)."""

    @property
    def memory_pss_mb(self) -> float: ...

    @property
    def cpu_percent(self) -> float: ...


class CapacityExceeded(HivecellError):
    """Starting one more sandbox would pass a cap; retry once sandboxes are removed."""

    code = "capacity_exceeded"
    default_retryable = True


@dataclass(frozen=True)
class Host:
    memory_mb: int
    cpus: int

    @classmethod
    def detect(cls, meminfo: Path = Path("/proc/meminfo")) -> Host:
        total_kb = 0
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total_kb = int(line.split()[1])
        return cls(memory_mb=total_kb // 1024, cpus=len(os.sched_getaffinity(0)))


def caps_for(settings: CapacitySettings, host: Host) -> Caps:
    memory = settings.max_memory_mb or int(host.memory_mb * HOST_MEMORY_SHARE)
    return Caps(
        max_sandboxes=settings.max_sandboxes or max(1, int(memory // NEW_BOX_MB)),
        max_memory_mb=memory,
        max_cpus=settings.max_cpus or float(host.cpus),
    )


class Capacity:
    """Admits new sandboxes against the caps; waiters are served in arrival order."""

    def __init__(
        self,
        provider: SandboxProvider,
        caps: Callable[[], Caps],
        measured: Callable[[str], Measured | None] = lambda _id: None,
    ) -> None:
        self._provider = provider
        self._caps = caps
        self._measured = measured
        self._booting = 0
        self._lock = anyio.Lock()  # one admission decision at a time
        self._line = anyio.Lock()  # FIFO among those waiting for room
        self._changed = anyio.Event()
        self.waiting = 0

    def caps(self) -> Caps:
        return self._caps()

    def changed(self) -> None:
        """A sandbox went away, new figures came in or the caps moved: look again."""
        self._changed.set()

    async def usage(self) -> Usage:
        running = [i for i in await self._provider.list() if i.status == "running"]
        memory = cpus = 0.0
        for info in running:
            memory, cpus = memory + self._memory(info), cpus + self._cpus(info)
        return Usage(
            sandboxes=len(running) + self._booting,
            memory_mb=round(memory + self._booting * NEW_BOX_MB, 1),
            cpus=round(cpus + self._booting * NEW_BOX_CPUS, 2),
            booting=self._booting,
        )

    async def refusal(self, spec: SandboxSpec) -> CapacityExceeded | None:
        """Why one more sandbox does not fit now (None: it fits)."""
        caps, used = self._caps(), await self.usage()
        checks = (
            ("max_sandboxes", used.sandboxes + 1, caps.max_sandboxes, "sandboxes"),
            ("max_memory_mb", used.memory_mb + NEW_BOX_MB, caps.max_memory_mb, "MB of memory"),
            ("max_cpus", used.cpus + NEW_BOX_CPUS, caps.max_cpus, "CPUs"),
        )
        for name, wanted, cap, unit in checks:
            if wanted > cap:
                return CapacityExceeded(
                    f"one more sandbox would need {wanted:g} {unit}, over the cap of {cap:g}: "
                    f"remove sandboxes or raise {SETTING.format(name)}",
                    op="create_sandbox",
                    context={"cap": name, "limit": cap, "used": used.model_dump()},
                )
        return None

    @asynccontextmanager
    async def admitted(
        self,
        spec: SandboxSpec,
        *,
        wait: bool,
        make_room: Callable[[], Awaitable[bool]] | None = None,
        on_wait: Callable[[CapacityExceeded | None], None] | None = None,
    ) -> AsyncIterator[None]:
        """Hold a place for one sandbox while the body creates it.

        ``wait=False`` raises ``CapacityExceeded`` at once. Otherwise wait in line until
        it fits; ``make_room`` may free some (evict an idle warm sandbox: True if it did) and
        ``on_wait`` hears why it waits (``None`` once admitted).
        """
        async with self._line:
            self.waiting += 1
            try:
                await self._admit(spec, wait, make_room, on_wait)
            finally:
                self.waiting -= 1
        try:
            yield
        finally:
            self._booting -= 1
            self.changed()

    async def _admit(
        self,
        spec: SandboxSpec,
        wait: bool,
        make_room: Callable[[], Awaitable[bool]] | None,
        on_wait: Callable[[CapacityExceeded | None], None] | None,
    ) -> None:
        while True:
            changed = self._changed = anyio.Event()
            async with self._lock:
                refused = await self.refusal(spec)
                if refused is None:
                    self._booting += 1
                    if on_wait:
                        on_wait(None)
                    return
            if make_room is not None and await make_room():
                continue
            if not wait:
                raise refused
            if on_wait:
                on_wait(refused)
            # Woken by a change; a sandbox removed by another process has no hook, so
            # look again after a while regardless.
            with anyio.move_on_after(2.0):
                await changed.wait()

    def _memory(self, info: SandboxInfo) -> float:
        figures = self._measured(info.id)
        return figures.memory_pss_mb if figures is not None else NEW_BOX_MB

    def _cpus(self, info: SandboxInfo) -> float:
        figures = self._measured(info.id)
        return figures.cpu_percent / 100 if figures is not None else NEW_BOX_CPUS
