"""What each sandbox's boot process holds. Booted by itself (no zygote: not root, or turned
off), it supervises the agent but does not hold its imports (those would be a second copy of
most of the agent's memory in every sandbox). Forked from the host's zygote, boot and agent
share the zygote's imported pages instead of each box holding its own."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from anyio import to_thread

from hivecell.guest.boot import AGENT_MODULES
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.bwrap import MALLOC_TUNABLES
from hivecell.sandbox.local.zygote import client
from tests.sandbox import host
from tests.sandbox.conftest import MakeProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
BOOT = "-m hivecell.guest.boot"


def _boot_and_agent(sandbox_id: str) -> tuple[int, int]:
    """(boot, agent): the Python processes running the boot module; the agent is the child
    of the other (bwrap's command line names the module too; it is not Python)."""
    procs = {pid for pid, _ in host.process_tree(sandbox_id)}
    boots = {
        pid
        for pid in procs
        if BOOT in (cmd := host._cmdline(pid)) and "bwrap" not in cmd.split(" ", 1)[0]
    }
    agents = [pid for pid in boots if (s := host._stat(pid)) is not None and s[0] in boots]
    assert len(agents) == 1 and len(boots) == 2, [host._cmdline(pid) for pid in boots]
    (boot,) = boots - set(agents)
    return boot, agents[0]


def _mapped_files(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {parts[5] for line in lines if len(parts := line.split()) > 5}


def _zygote_of(pid: int) -> int:
    parent = host._stat(pid)
    assert parent is not None
    assert host._cmdline(parent[0]).startswith(f"{client.TITLE} "), host._cmdline(parent[0])
    return parent[0]


def _kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def test_boot_and_agent_share_the_zygotes_imports(make_provider: MakeProvider) -> None:
    provider = make_provider()
    info = await provider.create(SandboxSpec())
    async with await provider.connect(info.id) as guest:
        await guest.call("screenshot", {"format": "png"})  # the agent has loaded it all
    boot, agent = await to_thread.run_sync(_boot_and_agent, info.id)
    zygote = _zygote_of(boot)
    # The pages the zygote's imports wrote (objects, not files) are the agent's too, unless
    # written since; an agent that imported by itself shares none with anyone but boot.
    assert _kb(agent, "Shared_Dirty:") > 10 * 1024
    native = "_pydantic_core"  # the agent's heaviest native import, mapped before any box
    assert any(native in path for path in _mapped_files(zygote))


async def test_the_boot_process_does_not_hold_the_agents_imports(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider(zygote=False)
    info = await provider.create(SandboxSpec())
    async with await provider.connect(info.id) as guest:
        await guest.call("screenshot", {"format": "png"})  # the agent has loaded it all
    boot, agent = await to_thread.run_sync(_boot_and_agent, info.id)
    assert "Xlib.display" in AGENT_MODULES  # what the agent needs is what boot must not load
    # Extension modules show which libraries a process has imported.
    native = ("_pydantic_core", "_imaging")
    agent_maps = _mapped_files(agent)
    boot_maps = _mapped_files(boot)
    for name in native:
        assert any(name in path for path in agent_maps), name
        assert not any(name in path for path in boot_maps), name


async def test_malloc_settings_reach_the_agent_not_the_apps(make_provider: MakeProvider) -> None:
    """The box's Python runs with bwrap.MALLOC_TUNABLES (freed buffers go back to the
    host); the apps it starts keep glibc's defaults."""
    provider = make_provider()
    info = await provider.create(SandboxSpec())
    async with await provider.connect(info.id) as guest:
        result = await guest.call("run_shell", {"command": "printenv GLIBC_TUNABLES; echo rc=$?"})
    assert result["stdout"].strip() == "rc=1", result
    _, agent = await to_thread.run_sync(_boot_and_agent, info.id)
    # glibc splits the variable at each ':' in place (NULs) as it reads it
    raw = await to_thread.run_sync(Path(f"/proc/{agent}/environ").read_bytes)
    environ = set(raw.split(b"\0"))
    assert set(f"GLIBC_TUNABLES={MALLOC_TUNABLES}".encode().split(b":")) <= environ


def _maps_shared_frame(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "mss-shm" in maps or "/SYSV" in maps  # mss's memfd, or a System V segment


async def test_an_idle_agent_lets_go_of_the_shared_screen_frame(
    make_provider: MakeProvider,
) -> None:
    """The grabber's shared-memory frame (4 MB at 1280x800, half of it counted to Xvfb) is
    released once the agent is quiet, and made again by the next screenshot."""
    provider = make_provider()
    info = await provider.create(SandboxSpec())
    _, agent = await to_thread.run_sync(_boot_and_agent, info.id)
    async with await provider.connect(info.id) as guest:
        await guest.call("screenshot", {"format": "png"})
        assert await to_thread.run_sync(_maps_shared_frame, agent)
        with anyio.fail_after(20):  # a deadline only: it waits on the agent's maps
            while await to_thread.run_sync(_maps_shared_frame, agent):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        shot = await guest.call("screenshot", {"format": "png"})
        assert shot["width"] == 1280
        assert await to_thread.run_sync(_maps_shared_frame, agent)
