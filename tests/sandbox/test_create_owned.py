"""A task's sandbox that fails to boot is removed, not left stopped for inspection (which
left a folder, a disk mount and a loop device per failed boot under load)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.bench import leaks
from hivecell.errors import HivecellError, SandboxError
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


async def test_an_unexpected_error_while_starting_names_the_box_for_its_owner(home: Path) -> None:
    """An OS error while spawning (here: the bytecode cache is a file) was raised as is: the
    task failed with its bare text and nobody learned which box to remove."""
    not_a_folder = home / "pycache-is-a-file"
    not_a_folder.write_text("")
    provider = LocalProvider(home, pycache=not_a_folder)
    with pytest.raises(SandboxError, match="did not start: FileExistsError") as failed:
        await create_owned(provider, SPEC)
    assert isinstance(failed.value.__cause__, OSError)
    assert leaks.find_leaks(home, {failed.value.context["id"]}) == leaks.Leaks()
