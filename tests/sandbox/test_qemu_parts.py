"""The qemu provider's parts that need no VM: template names and packages, the store's
locking and refusals, the QEMU command line, the guest disk's contents."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from hivecell.errors import ConfigError, NotFound, SandboxError
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.qemu import guestfiles, machine, vm, warm
from hivecell.sandbox.qemu.layout import VmLayout
from hivecell.sandbox.qemu.template import (
    Template,
    TemplateManifest,
    TemplateStore,
    check_mirror,
    check_name,
    packages_for,
    template_key,
)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "UPPER", "x" * 33, ".hidden", "a b"])
def test_template_names_that_could_leave_the_folder_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid template name"):
        check_name(name)


@pytest.mark.parametrize("mirror", ["--hook-dir=/tmp/x", "ftp://x", "http://a b", ""])
def test_a_mirror_must_be_a_url(mirror: str) -> None:
    with pytest.raises(ConfigError, match="invalid Debian mirror"):
        check_mirror(mirror)
    assert check_mirror("http://deb.debian.org/debian")


def test_packages_are_validated_and_keyed() -> None:
    base = packages_for()
    assert {"linux-image-cloud-amd64", "xvfb", "openbox", "chromium", "tini"} <= set(base)
    assert "libreoffice-writer" in packages_for(options=["libreoffice"])
    with pytest.raises(ConfigError, match="unknown template option"):
        packages_for(options=["nope"])
    for bad in ("-oDpkg::x=y", "a;rm", "x y", "--include=evil"):
        with pytest.raises(ConfigError, match="not a Debian package name"):
            packages_for([bad])
    assert template_key(base) == template_key(list(base))
    assert template_key(base) != template_key(packages_for(["htop"]))


def _fake_template(root: Path, name: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    manifest = TemplateManifest(
        name=name, suite="bookworm", packages=["x"], kernel="6.1", image_sha256="0" * 64,
        image_bytes=1, build_seconds=1.0, built_at=1.0, key=template_key(["x"]),
    )  # fmt: skip
    (folder / "manifest.json").write_text(manifest.model_dump_json())


def test_store_lists_gets_and_removes(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path / "templates")
    _fake_template(store.root, "one")
    (store.root / "broken").mkdir()
    (store.root / "broken" / "manifest.json").write_text("{not json")
    assert [m.name for m in store.list()] == ["one"]
    assert isinstance(store.get("one"), Template)
    with pytest.raises(NotFound, match="hivecell template build two"):
        store.get("two")
    store.remove("one")
    assert store.list() == [] and not (store.root / "one").exists()
    with pytest.raises(NotFound):
        store.remove("one")


def test_a_template_in_use_is_neither_removed_nor_rebuilt(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path / "templates")
    _fake_template(store.root, "base")
    vm_dir = tmp_path / "vms" / "vm-0123abcd"
    vm_dir.mkdir(parents=True)
    (vm_dir / "meta.json").write_text(json.dumps({"template": "base"}))
    with pytest.raises(ConfigError, match="vm-0123abcd"):
        store.remove("base")
    with pytest.raises(ConfigError, match="destroy them first"):
        store.build("base")
    assert store.get("base").manifest.name == "base"


def _fake_warm(template: Template, key: str, guest: str | None) -> warm.WarmState:
    state = warm.state_for(template, key)
    state.root.mkdir(parents=True)
    state.disk.write_bytes(b"disk")
    state.state.write_bytes(b"ram")
    made = {"guest": guest, "format": warm.FORMAT} if guest else {"built_at": 1.0}  # older
    state.record.write_text(json.dumps(made))
    return state


def test_other_versions_warm_states_go_unless_a_vm_stands_on_one(tmp_path: Path) -> None:
    store = TemplateStore(tmp_path / "home" / "templates")
    _fake_template(store.root, "base")
    template = store.get("base")
    for key in ("current", "other-shape"):
        _fake_warm(template, key, "v2")  # this version's: kept whatever their use
    for key in ("old", "legacy-record"):
        _fake_warm(template, key, "v1" if key == "old" else None)
    # a VM of another home registered on it (kept), one whose folder is gone (not kept)
    elsewhere = tmp_path / "elsewhere" / "vm-00000001"
    elsewhere.mkdir(parents=True)
    _fake_warm(template, "registered", "v1").register(elsewhere)
    ghost = tmp_path / "vm-00000002"
    ghost.mkdir()
    _fake_warm(template, "ghost-user", "v1").register(ghost)
    ghost.rmdir()
    # a VM of the template's own home made before registration existed
    _fake_warm(template, "home-vm", "v1")
    home_vm = tmp_path / "home" / "vms" / "vm-0000000a"
    home_vm.mkdir(parents=True)
    (home_vm / "meta.json").write_text(json.dumps({"template": "base", "warm": "home-vm"}))
    _fake_warm(template, "being-cloned", "v1")
    (warm.folder(template) / "b-current-123").mkdir()  # a build in progress: no record yet
    with warm.locked(template, "being-cloned", shared=True):
        removed = warm.prune(template, "v2")
    assert removed == ["ghost-user", "legacy-record", "old"]
    left = sorted(p.name for p in warm.folder(template).iterdir() if p.is_dir())
    assert left == [
        "b-current-123", "being-cloned", "current", "home-vm", "other-shape", "registered"
    ]  # fmt: skip
    assert warm.prune(template, "v2") == ["being-cloned"]  # once nobody clones it


def test_the_qemu_command_line_keeps_the_vm_in_its_box(tmp_path: Path) -> None:
    layout = VmLayout(tmp_path / "vm-0123abcd")
    _fake_template(tmp_path / "t", "base")
    template = TemplateStore(tmp_path / "t").get("base")
    argv = vm.command(layout, template, SandboxSpec(memory_mb=1024, cpus=1.5), "tcg", "qemu")
    joined = " ".join(argv)
    assert argv[argv.index("-nic") + 1] == "none"  # offline: no network device at all
    assert "elevateprivileges=deny" in argv[argv.index("-sandbox") + 1]
    assert "spawn=deny" in argv[argv.index("-sandbox") + 1]
    assert argv[argv.index("-m") + 1] == "1024" and argv[argv.index("-smp") + 1] == "2"
    assert f"name={vm.AGENT_PORT}" in joined and "-vnc" not in argv
    assert "accel=tcg" in joined and f"-cpu {vm.TCG_CPU}" in joined
    cmdline = argv[argv.index("-append") + 1]
    assert "hivecell.screen=1280x800x24" in cmdline and "init=/sbin/hivecell-init" in cmdline
    fsd = vm.virtiofsd_command(layout, "/usr/lib/qemu/virtiofsd")
    assert f"source={layout.shared}" in fsd and "sandbox=namespace" in fsd
    # saveable: virtio-fs is hot-plugged later, never on the command line; it starts paused
    assert "vhost-user-fs" not in joined and "-S" in argv and "-incoming" not in argv
    assert "vmgenid,guid=auto" in joined  # clones of one state reseed their randomness
    assert "name=org.hivecell.control.0" in joined
    restored = vm.command(layout, template, SandboxSpec(), "tcg", "qemu", incoming=True)
    assert restored[restored.index("-incoming") + 1] == "defer"
    assert f"file={layout.disk}," in joined and "-runas" not in argv
    # the RAM is the supervisor's memfd (ramfile.py), shared as virtiofsd needs it
    ram = vm.memory_options(7, 1024)
    assert ram[1] == "memory-backend-file,id=mem,size=1024M,share=on,mem-path=/proc/self/fd/7"
    assert "memory-backend" not in joined  # only the supervisor adds it, with its descriptor


def test_a_root_started_qemu_drops_to_its_own_uid_and_dies_with_its_init(tmp_path: Path) -> None:
    layout = VmLayout(tmp_path / "vm-0123abcd")
    _fake_template(tmp_path / "t", "base")
    template = TemplateStore(tmp_path / "t").get("base")
    argv = vm.command(layout, template, SandboxSpec(), "tcg", "qemu", runas=2_080_374_800)
    assert argv[argv.index("-runas") + 1] == "2080374800:2080374800"
    # its filter must let -runas change the uid; it has no capability left to use it again
    assert "elevateprivileges=allow" in argv[argv.index("-sandbox") + 1]
    assert "spawn=deny" in argv[argv.index("-sandbox") + 1]
    # the disk comes as descriptors: QEMU reopens it after a restore, as a uid that cannot
    drive = f"file=/dev/fdset/{vm.DISK_FDSET},file.locking=off,"
    assert drive in " ".join(argv) and str(layout.disk) not in " ".join(argv)
    wrapped = vm.under_own_init(argv, "/usr/bin/unshare", "/bin/sh")
    assert wrapped[:5] == ["/usr/bin/unshare", "--pid", "--fork", "--kill-child=SIGKILL", "/bin/sh"]
    assert wrapped[-len(argv) :] == argv


def test_the_guest_disk_carries_this_hivecells_agent(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    image = guestfiles.guest_disk(tmp_path)
    # nothing on our stdout: a CLI's output (``sandbox create --json``) when it builds it
    assert capfd.readouterr().out == ""
    assert image.name == f"guest-{guestfiles.guest_version()}.img"
    assert guestfiles.guest_disk(tmp_path) == image  # cached: built once per version

    def ls(folder: str) -> str:
        done = subprocess.run(
            ["debugfs", "-R", f"ls -p {folder}", str(image)], capture_output=True, text=True
        )
        return done.stdout

    assert "/boot.py/" in ls("/src/hivecell/guest")
    assert "/pydantic_core/" in ls("/site-packages") and "/Xlib/" in ls("/site-packages")
    assert "/init/" in ls("/") and "/session/" in ls("/")
    version = subprocess.run(
        ["debugfs", "-R", "cat /guest-version", str(image)], capture_output=True, text=True
    ).stdout
    assert version.strip() == guestfiles.guest_version()


def test_the_guest_packages_come_with_their_dependencies() -> None:
    names = {d.metadata["Name"].lower().replace("_", "-") for d in guestfiles.distributions()}
    assert {"pydantic", "pydantic-core", "anyio", "python-xlib", "pillow", "mss"} <= names
    assert "fastapi" not in names and "openai" not in names  # host-only packages stay out


@pytest.mark.anyio
async def test_the_shared_folder_connection_waits_until_virtiofsd_listens(tmp_path: Path) -> None:
    """virtiofsd binds its socket a moment before it listens: a connect in between is
    refused, and a warm start failed so ("the VM did not come up: Connection refused")."""
    path = tmp_path / "virtiofs.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))  # there, not yet listening
        with pytest.raises(ConnectionRefusedError):
            await anyio.connect_unix(path)

        async def listen_soon() -> None:
            await anyio.sleep(0.2)
            server.listen(1)

        async with anyio.create_task_group() as tg:
            tg.start_soon(listen_soon)
            connection = await machine.connect_when_listening(path, "virtiofsd")
        async with connection:
            accepted, _ = server.accept()  # the connection QEMU is handed: the only one
            accepted.close()


@pytest.mark.anyio
async def test_a_virtiofsd_that_never_listens_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "virtiofs.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        with pytest.raises(SandboxError, match="virtiofsd did not start serving"):
            await machine.connect_when_listening(path, "virtiofsd", timeout=0.3)


class LateBalloon:
    """Stands in for QEMU's QMP in front of a guest under TCG: the balloon driver answers
    only after a few readings, then gives up 128 MiB per reading down to what it can spare
    (300 MiB), and holds there; handed back, it takes 256 MiB per reading."""

    def __init__(self, late_readings: int) -> None:
        self.late = late_readings
        self.size_mb = self.target_mb = 1024
        self.commands: list[tuple[str, object]] = []

    async def execute(self, command: str, args: dict[str, int] | None = None) -> object:
        self.commands.append((command, args))
        if command == "balloon" and args is not None:
            self.target_mb = args["value"] >> 20
        if command == "query-balloon":
            if self.late:
                self.late -= 1
            elif self.target_mb < self.size_mb:
                self.size_mb = max(300, self.target_mb, self.size_mb - 128)
            else:
                self.size_mb = min(self.target_mb, self.size_mb + 256)
            return {"actual": self.size_mb << 20}
        return {}


@pytest.mark.anyio
@pytest.mark.parametrize("late_readings", [0, 5])
async def test_the_squeeze_waits_for_a_late_balloon_and_for_it_to_settle(
    late_readings: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm-started VM kept its whole RAM resident when the guest's balloon driver did
    not answer by the first reading (the squeeze took "no change" for "done")."""
    monkeypatch.setattr(machine, "BALLOON_POLL", 0.01)
    monkeypatch.setattr(machine, "BALLOON_STALL_S", 0.05)
    balloon = LateBalloon(late_readings)
    lowest = await machine.squeeze(balloon, 1024, 256, timeout=10)  # type: ignore[arg-type]
    assert lowest == 300
    assert balloon.commands[0] == ("balloon", {"value": 256 << 20})
    assert ("balloon", {"value": 1024 << 20}) in balloon.commands  # handed back, empty
    # and taken back before it returns: a state saved meanwhile would go on deflating in
    # every clone
    assert balloon.size_mb == 1024 and balloon.commands[-1] == ("query-balloon", None)


