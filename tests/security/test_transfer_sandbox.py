"""Outbox and inbox transfers against real sandboxes whose agent plants links, fifos, sockets,
setuid files and hard links, or races link swaps while the host collects.

Every attack runs as a model's tool call (a scripted model on loopback asks for ``run_shell``)
or straight through the guest; the host's task service, transfer code and provider are real.
"""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from hivecell.agent.llm import LLMClient
from hivecell.agent.llm.scripted import ScriptedLLMServer
from hivecell.agent.service import TRANSFER_FILE, TaskRequest, TaskResult, TaskService
from hivecell.errors import PathDenied
from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.local import freeze, procs
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.sandbox.transfer import TransferLimits, copy_out
from hivecell.store import TaskStore, default_database_url
from hivecell.trace import TraceReader
from tests.agent.helpers import act, call, finish, provider_config, tool_results
from tests.sandbox.host import sh_out, shell
from tests.server.helpers import serve, write_provider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
SECRET = "host-secret-9b2e"


@pytest.fixture
def provider(home: Path, pycache: Path) -> LocalProvider:
    return LocalProvider(home, pycache=pycache)


@pytest.fixture
async def store(home: Path) -> AsyncIterator[TaskStore]:
    async with TaskStore(default_database_url(home)) as opened:
        yield opened


@pytest.fixture
def secret(home: Path) -> Path:
    """A host file outside every sandbox mount; a box can only name its path."""
    path = home / "host-only" / "secret.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


async def run_task(
    home: Path,
    provider: LocalProvider,
    store: TaskStore,
    command: str,
    limits: TransferLimits | None = None,
    **request: object,
) -> TaskResult:
    """One task whose model runs ``command`` in the sandbox, then says it is done."""
    steps = [act(call("run_shell", command=command)), *finish("done")]
    async with (
        ScriptedLLMServer(steps) as server,
        LLMClient(provider_config(server.base_url)) as llm,
    ):
        service = TaskService(
            home=home, provider=provider, store=store, llm=llm, transfer_limits=limits
        )
        task = TaskRequest(description="make outputs", **request)  # type: ignore[arg-type]
        record = await service.create(task)
        return await service.run(record, task)


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def outbox_trace(result: TaskResult) -> dict[str, object]:
    steps = TraceReader(Path(result.trace_dir)).steps()
    records = [s for s in steps if s.tool == "transfer.outbox"]
    assert len(records) == 1
    assert isinstance(records[0].result, dict)
    return records[0].result


@pytest.mark.parametrize("target", ["/etc", "/"])
async def test_outbox_replaced_by_a_link_to_host_folders_yields_nothing(
    home: Path, provider: LocalProvider, store: TaskStore, target: str
) -> None:
    command = f"rmdir /shared/outbox && ln -s {target} /shared/outbox && ls -d /shared/outbox/"
    result = await run_task(home, provider, store, command)
    assert result.status == "completed"
    output = Path(result.output_dir)
    assert result.artifacts == [] and [p async for p in anyio.Path(output).iterdir()] == []
    assert result.transfer is not None
    assert [(s.path, s.reason) for s in result.transfer.skipped] == [(".", "symlink")]
    assert outbox_trace(result)["skipped_count"] == 1
    saved = json.loads((Path(result.trace_dir) / TRANSFER_FILE).read_text())
    assert saved["skipped"][0]["reason"] == "symlink"
    assert await provider.list() == []


async def test_planted_links_fifos_sockets_setuid_and_hardlinks(
    home: Path, provider: LocalProvider, store: TaskStore, secret: Path
) -> None:
    command = " && ".join(
        [
            "cd /shared/outbox",
            "mkdir -p a/b && echo fine > a/b/ok.txt",
            f"ln -s {secret} a/b/secret.txt",  # a file link deep down
            f"ln -s {secret.parent} a/host",  # a folder link deep down
            "ln -s /etc/shadow shadow",
            "mkfifo pipe",
            "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('sock')\"",
            "cp /bin/sh sh && chmod 6755 sh",
            "echo linked > /shared/workspace/data && ln /shared/workspace/data hard",
            "! ln /usr/bin/env env 2>/dev/null",  # no hard link across mounts (EXDEV)
        ]
    )
    result = await run_task(home, provider, store, command)
    assert result.status == "completed", result.summary
    assert sorted(result.artifacts) == ["a/b/ok.txt", "hard", "sh"]
    assert result.transfer is not None
    reasons = {s.path: s.reason for s in result.transfer.skipped}
    assert reasons == {
        "a/b/secret.txt": "symlink",
        "a/host": "symlink",
        "shadow": "symlink",
        "pipe": "fifo",
        "sock": "socket",
    }
    output = Path(result.output_dir)
    assert SECRET.encode() not in all_bytes(output)
    shell_copy = (output / "sh").stat()
    assert stat.S_IMODE(shell_copy.st_mode) == 0o755 and result.transfer.stripped == ["sh"]
    assert (output / "hard").read_text() == "linked\n" and (output / "hard").stat().st_nlink == 1


