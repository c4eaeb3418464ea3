"""Memory and process limits hold inside a local sandbox, with cgroups and with rlimits."""

from __future__ import annotations

import pytest

from hivecell.sandbox.base import SandboxSpec
from tests.sandbox.conftest import MakeProvider
from tests.sandbox.host import shell

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MAX_PIDS = 64
# Forks sleeping children until fork fails; prints how many it got, then kills them.
FORK_BOMB = r"""python3 -c '
import os, time
kids = []
try:
    while len(kids) < 500:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        kids.append(pid)
except OSError as exc:
    print("refused:", exc.strerror)
print(len(kids))
for pid in kids:
    os.kill(pid, 9)
'"""
HOG = "python3 -c 'data = b\"x\" * (400 << 20); print(len(data))'"  # touches every page


async def test_cgroup_process_limit_holds(make_provider: MakeProvider) -> None:
    provider = make_provider()
    info = await provider.create(SandboxSpec(max_pids=MAX_PIDS))
    assert "pids=cgroup" in info.detail
    async with await provider.connect(info.id) as guest:
        result = await shell(guest, FORK_BOMB)
        refused, forked = result["stdout"].splitlines()
        assert refused == "refused: Resource temporarily unavailable"
        assert 0 < int(forked) < MAX_PIDS
        assert (await guest.call("ping"))["pong"] is True


async def test_cgroup_memory_hog_is_killed(make_provider: MakeProvider) -> None:
    provider = make_provider()
    info = await provider.create(SandboxSpec(memory_mb=256))
    assert "memory=cgroup" in info.detail
    async with await provider.connect(info.id) as guest:
        result = await shell(guest, f"{HOG}; echo exit=$?")
        assert result["stdout"] == "exit=137\n"  # SIGKILLed by the OOM killer
        assert (await guest.call("ping"))["pong"] is True  # only the hog died


async def test_rlimit_memory_is_refused(make_provider: MakeProvider) -> None:
    provider = make_provider(limits_backend="rlimit")
    info = await provider.create(SandboxSpec(memory_mb=256, max_pids=None))
    assert info.detail.startswith("limits: memory=rlimit pids=none cpu=unenforced disk=")
    async with await provider.connect(info.id) as guest:
        result = await shell(guest, HOG)
        assert result["exit_code"] == 1 and "MemoryError" in result["stderr"]
        assert (await guest.call("ping"))["pong"] is True


async def test_rlimit_process_limit_holds_for_root_and_users(make_provider: MakeProvider) -> None:
    # As root too: the box's user is its own unprivileged host uid, never root (whom the
    # kernel exempts from RLIMIT_NPROC).
    provider = make_provider(limits_backend="rlimit")
    info = await provider.create(SandboxSpec(max_pids=MAX_PIDS))
    assert "pids=rlimit" in info.detail
    async with await provider.connect(info.id) as guest:
        result = await shell(guest, FORK_BOMB)
        assert "refused: Resource temporarily unavailable" in result["stdout"]
        assert 0 < int(result["stdout"].splitlines()[-1]) < MAX_PIDS
