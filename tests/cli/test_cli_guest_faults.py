"""``hivecell run`` says what happened when the sandbox's guest agent dies mid-task."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest
from anyio import to_thread

from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.sandbox.local.provider import LocalProvider
from tests.agent.helpers import act, call, finish
from tests.agent.test_guest_faults import MARKER, SLOW_ACTION, guest_agent
from tests.cli.test_cli_run import ENV, command, run_args

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _marked_sandbox(home: Path, pycache: Path) -> str:
    """The run's sandbox, once its first action is under way."""
    provider = LocalProvider(home, pycache=pycache)
    while True:  # another process's sandbox: nothing to wait on but its files
        for info in await provider.list():
            if await anyio.Path(info.shared_dir, MARKER.removeprefix("/shared/")).exists():
                return info.id
        await anyio.sleep(0.05)


async def test_run_prints_the_guest_fault_and_the_recovery(home: Path, pycache: Path) -> None:
    steps = [act(call("run_shell", command=SLOW_ACTION)), *finish("carried on")]
    async with ScriptedLLMServer(steps) as server:
        argv = command(home, *run_args(server), "--json")
        with anyio.fail_after(120):
            async with await anyio.open_process(argv, env=ENV) as process:
                sandbox_id = await _marked_sandbox(home, pycache)
                os.kill(await to_thread.run_sync(guest_agent, sandbox_id), signal.SIGKILL)
                streams = {"out": process.stdout, "err": process.stderr}
                read: dict[str, bytes] = {}

                async def drain(name: str) -> None:
                    stream = streams[name]
                    assert stream is not None
                    read[name] = b"".join([chunk async for chunk in stream])

                async with anyio.create_task_group() as tg:
                    for name in streams:
                        tg.start_soon(drain, name)
                err = read["err"].decode()
                assert await process.wait() == 0, err
    result = json.loads(read["out"])
    assert (result["status"], result["summary"]) == ("completed", "carried on")
    assert "paused, reconnecting to the sandbox: guest_unreachable:" in err
    assert "guest_reconnected: reconnected to the guest agent after" in err
    assert "may or may not have taken effect" in err  # the action the agent died in
