"""The provider conformance suite, run unchanged against the qemu provider: real VMs from
the CI template (each started from the template's warm state in seconds; the stop/start
test boots one)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.sandbox.base import SandboxProvider
from tests.sandbox import qemu_env
from tests.sandbox.conformance import ProviderConformance


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def vm_home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hc-vmc-", dir="/tmp"))  # short: socket paths
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.xdist_group("qemu")  # with the other VM tests: one VM boot at a time
@pytest.mark.timeout(1800)  # the first VM test of a fresh machine builds the template
class TestQemuConformance(ProviderConformance):
    # one vCPU: the shape of test_qemu_vm.py's VMs, so they share one warm state
    spec = ProviderConformance.spec.model_copy(update={"cpus": 1})
    patience = 180.0
    host_sees_guest_processes = False
    host_sees_guest_memory = False

    @pytest.fixture
    async def provider(self, vm_home: Path) -> AsyncIterator[SandboxProvider]:
        made = await anyio.to_thread.run_sync(qemu_env.provider, vm_home)
        yield made
        for info in await made.list():
            await made.destroy(info.id)