@pytest.mark.anyio
async def test_a_balloon_that_never_answers_is_let_go_at_the_timeout() -> None:
    balloon = LateBalloon(late_readings=10**6)
    with anyio.fail_after(5):
        assert await machine.squeeze(balloon, 1024, 256, timeout=0.5) == 1024  # type: ignore[arg-type]
    assert ("balloon", {"value": 1024 << 20}) in balloon.commands


GREETING = {
    "QMP": {
        "version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
        "capabilities": [],
    }
}


def _read_json(peer: socket.socket) -> dict[str, object]:
    data = b""
    while True:
        data += peer.recv(4096) or b"}"  # a closed peer ends the read with a parse error
        try:
            found: dict[str, object] = json.loads(data)
            return found
        except ValueError:
            continue


@pytest.mark.anyio
async def test_qmp_waits_until_its_socket_listens(tmp_path: Path) -> None:
    """QEMU's QMP and control sockets exist from their bind, a moment before they listen:
    the supervisor's connect retries while refused (as for virtiofsd). The peer answers the
    QMP greeting and capabilities negotiation the way QEMU does."""
    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))

        def serve() -> None:
            time.sleep(0.2)
            server.listen(1)
            server.settimeout(10)  # a client that gave up never comes: the test ends anyway
            peer, _ = server.accept()
            with peer:
                peer.sendall(json.dumps(GREETING).encode() + b"\r\n")
                asked = _read_json(peer)  # QMP messages end with their closing brace
                assert asked["execute"] == "qmp_capabilities"
                answer = {"return": {}, **({"id": asked["id"]} if "id" in asked else {})}
                peer.sendall(json.dumps(answer).encode() + b"\r\n")
                while peer.recv(4096):  # until the client leaves
                    pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, serve)
            qmp = await machine.connect(path, "test")
            await qmp.disconnect()
