"""The stats sampler against real sandboxes: CPU % tells a busy box from an idle one, and
boxes that go away mid-round drop out without stopping the loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from hivecell.pool.metrics import SandboxStats, StatsSampler
from hivecell.sandbox.base import SandboxSpec, SandboxUsage
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox.host import sh_out

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SPEC = SandboxSpec(width=640, height=480, memory_mb=512, max_pids=128)
BURN = "timeout 120 sh -c 'while :; do :; done' >/dev/null 2>&1 &"


async def _rounds_until(
    sampler: StatsSampler, ready: Callable[[list[SandboxStats]], bool], timeout: float = 90
) -> list[SandboxStats]:
    """Run the sampler until a round satisfies ``ready``; returns that round."""
    found: list[list[SandboxStats]] = []
    done = anyio.Event()

    def listen(stats: list[SandboxStats]) -> None:
        if not done.is_set() and ready(stats):
            found.append(stats)
            done.set()

    sampler.subscribe(listen)
    async with anyio.create_task_group() as tg:
        await tg.start(sampler.run)
        with anyio.fail_after(timeout):
            await done.wait()
        tg.cancel_scope.cancel()
    return found[0]


async def test_a_busy_box_shows_more_cpu_than_an_idle_one(home: Path, pycache: Path) -> None:
    provider = LocalProvider(home, pycache=pycache)
    busy, idle = await provider.create(SPEC), await provider.create(SPEC)
    async with await provider.connect(busy.id) as guest:
        await sh_out(guest, BURN)
    sampler = StatsSampler(provider, interval=0.3)

    def busier(stats: list[SandboxStats]) -> bool:
        by_id = {s.sandbox_id: s for s in stats}
        if busy.id not in by_id or idle.id not in by_id:
            return False
        hot, cold = by_id[busy.id].cpu_percent, by_id[idle.id].cpu_percent
        return hot > 20 and hot > 3 * cold

    last = await _rounds_until(sampler, busier)
    assert {s.sandbox_id for s in last} == {busy.id, idle.id}
    for stats in last:
        assert stats.guest_rtt_ms is not None and stats.guest_rtt_ms > 0, stats
        assert stats.memory_pss_mb > 0 and stats.processes >= 2, stats
    totals = sampler.totals()
    assert totals.sandboxes == 2
    assert totals.cpu_percent == pytest.approx(sum(s.cpu_percent for s in last))
    assert totals.memory_pss_mb == pytest.approx(sum(s.memory_pss_mb for s in last))
    assert sampler.latest(busy.id) == next(s for s in last if s.sandbox_id == busy.id)
    assert set(sampler.all()) == {busy.id, idle.id}


class Vanishing(LocalProvider):
    """A real provider where one box is destroyed, and another breaks, while being read:
    the races a round meets when sandboxes come and go under it."""

    doomed: str = ""
    broken: str = ""

    async def usage(self, sandbox_id: str) -> SandboxUsage:
        if sandbox_id == self.doomed:
            await self.destroy(sandbox_id)  # between the list and the read
        if sandbox_id == self.broken:
            raise OSError("the host refused to say")
        return await super().usage(sandbox_id)


async def test_boxes_gone_or_failing_mid_round_drop_out_and_the_loop_goes_on(
    home: Path, pycache: Path
) -> None:
    provider = Vanishing(home, pycache=pycache)
    kept, doomed, broken = (
        await provider.create(SPEC),
        await provider.create(SPEC),
        await provider.create(SPEC),
    )
    stopped = await provider.create(SPEC)
    provider.doomed, provider.broken = doomed.id, broken.id
    sampler = StatsSampler(provider, interval=0.05)
    await sampler.sample_now(stopped.id)
    await provider.stop(stopped.id)
    rounds: list[list[str]] = []

    def three_rounds(stats: list[SandboxStats]) -> bool:
        rounds.append([s.sandbox_id for s in stats])
        return len(rounds) >= 3

    await _rounds_until(sampler, three_rounds)
    assert rounds == [[kept.id]] * 3
    assert set(sampler.all()) == {kept.id}  # the stopped box's earlier sample is gone too
    assert doomed.id not in [info.id for info in await provider.list()]
