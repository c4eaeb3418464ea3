"""The event hub: numbered events, and a slow subscriber dropped without holding up others."""

from __future__ import annotations

import pytest

from hivecell.server.events import EventHub

pytestmark = pytest.mark.anyio


async def test_a_full_subscriber_is_dropped_and_the_others_get_everything() -> None:
    hub = EventHub(queue_size=3)
    with hub.subscribe() as slow, hub.subscribe() as fast:
        received = []
        for n in range(10):
            hub.publish("task.step", {"n": n})
            received.append(fast.receive.receive_nowait())  # the fast one keeps up
        assert [e["seq"] for e in received] == list(range(1, 11))
        assert slow.overflowed and hub.subscribers == 1
        backlog = [event async for event in slow.receive]  # ends: it was closed
        assert [e["data"]["n"] for e in backlog] == [0, 1, 2]
    assert hub.subscribers == 0


async def test_publishing_with_nobody_listening_still_numbers_events() -> None:
    hub = EventHub()
    assert hub.publish("sandbox.created", {"sandbox_id": "sb-1"})["seq"] == 1
    assert hub.publish("sandbox.destroyed", {"sandbox_id": "sb-1"})["seq"] == 2
