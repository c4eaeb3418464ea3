"""Crew tests: real local sandboxes, a real store, the model scripted on loopback."""

from __future__ import annotations

from tests.agent.conftest import provider, store

__all__ = ["provider", "store"]
