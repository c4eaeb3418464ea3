"""An image's own policy, /etc/hivecell/agent.toml, obeyed by the agent of a booted VM.

The policy's parsing and enforcement are tested on a real agent (tests/guest/test_policy.py)
and its install into a template's root filesystem at build time (the same module); this is
the link between them: a VM booted from an image that holds the file starts its agent with
it. The image is the CI template plus the file, written into a copy-on-write layer on the
template's disk (qemu-storage-daemon exports the layer as a raw file over FUSE, debugfs writes
the file into its ext4): no second template build, no copy of the disk.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.errors import Denied, Timeout
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.qemu.provider import QemuProvider
from hivecell.sandbox.qemu.template import Template, TemplateStore, private_folder
from tests.sandbox import qemu_env

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.xdist_group("qemu"),
    pytest.mark.timeout(1800),  # the first VM test may build the CI template (minutes)
]
NAME = "policy-test"
RULES = """\
block_methods = ["run_shell"]
block_commands = ["xterm"]
max_exec_seconds = 2
"""
MOUNT_WAIT_S = 60.0


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    with qemu_env.scratch_home("hc-vmpol-") as path:
        yield path


def _mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as table:
        return any(line.split()[4] == str(path) for line in table)


def _write_into_image(disk: Path, guest: str, source: Path, work: Path) -> None:
    """Write host file ``source`` as root's ``guest`` (mode 644) into the ext4 of ``disk``."""
    raw = work / "raw"
    raw.touch()
    export = f"type=fuse,id=exp,node-name=fmt,mountpoint={raw},writable=on"
    daemon = subprocess.Popen(
        ["qemu-storage-daemon", "--blockdev", f"driver=file,node-name=file,filename={disk}",
         "--blockdev", "driver=qcow2,node-name=fmt,file=file", "--export", export],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not _mounted(raw):
            assert daemon.poll() is None, daemon.communicate()[1]
            assert time.monotonic() < deadline, "qemu-storage-daemon never exported the disk"
            time.sleep(0.05)
        script = work / "debugfs.cmds"
        script.write_text(
            f"mkdir {Path(guest).parent}\n"  # an error if it is there: debugfs goes on
            f"write {source} {guest}\n"
            f"set_inode_field {guest} mode 0100644\n"
            f"set_inode_field {guest} uid 0\n"
            f"set_inode_field {guest} gid 0\n"
        )
        subprocess.run(["debugfs", "-w", "-f", script, raw], check=True, capture_output=True)
        back = subprocess.run(
            ["debugfs", "-R", f"cat {guest}", raw], check=True, capture_output=True
        )
        assert back.stdout == source.read_bytes()
    finally:
        daemon.terminate()  # it unmounts the export on the way out
        daemon.wait(30)
    assert not _mounted(raw)


def policy_template(store: Path, base: Template, work: Path) -> None:
    """Template ``NAME`` in ``store``: ``base``'s kernel and disk, plus the policy file."""
    private_folder(store)
    folder = store / NAME
    folder.mkdir()
    for part in ("vmlinuz", "initrd.img"):
        shutil.copy2(base.root / part, folder / part)
    disk = folder / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base.disk), str(disk)],
        check=True,
    )
    (work / "agent.toml").write_text(RULES)
    _write_into_image(disk, "/etc/hivecell/agent.toml", work / "agent.toml", work)
    manifest = base.manifest.model_copy(
        update={"name": NAME, "agent_policy": RULES, "key": base.manifest.key + "-policy"}
    )
    (folder / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json")))


@pytest.fixture(scope="module")
async def provider(home: Path) -> AsyncIterator[QemuProvider]:
    base = await anyio.to_thread.run_sync(qemu_env.ci_template)
    work = home / "work"
    work.mkdir()
    await anyio.to_thread.run_sync(policy_template, home / "templates", base, work)
    made = QemuProvider(
        home, template=NAME, cache_dir=qemu_env.cache_dir().parent / "qemu", warm=False
    )
    try:
        yield made
    finally:
        for info in await made.list():
            await made.destroy(info.id)


async def test_a_booted_vm_obeys_its_images_policy(provider: QemuProvider) -> None:
    assert TemplateStore(provider.home / "templates").get(NAME).manifest.agent_policy == RULES
    info = await provider.create(SandboxSpec(width=800, height=600, memory_mb=1024, cpus=1))
    async with await provider.connect(info.id) as guest:
        with pytest.raises(Denied, match="does not serve 'run_shell'"):
            await guest.call("run_shell", {"command": "echo hi"})
        with pytest.raises(Denied, match="does not let exec_command start"):
            await guest.call("exec_command", {"argv": ["xterm"]})
        names = {tool["name"] for tool in (await guest.call("get_agent_info"))["tools"]}
        assert "run_shell" not in names and "exec_command" in names
        # what it allows still works, within its time limit (2 s, whatever the host asks)
        assert await out(guest, "cat", "/etc/hivecell/agent.toml") == RULES
        # root's file, which the agent (uid 1000) may read but not change
        assert await out(guest, "stat", "-c", "%u %a", "/etc/hivecell/agent.toml") == "0 644\n"
        started = time.monotonic()
        with pytest.raises(Timeout, match="after 2 s"):
            await guest.call("exec_command", {"argv": ["sleep", "30"], "timeout": 60})
        assert time.monotonic() - started < 20


async def out(guest: GuestClient, *argv: str) -> str:
    """stdout of a program that must succeed (exec_command: run_shell is blocked here)."""
    done = await guest.call("exec_command", {"argv": list(argv)})
    assert done["exit_code"] == 0, done
    return str(done["stdout"])
