"""Filling memory and the process table from inside a sandbox: the box's own processes fail,
the host and the box's guest agent live on. Minimal on purpose: disk, tmpfs, CPU and the
limit backends are tried in depth by the limits suite."""

from __future__ import annotations

import anyio
import pytest

from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from tests.sandbox.conftest import MakeProvider, make_provider  # noqa: F401 - a fixture
from tests.sandbox.host import shell
from tests.security.conftest_escape import run_probe

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MEMORY_MB = 256
MAX_PIDS = 64

# Every process forks until fork fails, then marks the table full and sleeps; the driver
# (outside the bomb's process group) counts the box's processes at that moment.
FORK_BOMB = r"""
import json, os, signal, time

def bomb():
    while True:
        try:
            child = os.fork()
        except OSError:
            try:
                os.close(os.open("/tmp/full", os.O_CREAT | os.O_EXCL))
            except OSError:
                pass
            time.sleep(60)
            os._exit(0)
        if child > 0:
            continue  # the parent forks again, and so does the child: exponential

leader = os.fork()
if leader == 0:
    os.setpgid(0, 0)
    bomb()
while not os.path.exists("/tmp/full"):
    time.sleep(0.01)
count = len([p for p in os.listdir("/proc") if p.isdigit()])
os.killpg(leader, signal.SIGKILL)
print(json.dumps({"processes": count}))
"""
HOG = "python3 -c 'data = bytearray(1 << 30); data[::4096] = b\"x\" * (1 << 18); print(1)'"


async def _answers(guest: GuestClient) -> bool:
    """Whether the guest can start a command again (fork works once the bomb is gone)."""
    with anyio.fail_after(30):
        while True:
            result = await shell(guest, "echo ok")
            if result["exit_code"] == 0:
                return True
            await anyio.sleep(0.1)  # the killed bomb's processes are still being reaped


async def test_memory_and_process_floods_stay_inside(make_provider: MakeProvider) -> None:  # noqa: F811
    """Attack: allocate and touch 1 GiB in a box capped at 256 MB, then run an unbounded
    fork bomb in a box capped at 64 processes. The hog is killed or refused, the bomb
    never holds more than the cap, and the guest agent and the box's supervisor live
    on; the box can start commands again once the bomb is gone."""
    provider = make_provider()
    info = await provider.create(SandboxSpec(memory_mb=MEMORY_MB, max_pids=MAX_PIDS))
    async with await provider.connect(info.id) as guest:
        hog = await shell(guest, f"{HOG}; echo exit=$?")
        assert hog["stdout"] in ("exit=137\n", "exit=1\n"), hog  # OOM-killed or MemoryError
        assert (await guest.call("ping"))["pong"] is True
        flood = await run_probe(guest, FORK_BOMB, None)
        assert 0 < flood["processes"] <= MAX_PIDS, flood
        assert await _answers(guest)
    assert (await provider.info(info.id)).status == "running"  # its supervisor lives on
