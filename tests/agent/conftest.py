"""Fixtures for agent tests: real local sandboxes on a short temporary home, a real store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.store import TaskStore, default_database_url


@pytest.fixture
def provider(home: Path, pycache: Path) -> LocalProvider:
    return LocalProvider(home, pycache=pycache)


@pytest.fixture
async def sandbox(provider: LocalProvider) -> AsyncIterator[SandboxInfo]:
    info = await provider.create(SandboxSpec())
    try:
        yield info
    finally:
        await provider.destroy(info.id)


@pytest.fixture
async def store(home: Path) -> AsyncIterator[TaskStore]:
    async with TaskStore(default_database_url(home)) as opened:
        yield opened
