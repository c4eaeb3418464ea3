"""The guest's own policy (an image's /etc/hivecell/agent.toml): read at boot, enforced by a
real agent on a unix socket against a host that asks for what it may not have."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hivecell.errors import ConfigError, Denied, Timeout, TooLarge
from hivecell.guest import policy
from hivecell.guest.context import GuestConfig
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.qemu.template import install_policy
from tests.protocol.test_agent_wire import agent

pytestmark = pytest.mark.anyio

RULES = """
block_methods = ["run_shell", "write_file"]
allow_commands = ["echo", "sleep", "true"]
block_commands = ["true"]
max_file_bytes = 16
max_exec_seconds = 1
"""


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[GuestClient]:
    (tmp_path / "agent.toml").write_text(RULES)
    rules, max_file_bytes = policy.from_file(tmp_path / "agent.toml", 10 << 20)
    config = GuestConfig(roots=[tmp_path], max_file_bytes=max_file_bytes, policy=rules)
    async with agent(config) as sock, GuestClient(f"unix:{sock}") as client:
        yield client


async def test_blocked_methods_are_refused_and_not_offered(
    guarded: GuestClient, tmp_path: Path
) -> None:
    with pytest.raises(Denied, match="does not serve 'run_shell'") as caught:
        await guarded.call("run_shell", {"command": "echo hi"})
    assert not caught.value.retryable
    with pytest.raises(Denied):
        await guarded.call("write_file", {"path": str(tmp_path / "x"), "content": "x"})
    assert not (tmp_path / "x").exists()
    names = {tool["name"] for tool in (await guarded.call("get_agent_info"))["tools"]}
    assert "run_shell" not in names and "exec_command" in names
    assert (await guarded.call("ping"))["time"] > 0  # the essentials stay


async def test_programs_are_checked_by_name_and_timeouts_cut(
    guarded: GuestClient, tmp_path: Path
) -> None:
    done = await guarded.call("exec_command", {"argv": ["echo", "allowed"]})
    assert done["stdout"] == "allowed\n"
    for argv in (["/usr/bin/id"], ["true"], ["./echo-not"], ["sh", "-c", "echo x"]):
        with pytest.raises(Denied, match="does not let exec_command start"):
            await guarded.call("exec_command", {"argv": argv})
    started = time.monotonic()
    with pytest.raises(Timeout, match="after 1 s"):  # the asked 60 s, cut to the policy's 1 s
        await guarded.call("exec_command", {"argv": ["sleep", "30"], "timeout": 60})
    assert time.monotonic() - started < 20


async def test_the_file_size_limit_can_only_go_down(guarded: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * 100)
    with pytest.raises(TooLarge, match="16-byte limit"):
        await guarded.call("read_file", {"path": str(tmp_path / "big.txt")})
    _, kept = policy.from_file(_write(tmp_path, "max_file_bytes = 1000000000\n"), 5)
    assert kept == 5


def _write(folder: Path, text: str) -> Path:
    path = folder / "p.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('block_methods = ["rm_rf_everything"]', "no such methods: rm_rf_everything"),
        ('block_methods = ["ping"]', "ping cannot be blocked"),
        ("allow_everything = true", "allow_everything: Extra inputs"),
        ("max_exec_seconds = -1", "max_exec_seconds"),
        ("block_methods = [", "is not TOML"),
    ],
)
def test_a_bad_policy_file_is_refused_naming_the_problem(
    tmp_path: Path, text: str, says: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=says) as caught:
        policy.load(path)
    assert str(path) in str(caught.value)


def test_a_missing_policy_file_is_an_error_not_no_policy(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        policy.from_file(tmp_path / "absent.toml", 10)
    assert policy.from_file(None, 10) == (None, 10)


def test_templates_install_it_for_root_readable_by_the_agent(tmp_path: Path) -> None:
    install_policy(tmp_path, RULES)
    installed = tmp_path / "etc" / "hivecell" / "agent.toml"
    assert installed.read_text() == RULES
    assert installed.stat().st_mode & 0o777 == 0o644
    assert policy.load(installed).block_methods == ["run_shell", "write_file"]
