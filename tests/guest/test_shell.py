"""exec_command and run_shell against a real agent on a unix socket, with real processes."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.errors import InvalidParams, NotFound, Timeout, ToolFailed
from hivecell.guest.context import GuestConfig
from hivecell.guest.tools import shell
from hivecell.protocol.framing import FrameReader
from hivecell.sandbox.guest_client import GuestClient
from tests.protocol.test_agent_wire import agent

pytestmark = pytest.mark.anyio


@pytest.fixture
async def guest(tmp_path: Path) -> AsyncIterator[GuestClient]:
    async with agent(GuestConfig(roots=[tmp_path])) as sock, GuestClient(f"unix:{sock}") as client:
        yield client


async def sh(guest: GuestClient, command: str, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = await guest.call("run_shell", {"command": command, **params})
    return result


# --- /proc helpers: which processes are still alive ----------------------------------------
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a live or zombie process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


def _alive(pid: int) -> bool:
    info = _proc_stat(pid)
    return info is not None and info[0] not in ("Z", "X")  # a zombie is dead, just unreaped


def _group_members(pgid: int) -> list[int]:
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if (info := _proc_stat(pid)) and info[1] == pgid and _alive(pid)]


async def _until_gone(pids: list[int], seconds: float = 5.0) -> list[int]:
    with anyio.move_on_after(seconds):
        # polling: nothing signals the exit of a process that is not our child
        while any(_alive(pid) for pid in pids):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return [pid for pid in pids if _alive(pid)]


async def _until_group_gone(pgid: int, seconds: float = 5.0) -> list[int]:
    """Killed members leave asynchronously; a loaded machine may take a moment to reap them."""
    with anyio.move_on_after(seconds):
        while _group_members(pgid):  # noqa: ASYNC110 - polling /proc, nothing to wait on
            await anyio.sleep(0.02)
    return _group_members(pgid)


# --- results -------------------------------------------------------------------------------
async def test_exit_code_stdout_and_stderr(guest: GuestClient) -> None:
    result = await sh(guest, "echo out; echo err >&2; exit 7")
    assert result["exit_code"] == 7
    assert result["stdout"] == "out\n"
    assert result["stderr"] == "err\n"
    assert result["truncated"] is False
    assert result["duration_ms"] > 0


async def test_exec_command_passes_argv_without_a_shell(guest: GuestClient) -> None:
    result = await guest.call("exec_command", {"argv": ["echo", "$HOME", "*", "a b;c"]})
    assert result["stdout"] == "$HOME * a b;c\n"
    assert result["exit_code"] == 0


async def test_run_shell_runs_a_shell_command_line(guest: GuestClient) -> None:
    result = await sh(guest, "echo $((2 + 3)) | tr 5 V")
    assert result["stdout"] == "V\n"


async def test_killed_by_a_signal_gives_negative_exit_code(guest: GuestClient) -> None:
    result = await sh(guest, "kill -9 $$")
    assert result["exit_code"] == -9


async def test_stdin_is_fed(guest: GuestClient) -> None:
    result = await guest.call("exec_command", {"argv": ["cat"], "stdin": "hello\nwörld ✓"})
    assert result["stdout"] == "hello\nwörld ✓"


async def test_large_stdin_and_stdout_do_not_deadlock(guest: GuestClient) -> None:
    data = "0123456789abcdef" * 60_000  # ~1 MB each way, far beyond a pipe buffer
    result = await guest.call("exec_command", {"argv": ["cat"], "stdin": data})
    assert result["stdout"] == data


async def test_unread_stdin_is_fine(guest: GuestClient) -> None:
    result = await guest.call("exec_command", {"argv": ["true"], "stdin": "x" * 500_000})
    assert result["exit_code"] == 0


async def test_without_stdin_the_child_reads_end_of_file(guest: GuestClient) -> None:
    with anyio.fail_after(5):
        result = await guest.call("exec_command", {"argv": ["cat"]})
    assert result["stdout"] == ""


async def test_env_is_added_to_the_agent_environment(guest: GuestClient) -> None:
    result = await sh(guest, 'echo "$HC_ONE|$HC_TWO"; echo "$PATH"', env={"HC_ONE": "1"})
    first, path = result["stdout"].splitlines()
    assert first == "1|"
    assert path == os.environ["PATH"]


async def test_cwd(guest: GuestClient, tmp_path: Path) -> None:
    result = await guest.call("exec_command", {"argv": ["pwd"], "cwd": str(tmp_path)})
    assert result["stdout"].strip() == str(await anyio.Path(tmp_path).resolve())
    home = await guest.call("exec_command", {"argv": ["pwd"], "cwd": "~"})
    assert home["stdout"].strip() == str(await (await anyio.Path.home()).resolve())


async def test_missing_cwd_is_not_found_and_named(guest: GuestClient, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(NotFound) as err:
        await guest.call("exec_command", {"argv": ["pwd"], "cwd": missing})
    assert missing in err.value.message
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotFound, match="not a directory"):
        await guest.call("exec_command", {"argv": ["pwd"], "cwd": str(tmp_path / "file")})


async def test_missing_program(guest: GuestClient) -> None:
    with pytest.raises(NotFound, match="program 'no-such-program-hc' not found on PATH"):
        await guest.call("exec_command", {"argv": ["no-such-program-hc", "x"]})
    with pytest.raises(NotFound, match="'/no/such/prog' does not exist"):
        await guest.call("exec_command", {"argv": ["/no/such/prog"]})


async def test_program_that_is_not_executable(guest: GuestClient, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    with pytest.raises(ToolFailed, match="cannot start"):
        await guest.call("exec_command", {"argv": [str(script)]})


async def test_nul_byte_in_argv_is_invalid_params(guest: GuestClient) -> None:
    with pytest.raises(InvalidParams, match="null byte"):
        await guest.call("exec_command", {"argv": ["echo", "a\x00b"]})


# --- output limits and decoding ------------------------------------------------------------
async def test_output_over_max_output_is_truncated(guest: GuestClient) -> None:
    result = await sh(guest, "head -c 100000 /dev/zero | tr '\\0' a", max_output=1000)
    assert result["stdout"] == "a" * 1000
    assert result["truncated"] is True


async def test_stderr_truncation_sets_the_flag_too(guest: GuestClient) -> None:
    result = await sh(guest, "head -c 5000 /dev/zero | tr '\\0' e >&2; echo ok", max_output=10)
    assert result["stderr"] == "e" * 10
    assert result["stdout"] == "ok\n"
    assert result["truncated"] is True


async def test_huge_output_never_blocks_the_child(guest: GuestClient) -> None:
    # 20 MB per stream with 16 bytes kept: the rest must be read and discarded
    command = "head -c 20000000 /dev/zero; head -c 20000000 /dev/zero >&2; echo done >&2"
    with anyio.fail_after(30):
        result = await sh(guest, command, max_output=16)
    assert result["exit_code"] == 0
    assert result["stdout"] == "\x00" * 16
    assert result["truncated"] is True


async def test_max_output_zero_keeps_nothing(guest: GuestClient) -> None:
    result = await sh(guest, "echo hi", max_output=0)
    assert result["stdout"] == ""
    assert result["truncated"] is True


async def test_unicode_output(guest: GuestClient) -> None:
    text = "héllo 世界 🎉 Ω"
    result = await guest.call("exec_command", {"argv": ["printf", "%s", text]})
    assert result["stdout"] == text


async def test_truncation_never_splits_a_character(guest: GuestClient) -> None:
    result = await guest.call("exec_command", {"argv": ["printf", "€€€"], "max_output": 4})
    assert result["stdout"] == "€"
    assert result["truncated"] is True


async def test_invalid_utf8_is_replaced(guest: GuestClient) -> None:
    result = await sh(guest, "printf 'a\\377b'")
    assert result["stdout"] == "a\ufffdb"


# --- streaming -----------------------------------------------------------------------------
async def test_streamed_chunks_arrive_before_the_result(guest: GuestClient) -> None:
    chunks: list[tuple[float, str, str]] = []

    async def on_output(stream: str, data: str) -> None:
        chunks.append((time.monotonic(), stream, data))

    command = "for i in 1 2 3; do echo line$i; sleep 0.2; done; echo oops >&2"
    result = await guest.call(
        "run_shell", {"command": command, "stream": True}, on_output=on_output
    )
    returned = time.monotonic()
    assert "".join(d for _, s, d in chunks if s == "stdout") == result["stdout"]
    assert "".join(d for _, s, d in chunks if s == "stderr") == "oops\n"
    assert result["stdout"] == "line1\nline2\nline3\n"
    # the first line was delivered while the command still had ~0.4 s to run
    assert returned - chunks[0][0] > 0.3
    assert chunks[0][2] == "line1\n"


async def test_streaming_reassembles_split_multibyte_characters(guest: GuestClient) -> None:
    chunks: list[str] = []

    async def on_output(stream: str, data: str) -> None:
        chunks.append(data)

    # '€' is e2 82 ac: written in two pieces 0.2 s apart, so they arrive as two reads
    command = "printf '\\342\\202'; sleep 0.2; printf '\\254!'"
    result = await guest.call(
        "run_shell", {"command": command, "stream": True}, on_output=on_output
    )
    assert result["stdout"] == "€!"
    assert "".join(chunks) == "€!"
    assert not any("\ufffd" in chunk for chunk in chunks)


async def test_no_notifications_without_stream(guest: GuestClient) -> None:
    chunks: list[str] = []

    async def on_output(stream: str, data: str) -> None:
        chunks.append(data)

    await guest.call("run_shell", {"command": "echo hi"}, on_output=on_output)
    assert chunks == []


# --- timeouts, cancellation and process groups ---------------------------------------------
async def test_timeout_kills_the_whole_process_group(guest: GuestClient) -> None:
    command = "echo $$; sleep 100 & echo $!; echo partial >&2; sleep 100"
    started = time.monotonic()
    with pytest.raises(Timeout) as err:
        await sh(guest, command, timeout=0.5)
    assert time.monotonic() - started < 60  # killed, not the 100 s sleep (loaded CI: generous)
    assert "timeout" in err.value.message
    shell_pid, background_pid = map(int, err.value.context["stdout_tail"].split())
    assert err.value.context["stderr_tail"] == "partial\n"
    assert await _until_gone([shell_pid, background_pid]) == []
    assert await _until_group_gone(shell_pid) == []


async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(guest: GuestClient) -> None:
    command = "trap '' TERM; echo $$; sleep 100 & echo $!; wait"
    started = time.monotonic()
    with pytest.raises(Timeout) as err:
        await sh(guest, command, timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.3 + shell.GRACE_SECONDS - 0.1 < elapsed < 60  # waited the grace, then killed
    pids = [int(pid) for pid in err.value.context["stdout_tail"].split()]
    assert await _until_gone(pids) == []
    assert await _until_group_gone(pids[0]) == []


async def test_timeout_tail_is_bounded(guest: GuestClient) -> None:
    with pytest.raises(Timeout) as err:
        await sh(guest, "head -c 50000 /dev/zero | tr '\\0' x; sleep 100", timeout=0.5)
    assert err.value.context["stdout_tail"] == "x" * shell.TAIL_BYTES


async def test_cancel_stops_a_long_command(guest: GuestClient) -> None:
    pids: list[int] = []

    async def on_output(stream: str, data: str) -> None:
        pids.extend(int(word) for word in data.split())

    params = {"command": "echo $$; sleep 100 & echo $!; sleep 100", "stream": True}
    with anyio.move_on_after(0.5) as scope:  # GuestClient sends `cancel` when cancelled
        await guest.call("run_shell", params, on_output=on_output)
    assert scope.cancelled_caught
    assert len(pids) == 2
    assert await _until_gone(pids) == []
    assert await _until_group_gone(pids[0]) == []
    assert (await guest.call("ping"))["pong"] is True


async def test_host_disconnect_kills_the_command(tmp_path: Path) -> None:
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "run_shell",
        "params": {"command": "echo $$; sleep 100 & echo $!; sleep 100", "stream": True},
    }
    async with agent(GuestConfig(roots=[tmp_path])) as sock:
        stream = await anyio.connect_unix(sock)
        async with stream:
            await stream.send(json.dumps(request).encode() + b"\n")
            pids: list[int] = []
            async for frame in FrameReader(stream):
                assert isinstance(frame, bytes)
                note = json.loads(frame)
                if note.get("method") != "exec.output":
                    continue  # a heartbeat
                pids.extend(int(word) for word in note["params"]["data"].split())
                if len(pids) == 2:
                    break
        # the connection is closed with the command still running
        assert await _until_gone(pids) == []
        assert await _until_group_gone(pids[0]) == []


async def test_background_job_does_not_hold_the_call(guest: GuestClient) -> None:
    started = time.monotonic()
    result = await sh(guest, "sleep 30 & echo $!")
    pid = int(result["stdout"])
    try:
        assert time.monotonic() - started < shell.DRAIN_SECONDS + 1
        assert _alive(pid)  # a finished call leaves its background jobs running
    finally:
        os.kill(pid, 9)


async def test_concurrent_commands_run_in_parallel(guest: GuestClient, tmp_path: Path) -> None:
    # Each command checks in, then waits for all eight: run one after another, the first
    # would wait forever (and the fail_after below would say so).
    results: list[dict[str, Any]] = []
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    wait_all = f'while [ "$(ls {meeting} | wc -l)" -lt 8 ]; do sleep 0.01; done'

    async def one(i: int) -> None:
        results.append(await sh(guest, f"touch {meeting}/{i}; {wait_all}; echo {i}", timeout=60))

    with anyio.fail_after(90):
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(one, i)
    assert sorted(int(r["stdout"]) for r in results) == list(range(8))
