"""The warm pool: booted sandboxes waiting for a task, so a task does not wait for a boot.

Kept per *shape* (everything of a ``SandboxSpec`` but its name: resolution, network,
allowlist, limits): a task takes a warm sandbox of exactly its shape, or gets a new one.
A sandbox leaves the pool when it is taken and never comes back (a used desktop is never
handed to another task). Each shape a task asked for — and the default shape — is kept
at ``size`` warm sandboxes until nobody asked for it for ``idle_timeout_s``; then its warm
sandboxes are removed. Refills go through ``Capacity`` like every other sandbox, and give
way to tasks waiting for room.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, ConfigDict, Field

from hivecell.agent.runner import RunSettings
from hivecell.errors import HivecellError
from hivecell.pool.capacity import Capacity, CapacityExceeded
from hivecell.sandbox.base import SandboxInfo, SandboxProvider, SandboxSpec, create_owned

log = logging.getLogger(__name__)

NAME_PREFIX = "pool-"  # warm sandboxes are named pool-<n>: a restart removes leftovers
RETRY_AFTER_S = 10.0  # a shape whose refill failed is tried again after this long
# A shape just taken from refills this much later: a boot's CPU burst (Xvfb, openbox, the
# agent's imports) on a small host otherwise lands on the task's first step and slowed its
# dispatch by tens of milliseconds.
REFILL_AFTER_TAKE_S = 1.0
PRIME_SETTLE_S = 5.0  # a desktop that keeps changing (an animation) is primed as it is


class PoolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: int = Field(1, ge=0, le=64, description="warm sandboxes per shape in use; 0: off")
    idle_timeout_s: float = Field(
        1800.0,
        gt=0,
        le=30 * 24 * 3600,
        description="remove a shape's warm sandboxes after nobody asked for that shape this long",
    )


def shape_key(spec: SandboxSpec) -> str:
    return spec.model_dump_json(exclude={"name"})


@dataclass
class _Shape:
    spec: SandboxSpec
    last_wanted: float
    warm: deque[SandboxInfo] = field(default_factory=deque)
    booting: int = 0
    error: str = ""
    failed_at: float = 0.0
    taken: int = 0
    missed: int = 0
    taken_at: float = float("-inf")


class WarmPool:
    def __init__(
        self,
        provider: SandboxProvider,
        capacity: Capacity,
        *,
        settings: Callable[[], PoolSettings],
        default_spec: Callable[[], SandboxSpec],
        on_change: Callable[[dict[str, Any]], object] = lambda _view: None,
        on_ready: Callable[[str], object] = lambda _id: None,
        on_removed: Callable[[str], object] = lambda _id: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._provider = provider
        self._capacity = capacity
        self._settings = settings
        self._default_spec = default_spec
        self._on_change = on_change
        self._on_ready = on_ready
        self._on_removed = on_removed
        self._clock = clock
        self._shapes: dict[str, _Shape] = {}
        self._changed = anyio.Event()
        self._serial = 0
        self._default_key = ""
        self._removing = 0  # out of the pool, still being destroyed

    # --- lifetime ---------------------------------------------------------------------------
    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the pool filled until cancelled; then remove every warm sandbox."""
        try:
            async with anyio.create_task_group() as tg:
                task_status.started()
                while True:
                    self._changed = anyio.Event()
                    await self._expire()
                    self._refill(tg)
                    with anyio.move_on_after(self._next_check()):
                        await self._changed.wait()
        finally:  # boots in flight have finished (shielded): remove what the pool holds
            with anyio.CancelScope(shield=True):
                await self.drain()

    def poke(self) -> None:
        """Settings changed, a sandbox was taken or room freed: look at the pool again."""
        self._changed.set()

    async def drain(self) -> None:
        """Remove every warm sandbox (server shutdown, pool turned off)."""
        for shape in self._shapes.values():
            while shape.warm:
                await self._remove(shape.warm.popleft().id)

    # --- taking -----------------------------------------------------------------------------
    async def take(self, spec: SandboxSpec) -> SandboxInfo | None:
        """A warm sandbox of ``spec``'s shape, now theirs alone; None when none is ready
        (then the shape is wanted, and the pool refills it for the next task)."""
        shape = self._want(spec)
        while shape.warm:
            info = shape.warm.popleft()
            if await self._alive(info.id):
                shape.taken += 1
                shape.taken_at = self._clock()
                self._changed_view()
                return info
            await self._remove(info.id)  # died while waiting: never hand out a dead box
        shape.missed += 1
        self._changed_view()
        return None

    def is_pools(self, info: SandboxInfo) -> bool:
        """Made by the pool (warm, or still booting or being removed), not yet a task's."""
        return (info.spec.name or "").startswith(NAME_PREFIX)

    def is_warm(self, sandbox_id: str) -> bool:
        return any(info.id == sandbox_id for s in self._shapes.values() for info in s.warm)

    async def release(self, sandbox_id: str) -> bool:
        """Remove one warm sandbox from the pool and destroy it (a person deleted it)."""
        for shape in self._shapes.values():
            for info in list(shape.warm):
                if info.id == sandbox_id:
                    shape.warm.remove(info)
                    await self._remove(sandbox_id)  # announces the change
                    return True
        return False

    async def evict_one(self) -> bool:
        """Make room for a task: remove the oldest warm sandbox of any shape."""
        candidates = [s for s in self._shapes.values() if s.warm]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda s: s.warm[0].created_at)
        await self._remove(oldest.warm.popleft().id)
        return True

    # --- what the API shows -----------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        settings = self._settings()
        now = self._clock()
        shapes = []
        for shape in self._shapes.values():
            shapes.append(
                {
                    "spec": shape.spec.model_dump(mode="json", exclude={"name"}),
                    "warm": [info.id for info in shape.warm],
                    "booting": shape.booting,
                    "idle_s": round(now - shape.last_wanted, 1),
                    "taken": shape.taken,
                    "missed": shape.missed,
                    "error": shape.error or None,
                }
            )
        return {
            "size": settings.size,
            "idle_timeout_s": settings.idle_timeout_s,
            "warm": sum(len(s.warm) for s in self._shapes.values()),
            "booting": sum(s.booting for s in self._shapes.values()),
            "removing": self._removing,
            "shapes": shapes,
        }

    # --- keeping it filled ------------------------------------------------------------------
    def _want(self, spec: SandboxSpec) -> _Shape:
        key = shape_key(spec)
        shape = self._shapes.get(key)
        if shape is None:
            bare = spec.model_copy(update={"name": None})
            shape = self._shapes[key] = _Shape(spec=bare, last_wanted=0)
        shape.last_wanted = self._clock()
        self.poke()
        return shape

    async def _expire(self) -> None:
        settings, now = self._settings(), self._clock()
        self._want_default()
        for key, shape in list(self._shapes.items()):
            idle = now - shape.last_wanted > settings.idle_timeout_s
            keep = 0 if idle else settings.size
            while len(shape.warm) > keep:
                await self._remove(shape.warm.pop().id)
            if idle and not shape.warm and not shape.booting:
                del self._shapes[key]
                self._changed_view()

    def _want_default(self) -> None:
        """The default shape is wanted from the start and again whenever it changes (then
        it idles out like any other)."""
        spec = self._default_spec()
        key = shape_key(spec)
        if key != self._default_key:
            self._default_key = key
            self._want(spec)

    def _refill(self, tg: TaskGroup) -> None:
        if self._capacity.waiting:
            return  # tasks waiting for room come first; refill once they are served
        size, now = self._settings().size, self._clock()
        for shape in self._shapes.values():
            if shape.error and now - shape.failed_at < RETRY_AFTER_S:
                continue
            if now - shape.taken_at < REFILL_AFTER_TAKE_S:
                continue
            if len(shape.warm) + shape.booting < size:
                shape.booting += 1
                tg.start_soon(self._boot, shape)

    async def _boot(self, shape: _Shape) -> None:
        self._serial += 1
        spec = shape.spec.model_copy(update={"name": f"{NAME_PREFIX}{self._serial}"})
        try:
            async with self._capacity.admitted(spec, wait=False):
                with anyio.CancelScope(shield=True):  # a half-made box must not stay behind
                    info = await create_owned(self._provider, spec)  # a failed boot: gone
                    await self._prime(info)
                    # Held before the shield ends: a cancel (the server stopping) lands at the
                    # next checkpoint, and a box not held here was never drained (it ran on).
                    shape.warm.append(info)
            shape.error = ""
            self._on_ready(info.id)
        except CapacityExceeded:
            pass  # full: the next change (a box removed) looks again
        except HivecellError as exc:
            shape.error, shape.failed_at = str(exc), self._clock()
            log.warning("warm pool: cannot boot a sandbox: %s", exc)
        finally:
            shape.booting -= 1
            self._changed_view()
            self.poke()

    def _next_check(self) -> float:
        """Seconds until a shape goes idle or a refill may begin (after a failure or a take)."""
        settings, now = self._settings(), self._clock()
        waits = [RETRY_AFTER_S]
        for shape in self._shapes.values():
            waits.append(shape.last_wanted + settings.idle_timeout_s - now)
            if now - shape.taken_at < REFILL_AFTER_TAKE_S:
                waits.append(shape.taken_at + REFILL_AFTER_TAKE_S - now)
        return max(0.05, min(waits))

    async def _prime(self, info: SandboxInfo) -> None:
        """One screenshot, as a task's first step takes: the guest loads its image code on
        first use, which a task taking this sandbox should not wait for, and encodes the
        desktop the task will see first. Taken once the desktop has settled: a box answers
        before its panel and windows are drawn, and an encoding of that half-drawn screen
        is never reused (the task's first look paid a fresh ~40 ms encode)."""
        try:
            async with await self._provider.connect(info.id) as guest:
                await guest.call("wait_for_settle", {"timeout": PRIME_SETTLE_S}, timeout=30)
                # The parameters of a task's first look, so that it gets this encoding again
                # (the guest keeps the last one while the screen is unchanged).
                params = {"format": "png", "max_width": RunSettings().screenshot_max_width}
                await guest.call("screenshot", params, timeout=30)
        except HivecellError as exc:  # still a working sandbox; the task pays the first load
            log.info("warm pool: priming %s failed: %s", info.id, exc)

    async def _alive(self, sandbox_id: str) -> bool:
        try:
            info = await self._provider.info(sandbox_id)
        except HivecellError:
            return False
        return info.status == "running"

    async def _remove(self, sandbox_id: str) -> None:
        self._removing += 1
        with anyio.CancelScope(shield=True):
            try:
                await self._provider.destroy(sandbox_id)
            except HivecellError as exc:
                log.warning("warm pool: cannot remove sandbox %s: %s", sandbox_id, exc)
            finally:
                self._removing -= 1
            self._on_removed(sandbox_id)
            self._capacity.changed()
            self._changed_view()

    def _changed_view(self) -> None:
        self._on_change(self.view())
