"""A task's sandbox that fails to boot is removed, not left stopped for inspection (which
left a folder, a disk mount and a loop device per failed boot under load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.bench import leaks
from hivecell.errors import HivecellError
from hivecell.sandbox.base import SandboxSpec, create_owned
from hivecell.sandbox.local.provider import LocalProvider

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SPEC = SandboxSpec(disk_mb=64)
NO_TIME = 0.001  # s: no box answers ping this fast, so every boot times out


async def test_a_failed_boot_of_an_owned_sandbox_leaves_nothing(home: Path, pycache: Path) -> None:
    provider = LocalProvider(home, pycache=pycache, boot_timeout=NO_TIME)
    with pytest.raises(HivecellError, match="did not start") as failed:
        await create_owned(provider, SPEC)
    sandbox_id = failed.value.context["id"]
    assert leaks.find_leaks(home, {sandbox_id}) == leaks.Leaks()


async def test_a_plain_create_keeps_the_failed_box_and_names_it(home: Path, pycache: Path) -> None:
    provider = LocalProvider(home, pycache=pycache, boot_timeout=NO_TIME)
    with pytest.raises(HivecellError) as failed:
        await provider.create(SPEC)
    sandbox_id = failed.value.context["id"]
    try:
        assert (await provider.info(sandbox_id)).status != "running"
        assert leaks.find_leaks(home, {sandbox_id}).sandbox_folders == [sandbox_id]
    finally:
        await provider.destroy(sandbox_id)
    assert leaks.find_leaks(home, {sandbox_id}) == leaks.Leaks()
