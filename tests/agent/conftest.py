"""Fixtures for agent tests: real local sandboxes on a short temporary home, a real store."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.store import TaskStore, default_database_url
from tests.agent.helpers import destroy_all, short_tmp


@pytest.fixture(scope="session")
def pycache() -> Iterator[Path]:
    """One guest bytecode cache per session (per xdist worker): a fresh home compiles ~1 s."""
    path = short_tmp("hc-pyc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home(pycache: Path) -> Iterator[Path]:
    """A fresh state folder whose ``pycache`` is the session's, so CLI runs started on it
    (which cannot be handed a cache folder) skip the compile too."""
    path = short_tmp("hc-")
    (path / "pycache").symlink_to(pycache)
    yield path
    destroy_all(path, pycache)
    shutil.rmtree(path, ignore_errors=True)


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
