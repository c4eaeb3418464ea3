"""Fixtures of the X11 tool tests: one real Xvfb + openbox display per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest.xdisplay import Guest, guest_services, x_display


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    with x_display() as name:
        yield name


@pytest.fixture
def guest(display: str, tmp_path: Path) -> Iterator[Guest]:
    """Overridden by modules that test the agent over a socket (test_shell, test_files)."""
    with guest_services(display, tmp_path) as services:
        yield Guest(services)
