"""Local sandboxes live on their own: past their creator, in numbers, and die cleanly."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest
from anyio import to_thread

from hivecell.errors import SandboxError
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.local import state
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox import host
from tests.sandbox.conftest import MakeProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CREATE_AND_EXIT = """
import sys, anyio
from pathlib import Path
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider

async def main() -> None:
    provider = LocalProvider(Path(sys.argv[1]), pycache=Path(sys.argv[2]))
    print((await provider.create(SandboxSpec())).id)

anyio.run(main)
"""
PARALLEL = 8


async def _ping(provider: LocalProvider, sandbox_id: str) -> bool:
    async with await provider.connect(sandbox_id) as guest:
        return bool((await guest.call("ping"))["pong"])


def _cgroups(provider: LocalProvider, sandbox_id: str) -> list[Path]:
    plan = json.loads(Layout.of(provider.home, sandbox_id).plan.read_text())
    return [Path(cg) for cg in plan["limits"]["cgroups"]]


async def test_outlives_the_process_that_created_it(
    make_provider: MakeProvider, home: Path, pycache: Path
) -> None:
    argv = [sys.executable, "-c", CREATE_AND_EXIT, str(home), str(pycache)]
    child = await anyio.run_process(argv)  # returns once the creator has exited
    sandbox_id = child.stdout.decode().strip()
    provider = make_provider()  # a different provider instance, as a later CLI call would be
    assert (await provider.info(sandbox_id)).status == "running"
    assert await _ping(provider, sandbox_id)
    assert (await provider.stop(sandbox_id)).status == "stopped"  # not our child: still works


async def test_eight_sandboxes_start_in_parallel(make_provider: MakeProvider) -> None:
    provider = make_provider()
    created: list[SandboxInfo] = []

    async def create() -> None:
        created.append(await provider.create(SandboxSpec(width=1024, height=768)))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(PARALLEL):
            tg.start_soon(create)
    print(f"{PARALLEL} sandboxes up in {time.monotonic() - started:.2f} s")
    assert len({info.id for info in created}) == PARALLEL
    for info in created:
        assert await _ping(provider, info.id)
    hostnames = set()
    for info in created:
        async with await provider.connect(info.id) as guest:
            hostnames.add((await guest.call("get_system_info"))["hostname"])
    assert hostnames == {info.id for info in created}


async def test_killing_the_supervisor_takes_the_whole_box_down(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()
    info = await provider.create(SandboxSpec(network="nat"))
    meta = await to_thread.run_sync(state.load, Layout.of(provider.home, info.id))
    assert meta is not None and meta.supervisor_pid is not None
    procs = await to_thread.run_sync(host.process_tree, info.id)
    names = " ".join(host.commands(procs))
    for program in ("supervisor", "bwrap", "hivecell.guest.boot", "Xvfb", "openbox", "slirp4netns"):
        assert program in names
    os.kill(meta.supervisor_pid, signal.SIGKILL)
    left = await to_thread.run_sync(host.wait_all_gone, procs)
    assert left == set(), host.commands(left)
    assert (await provider.info(info.id)).status == "stopped"
    with pytest.raises(SandboxError, match="start it first"):
        await provider.connect(info.id)


async def test_destroy_removes_processes_mounts_folder_and_cgroups(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()
    info = await provider.create(SandboxSpec(network="nat"))
    cgroups = await to_thread.run_sync(_cgroups, provider, info.id)
    assert cgroups and all([await anyio.Path(cg).is_dir() for cg in cgroups])
    procs = await to_thread.run_sync(host.process_tree, info.id)
    await provider.destroy(info.id)
    assert host.alive(procs) == set()
    assert host.mounts_mentioning(info.id) == []
    assert not await anyio.Path(provider.home, "sandboxes", info.id).exists()
    assert not any([await anyio.Path(cg).exists() for cg in cgroups])


async def _with_killed_supervisor(provider: LocalProvider) -> tuple[SandboxInfo, list[Path]]:
    """A new sandbox whose supervisor was SIGKILLed and whose processes are gone; its cgroups."""
    info = await provider.create(SandboxSpec())
    cgroups = await to_thread.run_sync(_cgroups, provider, info.id)
    meta = await to_thread.run_sync(state.load, Layout.of(provider.home, info.id))
    assert meta is not None and meta.supervisor_pid is not None
    procs = await to_thread.run_sync(host.process_tree, info.id)
    os.kill(meta.supervisor_pid, signal.SIGKILL)
    assert await to_thread.run_sync(host.wait_all_gone, procs) == set()
    return info, cgroups


async def test_destroy_after_a_killed_supervisor_removes_its_cgroups(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()
    info, cgroups = await _with_killed_supervisor(provider)
    assert all([await anyio.Path(cg).exists() for cg in cgroups])  # nobody cleaned up yet
    await provider.destroy(info.id)
    assert not any([await anyio.Path(cg).exists() for cg in cgroups])


async def test_destroy_kills_what_outlived_a_killed_supervisor_in_its_cgroups(
    make_provider: MakeProvider,
) -> None:
    """A process still in the box's cgroups after its supervisor died (a loaded host: the
    box's processes had not exited within the wait) must not make destroy fail "busy"."""
    provider = make_provider()
    info, cgroups = await _with_killed_supervisor(provider)
    lingering = await anyio.open_process(["sleep", "600"])
    try:
        for cg in cgroups:  # as if it were one of the box's processes
            await anyio.Path(cg / "cgroup.procs").write_text(str(lingering.pid))
        await provider.destroy(info.id)
        assert await lingering.wait() == -signal.SIGKILL
    finally:
        if lingering.returncode is None:
            lingering.kill()
        await lingering.aclose()
    assert not any([await anyio.Path(cg).exists() for cg in cgroups])


