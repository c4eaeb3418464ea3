"""Shared fixtures: every test talks real HTTP to a ScriptedLLMServer on loopback."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
