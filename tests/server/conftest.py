"""Fixtures for server tests: a short state folder sharing the session's guest bytecode."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.helpers import destroy_all, short_tmp


@pytest.fixture(scope="session")
def pycache() -> Iterator[Path]:
    path = short_tmp("hc-pyc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home(pycache: Path) -> Iterator[Path]:
    path = short_tmp("hc-")
    (path / "pycache").symlink_to(pycache)
    yield path
    destroy_all(path, pycache)
    shutil.rmtree(path, ignore_errors=True)