async def test_a_box_that_cannot_boot_reports_its_log(make_provider: MakeProvider) -> None:
    provider = make_provider()
    # A 7680x4320 framebuffer does not fit in 64 MB: the OOM killer stops Xvfb at boot.
    spec = SandboxSpec(width=7680, height=4320, memory_mb=64)
    with pytest.raises(SandboxError, match=r"did not start: .*sandbox\.log ends with") as caught:
        await provider.create(spec)
    assert "Xvfb exited" in str(caught.value)
    [info] = await provider.list()
    assert info.status == "error" and "sandbox.log" in info.detail


async def test_start_and_stop_are_idempotent(make_provider: MakeProvider) -> None:
    provider = make_provider()
    info = await provider.create(SandboxSpec())
    layout = Layout.of(provider.home, info.id)
    before = await to_thread.run_sync(state.load, layout)
    assert (await provider.start(info.id)).status == "running"
    after = await to_thread.run_sync(state.load, layout)
    assert before is not None and after is not None
    assert after.supervisor_pid == before.supervisor_pid  # not restarted
    assert (await provider.stop(info.id)).status == "stopped"
    assert (await provider.stop(info.id)).status == "stopped"
    assert (await provider.start(info.id)).status == "running"
    assert await _ping(provider, info.id)


async def test_a_cancelled_create_leaves_nothing(make_provider: MakeProvider, home: Path) -> None:
    provider = make_provider()
    with anyio.move_on_after(0.1):
        await provider.create(SandboxSpec())
    assert await provider.list() == []
    assert await anyio.Path(home, "sandboxes").exists()
    assert [p async for p in anyio.Path(home, "sandboxes").iterdir()] == []
    assert await to_thread.run_sync(host.process_tree, str(home)) == set()


async def test_a_boot_timeout_stops_the_box(make_provider: MakeProvider, home: Path) -> None:
    provider = LocalProvider(home, pycache=make_provider().pycache, boot_timeout=0.05)
    with pytest.raises(SandboxError, match=r"no answer within 0\.05 s"):
        await provider.create(SandboxSpec())
    [info] = await provider.list()
    assert info.status == "error" and "did not boot: no answer within" in info.detail
    assert await to_thread.run_sync(host.process_tree, str(home)) == set()
