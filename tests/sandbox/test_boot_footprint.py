"""What each sandbox's boot process holds: it supervises the agent, it does not hold its
imports (those would be a second copy of most of the agent's memory in every sandbox)."""

from __future__ import annotations

from pathlib import Path

import pytest
from anyio import to_thread

from hivecell.guest.boot import AGENT_MODULES
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.bwrap import MALLOC_TUNABLES
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


async def test_the_boot_process_does_not_hold_the_agents_imports(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()
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