async def test_caps_leave_files_out_and_say_so(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    command = (
        "cd /shared/outbox && head -c 5000 /dev/zero > big"
        " && for i in 1 2 3 4 5 6 7 8; do echo $i > small$i; done"
    )
    limits = TransferLimits(max_bytes=1000, max_files=5)
    result = await run_task(home, provider, store, command, limits)
    report = result.transfer
    assert report is not None and report.truncated
    assert result.artifacts == ["small1", "small2", "small3", "small4", "small5"]
    assert {s.path: s.reason for s in report.skipped} == {"big": "byte_cap", "small6": "file_cap"}
    assert outbox_trace(result)["truncated"] is True


async def test_link_swap_race_inside_a_running_box_never_leaks(
    provider: LocalProvider, secret: Path, home: Path
) -> None:
    info = await provider.create(SandboxSpec())
    # report.txt: a file that is atomically a link to the secret half of the time; sub: a
    # folder holding a harmless secret.txt, renamed away for a link to the secret's folder.
    swap = (
        "cd /shared/outbox && mkdir sub && echo harmless > sub/secret.txt && while :; do"
        f" ln -sfn {secret} .l; mv -T .l report.txt;"
        " echo harmless > .p; mv -T .p report.txt;"
        f" ln -sfn {secret.parent} .m; mv -T sub .old; mv -T .m sub; rm sub; mv -T .old sub;"
        " done"
    )
    try:
        async with await provider.connect(info.id) as guest:
            await sh_out(guest, f"setsid sh -c '{swap}' >/dev/null 2>&1 &")
        seen: set[str] = set()
        wanted = {"report.txt", "sub/secret.txt", "symlink"}  # both sides of the race
        i = 0
        # At least 300 rounds, and on until both sides were hit (on a loaded host the box's
        # loop may start late or run slowly).
        with anyio.fail_after(180):
            while i < 300 or not wanted <= seen:
                out = home / "collected" / str(i)
                report = await anyio.to_thread.run_sync(
                    copy_out, Path(info.shared_dir), "outbox", out, TransferLimits()
                )
                assert SECRET.encode() not in all_bytes(out), f"iteration {i} leaked"
                seen.update(report.copied)
                seen.update(s.reason for s in report.skipped)
                i += 1
    finally:
        await provider.destroy(info.id)


async def test_reused_box_is_frozen_while_collected_and_resumed_after(
    home: Path, provider: LocalProvider, store: TaskStore
) -> None:
    info = await provider.create(SandboxSpec())
    try:
        async with await provider.connect(info.id) as guest:
            await sh_out(guest, "setsid sh -c 'while :; do :; done' >/dev/null 2>&1 &")
        supervisor = _supervisor(provider, info)
        assert await provider.freeze(info.id, True)
        box = procs.box_processes(supervisor)
        assert box and {freeze.state(pid) for pid in box} <= {"T", "t", None}
        await provider.freeze(info.id, False)
        assert "T" not in {freeze.state(pid) for pid in box}
        result = await run_task(
            home, provider, store, "echo warm > /shared/outbox/w.txt", sandbox_id=info.id
        )
        assert result.artifacts == ["w.txt"]
        async with await provider.connect(info.id) as guest:  # thawed: it answers again
            assert await sh_out(guest, "echo alive") == "alive\n"
    finally:
        await provider.destroy(info.id)


def _supervisor(provider: LocalProvider, info: SandboxInfo) -> int:
    meta = json.loads((provider.home / "sandboxes" / info.id / "meta.json").read_text())
    return int(meta["supervisor_pid"])


async def test_inbox_is_read_only_inside_by_default(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec())
    try:
        async with await provider.connect(info.id) as guest:
            for attack in (
                "touch /shared/inbox/x",
                "mv /shared/inbox /shared/gone",
                "rm -rf /shared/inbox",
            ):
                assert (await shell(guest, attack))["exit_code"] != 0, attack
            await sh_out(guest, "touch /shared/outbox/x /shared/workspace/x")
    finally:
        await provider.destroy(info.id)


async def test_inbox_is_writable_when_asked(provider: LocalProvider) -> None:
    info = await provider.create(SandboxSpec(inbox_writable=True))
    try:
        async with await provider.connect(info.id) as guest:
            await sh_out(guest, "touch /shared/inbox/x")
        assert (Path(info.shared_dir) / "inbox" / "x").is_file()
    finally:
        await provider.destroy(info.id)


async def test_inbox_copy_into_a_box_that_swapped_its_inbox_for_a_link(
    home: Path, provider: LocalProvider, store: TaskStore, tmp_path: Path
) -> None:
    target = home / "host-dir"
    target.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("input")
    info = await provider.create(SandboxSpec(inbox_writable=True))
    try:
        async with await provider.connect(info.id) as guest:
            await sh_out(guest, f"rmdir /shared/inbox && ln -s {target} /shared/inbox")
        denied = pytest.RaisesExc(PathDenied, match="not a folder")
        with pytest.RaisesGroup(denied, allow_unwrapped=True, flatten_subgroups=True):
            await run_task(home, provider, store, "true", sandbox_id=info.id, files=[notes])
        assert list(target.iterdir()) == []
        # Restarting never binds what the link points at: the inbox is a folder again.
        await provider.stop(info.id)
        await provider.start(info.id)
        inbox = Path(info.shared_dir) / "inbox"
        assert inbox.is_dir() and not inbox.is_symlink()
        async with await provider.connect(info.id) as guest:
            await sh_out(guest, "touch /shared/inbox/y")
        assert list(target.iterdir()) == [] and await anyio.Path(inbox / "y").is_file()
    finally:
        await provider.destroy(info.id)


async def test_through_the_api_a_planted_outbox_link_downloads_nothing(home: Path) -> None:
    """The issue's attack end to end: the task's model links the outbox to the host's /etc."""
    attack = "touch /shared/inbox/mine; rmdir /shared/outbox && ln -s /etc /shared/outbox"
    steps = [act(call("run_shell", command=attack)), *finish("linked")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            body = {"description": "link the outbox", "max_steps": 5}
            response = await running.post("/tasks", json=body)
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]
            done = await running.wait_for(task_id, lambda t: t["status"] == "completed", 120)
            assert done["artifacts"] == []
            listing = (await running.get(f"/tasks/{task_id}/artifacts")).json()
            assert listing["items"] == []
            assert listing["transfer"]["skipped"] == [
                {"path": ".", "reason": "symlink", "detail": "outbox is a symlink, not a folder"}
            ]
            for name in ("passwd", "shadow", "hostname"):
                download = await running.get(f"/tasks/{task_id}/artifacts/{name}")
                assert download.status_code == 404, name
            trace = (await running.get(f"/tasks/{task_id}/trace")).json()["steps"]
            assert trace[-1]["kind"] == "transfer" and trace[-1]["error"] == "1 left out"
    touched = tool_results(llm.chat_requests[1])[0]
    assert "Read-only file system" in touched["stderr"]  # the inbox is read-only by default


async def test_through_the_api_inbox_writable_is_per_task(home: Path) -> None:
    steps = [act(call("run_shell", command="touch /shared/inbox/mine")), *finish("touched")]
    async with ScriptedLLMServer(steps) as llm:
        write_provider(home, llm.base_url)
        async with serve(home) as running:
            body = {"description": "write the inbox", "max_steps": 5, "inbox_writable": True}
            response = await running.post("/tasks", json=body)
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]
            await running.wait_for(task_id, lambda t: t["status"] == "completed", 120)
    assert tool_results(llm.chat_requests[1])[0]["exit_code"] == 0


async def test_guest_socket_swapped_for_a_link_to_a_host_socket_is_not_followed(
    provider: LocalProvider, home: Path
) -> None:
    host_socket = home / "host-only" / "service.sock"
    host_socket.parent.mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(host_socket))
    listener.listen()
    listener.setblocking(False)
    info = await provider.create(SandboxSpec())
    assert info.guest_socket is not None and info.endpoint == f"unix:{info.guest_socket}"
    try:
        async with await provider.connect(info.id) as guest:
            await sh_out(
                guest,
                f"ln -s {host_socket} /run/hivecell/.l && mv -T /run/hivecell/.l"
                " /run/hivecell/guest.sock",
            )
        # The host's socket is in a folder the box never sees: the link changes nothing.
        async with await provider.connect(info.id) as guest:
            assert (await guest.call("ping"))["pong"] is True
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected to the host's service
    finally:
        listener.close()
        await provider.destroy(info.id)
