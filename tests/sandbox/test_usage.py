"""The local provider's usage figures, both ways it finds a box's processes: its cgroup, and
(the rlimit backend: no cgroup) a walk of /proc from the supervisor. Checked against what
the host itself sees in /proc."""

from __future__ import annotations

import anyio
import pytest

from hivecell.sandbox.base import SandboxSpec, SandboxUsage
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox import host
from tests.sandbox.conformance import _wait_usage
from tests.sandbox.conftest import MakeProvider
from tests.sandbox.host import sh_out

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SPEC = SandboxSpec(width=640, height=480, memory_mb=512, max_pids=128)


async def _desktop_started(provider: LocalProvider, sandbox_id: str) -> None:
    """Wait for the full desktop's panel: it starts once the agent is ready, so it may still
    be forking when create returns, and would count as one of the test's own processes."""
    async with await provider.connect(sandbox_id) as guest:
        with anyio.fail_after(20):
            while "tint2" not in (await sh_out(guest, "ps -e -o comm=")).split():  # noqa: ASYNC110
                await anyio.sleep(0.05)


async def _settled(provider: LocalProvider, sandbox_id: str, expected: int) -> SandboxUsage:
    """The usage once its process count is ``expected`` (a box's start-up still forks)."""
    return await _wait_usage(provider, sandbox_id, lambda usage: usage.processes == expected)


async def test_without_cgroups_the_proc_walk_finds_every_process(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider(limits_backend="rlimit")
    info = await provider.create(SPEC)
    assert "memory=rlimit" in info.detail, info.detail  # no cgroup: the /proc walk counts
    await _desktop_started(provider, info.id)
    before = await _settled(provider, info.id, len(host.process_tree(info.id)))
    async with await provider.connect(info.id) as guest:
        await sh_out(guest, "sleep 600 >/dev/null 2>&1 &")
        await sh_out(guest, "i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done")
    after = await _settled(provider, info.id, len(host.process_tree(info.id)))
    assert after.processes == before.processes + 1
    assert after.cpu_seconds >= before.cpu_seconds + 0.2
    assert 0 < after.memory_pss_mb <= after.memory_rss_mb


async def test_with_cgroups_the_box_and_its_supervisor_count(make_provider: MakeProvider) -> None:
    provider = make_provider()
    info = await provider.create(SPEC)
    if "cgroup" not in (await provider.info(info.id)).detail:
        pytest.fail(f"this host should run boxes in cgroups: {info.detail}")
    await _desktop_started(provider, info.id)
    seen = host.process_tree(info.id)
    usage = await provider.usage(info.id)
    # The supervisor's helpers outside the cgroup (the output copier) are left out.
    assert 2 <= usage.processes <= len(seen)
    async with await provider.connect(info.id) as guest:
        await sh_out(guest, "sleep 600 >/dev/null 2>&1 &")
    for _ in range(200):
        if (await provider.usage(info.id)).processes == usage.processes + 1:
            break
        await anyio.sleep(0.05)
    else:
        raise AssertionError("the sleep started in the box was not counted")
