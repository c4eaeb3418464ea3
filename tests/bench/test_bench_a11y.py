"""`hivecell bench a11y` with a small count: a real sandbox and Chromium."""

from __future__ import annotations

import shutil

import pytest

from hivecell.bench.a11y import measure_a11y
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox.conftest import short_tmp

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


async def test_browser_tree_is_timed() -> None:
    home = short_tmp("hc-a11yb-")
    provider = LocalProvider(home)
    try:
        report = await measure_a11y(provider, runs=3)
        assert not await provider.list()  # the bench's sandbox is gone
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert report.browser_tree.n == 3 and report.browser_tree.min_ms > 0
    assert report.nodes >= 20  # the page's links, fields and button, plus the browser's own
    assert report.met == (report.browser_tree.median_ms <= 150)
