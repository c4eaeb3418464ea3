"""The agent serves a character device (virtio-serial in VMs) with the same connection code.

A pseudo-terminal in raw mode stands in for the device: the agent opens the pty's device
path, the test is the host at the other end.
"""

from __future__ import annotations

import json
import os
import tty
from pathlib import Path

import anyio
import pytest

from hivecell.guest.context import GuestConfig, Services
from hivecell.guest.run import serve

pytestmark = pytest.mark.anyio


async def _read_responses(fd: int, want: int) -> list[dict[str, object]]:
    """The next ``want`` responses; notifications (the first heartbeat comes at once) skipped."""
    buffer = b""
    frames: list[dict[str, object]] = []
    with anyio.fail_after(10):
        while len(frames) < want:
            await anyio.wait_readable(fd)
            buffer += os.read(fd, 65536)
            *lines, buffer = buffer.split(b"\n")
            decoded = (json.loads(line) for line in lines if line.strip())
            frames += [frame for frame in decoded if "method" not in frame]
    return frames


async def test_agent_answers_over_a_character_device(tmp_path: Path) -> None:
    host, device = os.openpty()
    tty.setraw(device)
    os.set_blocking(host, False)
    services = Services(GuestConfig(roots=[tmp_path], heartbeat_interval=60))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, services, None, None, Path(os.ttyname(device)))
            await anyio.sleep(0.2)
            os.write(host, b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n{"bad json\n')
            by_id = {f.get("id"): f for f in await _read_responses(host, 2)}
            assert by_id[1]["result"]["pong"] is True  # type: ignore[index]
            assert by_id[None]["error"]["code"] == -32700  # type: ignore[index]
            tg.cancel_scope.cancel()
    finally:
        os.close(host)
        os.close(device)
