"""The escape attempts as a model's tool calls: ``hivecell run`` against a scripted model on
loopback that asks for host files and writes outside the allowed folders.

Every attempt comes back to the model as an observation (an error, or a shell's failure
exit code), the host is unchanged, and the task still ends normally: tool failures are
observations, not crashes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.agent.llm.scripted import ScriptedLLMServer
from tests.agent.helpers import act, call, finish, tool_results
from tests.security.conftest_escape import HostState, Markers, host_markers, token

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
# The test's own settings must not leak into the CLI under test.
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "HIVECELL_"))}


async def run_json(
    home: Path, server: ScriptedLLMServer
) -> tuple[subprocess.CompletedProcess[bytes], dict[str, Any]]:
    """``hivecell run --json`` against the scripted model, as a user would start it."""
    command = [sys.executable, "-m", "hivecell.cli.main", "run", "do the task", "--json"]
    command += ["--base-url", server.base_url, "--api-key", "x", "--model", "m"]
    with anyio.fail_after(300):  # a sandbox boot plus ~25 tool calls, on a loaded host
        done = await anyio.run_process([*command, "--home", str(home)], check=False, env=ENV)
    assert done.stdout, done.stderr.decode()
    return done, json.loads(done.stdout)


@pytest.fixture
def markers() -> Iterator[Markers]:
    with host_markers() as made:
        yield made


def _attacks(markers: Markers, planted: str) -> list[tuple[str, dict[str, Any]]]:
    """(tool, arguments) of each attempt; ``planted`` is a name the writes try to create."""
    root_marker, tmp_marker = markers.files[0], markers.files[1]
    reads = [
        "/etc/shadow", str(root_marker), f"/proc/1/root{root_marker}", "../../../etc/shadow",
        f"../../..{tmp_marker}", f"/shared/../..{root_marker}", f"/proc/self/root{tmp_marker}",
        "/proc/1/fd/1", "/proc/sys/kernel/core_pattern",
    ]  # fmt: skip
    writes = [
        f"/etc/{planted}", f"/root/{planted}", f"../../../tmp/{planted}",
        f"/shared/../../tmp/{planted}", f"/proc/1/root/tmp/{planted}", "/proc/1/fd/1",
        "/proc/sys/kernel/core_pattern",
    ]  # fmt: skip
    shells = [
        "cat /etc/shadow", f"cat {root_marker} /proc/1/root{root_marker}",
        f"echo pwned > /root/{planted}", f"kill -9 1 {os.getpid()}",
        # its own value back (harmless on a host where it works): a host sysctl written
        "v=$(cat /proc/sys/kernel/printk_ratelimit); echo $v > /proc/sys/kernel/printk_ratelimit",
    ]  # fmt: skip
    attacks = [("read_file", {"path": p}) for p in reads]
    attacks += [("write_file", {"path": p, "content": "pwned"}) for p in writes]
    return attacks + [("run_shell", {"command": c}) for c in shells]


def _failed(tool: str, result: dict[str, Any]) -> bool:
    if "error" in result:
        return True
    return tool == "run_shell" and result.get("exit_code") != 0


async def test_model_tool_calls_cannot_touch_the_host(home: Path, markers: Markers) -> None:
    """Attack: a model calls read_file on the host's /etc/shadow, /root and /tmp marker
    files (directly, through /proc/1/root and ../ climbs), write_file to /etc, /root, /tmp,
    /proc/1/root, the host log behind /proc/1/fd/1 and core_pattern, and run_shell to cat
    the same files, plant files and signal host pids. Each call's result is an error or a
    failed command for the model; nothing of the host changes; the run completes."""
    planted = token()
    attacks = _attacks(markers, planted)
    watched = [Path("/etc/shadow"), Path("/proc/sys/kernel/core_pattern"), *markers.files]
    watched += [Path(d, planted) for d in ("/etc", "/root", "/tmp")]
    host_state = HostState(watched)
    steps = [act(*(call(tool, **args) for tool, args in attacks)), *finish("Nothing to take.")]
    steps.insert(1, act(call("write_file", path="/shared/outbox/report.txt", content="ok")))
    async with ScriptedLLMServer(steps) as server:
        done, result = await run_json(home, server)
    assert (result["status"], result["success"]) == ("completed", True), done.stderr.decode()
    results = tool_results(server.chat_requests[1])
    assert len(results) == len(attacks)
    succeeded = [(a, r) for a, r in zip(attacks, results, strict=True) if not _failed(a[0], r)]
    assert not succeeded, succeeded
    assert markers.secret not in json.dumps(results)
    assert result["artifacts"] == ["report.txt"]
    host_state.assert_unchanged()
