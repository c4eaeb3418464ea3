"""``hivecell bench sandbox``'s idle memory: read per sandbox with several sandboxes up."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hivecell.bench.sandbox import _idle_memory, sandbox_memory_mb
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_idle_memory_is_the_median_over_every_sandbox_it_brought_up(
    home: Path, pycache: Path
) -> None:
    provider = LocalProvider(home, pycache=pycache)
    ids = [(await provider.create(SandboxSpec())).id]
    try:
        rss, pss, zygote = await _idle_memory(provider, ids, 3)
        assert len(ids) == 3  # it started the two others and reports them for cleanup
        readings = [sandbox_memory_mb(sandbox_id) for sandbox_id in ids]
        # Every box is counted (supervisor to agent): a box's RSS is tens of MB, and PSS,
        # which splits shared pages, is below it.
        assert all(r > 20 and 0 < p < r for r, p in readings), readings
        assert 0 < pss < rss
        # As root the boxes boot from the host's zygote, reported apart (paid once per host).
        assert (zygote > 0) == (os.geteuid() == 0)
    finally:
        for sandbox_id in ids:
            await provider.destroy(sandbox_id)
