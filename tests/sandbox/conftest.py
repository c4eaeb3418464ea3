"""Fixtures for tests that boot real local sandboxes (bubblewrap + Xvfb, no mocks)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from hivecell.sandbox.local.provider import LocalProvider

MakeProvider = Callable[..., LocalProvider]


def short_tmp(prefix: str) -> Path:
    # Not tmp_path: unix socket paths must stay under 108 bytes, pytest's are long.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture(scope="session")
def pycache() -> Iterator[Path]:
    """One bytecode cache for the session, so each test's fresh home does not recompile."""
    path = short_tmp("hc-pyc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home() -> Iterator[Path]:
    path = short_tmp("hc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def make_provider(home: Path, pycache: Path) -> AsyncIterator[MakeProvider]:
    """Builds providers on this test's home; destroys every sandbox left there afterwards."""

    def make(limits_backend: str = "auto", zygote: bool = True) -> LocalProvider:
        return LocalProvider(home, pycache=pycache, limits_backend=limits_backend, zygote=zygote)

    yield make
    cleaner = make()
    for info in await cleaner.list():
        await cleaner.destroy(info.id)
