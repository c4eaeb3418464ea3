"""Frames over the limit fail fast with too_large, in both directions, and lose nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.errors import TooLarge
from hivecell.guest.context import GuestConfig
from hivecell.sandbox.guest_client import GuestClient
from tests.protocol.test_agent_wire import agent

pytestmark = pytest.mark.anyio


async def test_client_refuses_to_send_an_oversized_frame(tmp_path: Path) -> None:
    async with agent(GuestConfig(roots=[tmp_path])) as sock, GuestClient(f"unix:{sock}") as guest:
        huge = "x" * (65 * 1024 * 1024)
        with pytest.raises(TooLarge) as caught:
            await guest.call("write_file", {"path": "a.txt", "content": huge}, timeout=5)
        assert caught.value.context["limit"] == 64 * 1024 * 1024
        assert (await guest.call("ping"))["pong"] is True


async def test_agent_answers_too_large_when_its_result_would_not_fit(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("y" * (2 * 1024 * 1024))
    config = GuestConfig(roots=[tmp_path])
    async with agent(config, max_frame=1024 * 1024) as sock, GuestClient(f"unix:{sock}") as guest:
        with pytest.raises(TooLarge) as caught:
            await guest.call("read_file", {"path": "big.txt"}, timeout=5)
        assert "frame limit" in str(caught.value)
        assert (await guest.call("ping"))["pong"] is True
