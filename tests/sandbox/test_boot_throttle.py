"""The boot throttle: a herd of creates all come up, never more than N booting at once.

Real boxes, real flocks. Every test has its own lock folder, so tests running in parallel
(and other hivecell processes on the host) never share its slots.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest
from anyio import to_thread

from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local import state, throttle, uidpool
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox.conftest import short_tmp

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SLOTS = 2
CREATES_EACH = 3  # per provider, two providers: 6 creates for 2 slots
HOLD_A_SLOT = """
import sys, anyio
from pathlib import Path
from hivecell.sandbox.local.throttle import BootThrottle

async def main() -> None:
    async with BootThrottle(Path(sys.argv[1]), 1).slot("victim"):
        await anyio.sleep_forever()  # killed here, holding the slot

anyio.run(main)
"""

Providers = Callable[..., LocalProvider]


@pytest.fixture
def lock_dir() -> Iterator[Path]:
    path = short_tmp("hc-boot-")
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


@pytest.fixture
async def providers(home: Path, pycache: Path, lock_dir: Path) -> AsyncIterator[Providers]:
    """Providers on one home and one lock folder; every box left there is destroyed after."""

    def make(slots: int = SLOTS) -> LocalProvider:
        return LocalProvider(home, pycache=pycache, max_booting=slots, boot_lock_dir=lock_dir)

    yield make
    cleaner = make()
    for info in await cleaner.list():
        await cleaner.destroy(info.id)


def _queue_held(lock_dir: Path) -> bool:
    """Whether someone is at the head of the line (holds queue.lock)."""
    try:
        fd = os.open(lock_dir / throttle.QUEUE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def _until(check: Callable[[], bool]) -> None:
    # The checks are a few non-blocking syscalls (flock LOCK_NB, tiny reads): run inline.
    while not check():  # noqa: ASYNC110 - lock state, polled
        await anyio.sleep(0.01)


async def _ping(provider: LocalProvider, sandbox_id: str) -> bool:
    async with await provider.connect(sandbox_id) as guest:
        return bool((await guest.call("ping"))["pong"])


async def test_a_herd_from_two_providers_all_come_up_at_most_n_booting(
    providers: Providers, lock_dir: Path
) -> None:
    # Two providers: two throttles with their own open files on the same lock folder, which
    # flock treats exactly like two processes. A per-object semaphore would let 4 boot.
    first, second = providers(), providers()
    booting: set[tuple[int, int]] = set()
    most, taken, most_held = 0, 0, 0

    def hook(who: int) -> throttle.SlotHook:
        def on_slot(slot: int, is_taken: bool) -> None:
            nonlocal most, taken, most_held
            if is_taken:
                booting.add((who, slot))
                taken += 1
            else:
                booting.discard((who, slot))
            most = max(most, len(booting))
            # What the lock files say, not only our bookkeeping.
            most_held = max(most_held, len(throttle.holders(lock_dir)))

        return on_slot

    first.throttle.on_slot, second.throttle.on_slot = hook(1), hook(2)
    ids: list[str] = []

    async def create(provider: LocalProvider) -> None:
        ids.append((await provider.create(SandboxSpec(memory_mb=512))).id)

    async with anyio.create_task_group() as tg:
        for _ in range(CREATES_EACH):
            tg.start_soon(create, first)
            tg.start_soon(create, second)

    assert len(ids) == 2 * CREATES_EACH  # all came up: the line made them wait, not fail
    assert taken == 2 * CREATES_EACH  # every create booted inside a slot
    assert most <= SLOTS and most_held <= SLOTS
    assert throttle.holders(lock_dir) == {}  # all slots given back
    for sandbox_id in ids:
        assert await _ping(first, sandbox_id)


async def test_a_create_cancelled_in_line_leaves_nothing(
    providers: Providers, home: Path, lock_dir: Path
) -> None:
    provider = providers(slots=1)
    blocker = throttle.BootThrottle(lock_dir, 1)
    async with blocker.slot("the test holds the only slot"):
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(provider.create, SandboxSpec())
                # It is at the head of the line: it holds queue.lock and waits for a slot.
                await _until(lambda: provider.throttle.waiting == 1 and _queue_held(lock_dir))
                scope.cancel()
        assert provider.throttle.waiting == 0
        # The thread it left behind leaves the line at once (it does not wait for the slot).
        await _until(lambda: not _queue_held(lock_dir))
        assert list(throttle.holders(lock_dir)) == [0]  # still only ours
    assert await to_thread.run_sync(_left_behind, home) == []
    info = await provider.create(SandboxSpec())  # the slot is free again for the next create
    assert await _ping(provider, info.id)
    assert throttle.holders(lock_dir) == {}


async def test_a_creator_killed_holding_a_slot_does_not_block_later_creates(
    providers: Providers, lock_dir: Path
) -> None:
    provider = providers(slots=1)
    # Popen returns once forked; anyio.open_process hung now and then under the pytest runner.
    victim = subprocess.Popen([sys.executable, "-c", HOLD_A_SLOT, str(lock_dir)])  # noqa: ASYNC220
    try:
        await _until(lambda: _holder_pid(lock_dir) == victim.pid)
    finally:
        victim.kill()  # SIGKILL: no cleanup code of ours runs
        await to_thread.run_sync(victim.wait)
    assert victim.returncode == -signal.SIGKILL
    info = await provider.create(SandboxSpec())
    assert await _ping(provider, info.id)


def _holder_pid(lock_dir: Path) -> int | None:
    label = throttle.holders(lock_dir).get(0, "").split()
    return int(label[0]) if label else None  # a label is written just after the flock


def _left_behind(home: Path) -> list[str]:
    """Sandbox folders (so cgroups, named after them), uid claims and loop devices of ``home``."""
    folders = state.sandbox_ids(home)
    claims = [str(p) for p in uidpool.REGISTRY.glob("*") if _claims_under(p, home)]
    loops = [str(p) for p in Path("/sys/block").glob("loop*") if _backed_by(p, home)]
    return folders + claims + loops


def _claims_under(claim: Path, home: Path) -> bool:
    try:
        return claim.read_text().startswith(str(home))
    except OSError:
        return False


def _backed_by(loop: Path, home: Path) -> bool:
    try:
        return (loop / "loop" / "backing_file").read_text().startswith(str(home))
    except OSError:
        return False


def test_slots_default_to_two_per_core() -> None:
    cores = len(os.sched_getaffinity(0))
    assert throttle.BootThrottle(Path("/nonexistent")).slots == max(2, 2 * cores)
    with pytest.raises(ValueError, match="at least one slot"):
        throttle.BootThrottle(Path("/nonexistent"), 0)


async def test_without_inotify_the_head_sleeps_on_a_held_slot_and_gets_one(
    lock_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host out of inotify instances (fs.inotify.max_user_instances): the head blocks in
    # flock on the slot taken longest ago instead of on inotify; it still gets a slot.
    monkeypatch.setattr(throttle._CloseWatch, "__enter__", lambda watch: watch)
    holder, waiter = throttle.BootThrottle(lock_dir, 2), throttle.BootThrottle(lock_dir, 2)
    got: list[int] = []

    async def wait_in_line() -> None:
        async with waiter.slot("waiter") as slot:
            got.append(slot)

    async with anyio.create_task_group() as tg, holder.slot("older"), holder.slot("younger"):
        tg.start_soon(wait_in_line)
        await _until(lambda: waiter.waiting == 1 and _queue_held(lock_dir))
        assert got == []  # both slots are held: it waits in line
    assert len(got) == 1
    assert throttle.holders(lock_dir) == {}
