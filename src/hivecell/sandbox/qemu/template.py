"""VM templates: a Debian 12 desktop disk image with the guest agent, booted directly.

    <home>/templates/<name>/
        manifest.json   what it holds (packages, kernel, image hash and size, build time)
        disk.qcow2      the root filesystem (ext4, no partition table: the kernel mounts
                        /dev/vda); sandboxes are qcow2 overlays on it, never copies
        vmlinuz, initrd.img   the template's own kernel (linux-image-cloud-amd64), booted
                        by QEMU directly: no bootloader, no firmware menu

Built with mmdebstrap from Debian packages into a folder, written into an ext4 image with
``mkfs.ext4 -d`` (no loop mount) and converted to qcow2. The build happens in a scratch
folder beside the final one and is renamed into place, so a killed build leaves no template
that looks finished; builds of one name are serialised by a lock.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hivecell.errors import ConfigError, NotFound, SandboxError
from hivecell.guest import desktopenv
from hivecell.sandbox.qemu import initramfs
from hivecell.sandbox.qemu.layout import STUB_INIT

SUITE = "bookworm"
DEFAULT_NAME = "default"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The desktop of a local sandbox (hivecell.guest.desktopenv "full") and the tools the guest
# agent calls, plus what a VM needs to boot and run the agent.
BOOT_PACKAGES = (
    "linux-image-cloud-amd64", "kmod", "tini", "e2fsprogs", "iproute2", "procps",
    "python3", "ca-certificates", "busybox-static",
)  # fmt: skip
DESKTOP_PACKAGES = (
    *desktopenv.PACKAGES["full"],
    "x11vnc", "xclip", "xsel", "xdotool", "wmctrl", "x11-utils", "mousepad", "chromium",
    "scrot", "dbus-x11", "dbus-daemon", "at-spi2-core",
)  # fmt: skip
OPTIONS = {"libreoffice": ("libreoffice-writer", "libreoffice-calc", "libreoffice-impress")}
TOOLS = {"mmdebstrap": "mmdebstrap", "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils"}
FREE_SPACE_MB = 512  # room in the image beyond its files (sandboxes grow it to their cap)
STUB_SCRIPT = """#!/bin/sh
# hivecell's init stub: the guest disk (/dev/vdb) carries the agent and the real init.
if ! /bin/mount -t ext4 -o ro,nodev /dev/vdb /opt/hivecell; then
  echo "hivecell: the guest disk (/dev/vdb) did not mount"
  echo o > /proc/sysrq-trigger
fi
exec /opt/hivecell/init
"""
_VALID_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")

Progress = Callable[[str], None]


class TemplateManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    suite: str
    packages: list[str] = Field(description="what was asked for; apt added their dependencies")
    kernel: str = Field(description="the kernel release booted (uname -r in the VM)")
    image_sha256: str
    image_bytes: int
    build_seconds: float
    built_at: float
    key: str = Field(description="hash of what went in (suite, packages, init stub)")
    agent_policy: str | None = Field(
        None, description="the guest's /etc/hivecell/agent.toml (hivecell/guest/policy.py)"
    )


class Template:
    """One built template's files."""

    def __init__(self, root: Path, manifest: TemplateManifest) -> None:
        self.root = root
        self.manifest = manifest

    @property
    def disk(self) -> Path:
        return self.root / "disk.qcow2"

    @property
    def kernel(self) -> Path:
        return self.root / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.root / "initrd.img"


def template_key(packages: list[str], agent_policy: str | None = None) -> str:
    """Equal keys, equal templates: what a cache of built templates is keyed by."""
    raw = "\n".join(
        [SUITE, STUB_SCRIPT, initramfs.INIT, *packages, *([agent_policy] if agent_policy else [])]
    )
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def check_name(name: str) -> str:
    if not _VALID_NAME.match(name):
        raise ConfigError(
            f"invalid template name {name!r}: use 1-32 lowercase letters, digits, - or _",
            op="template",
            context={"name": name},
        )
    return name


def check_mirror(mirror: str) -> str:
    """A URL apt can fetch from; never something mmdebstrap would read as an option."""
    if not re.match(r"^(https?|file)://[^\s]+$", mirror):
        raise ConfigError(
            f"invalid Debian mirror {mirror!r}: give an http(s):// or file:// URL, e.g. "
            f"{DEFAULT_MIRROR}",
            op="template_build",
            context={"mirror": mirror},
        )
    return mirror


def packages_for(extra: list[str] | None = None, options: list[str] | None = None) -> list[str]:
    """Every package a template of these choices installs (sorted, each once)."""
    wanted = [*BOOT_PACKAGES, *DESKTOP_PACKAGES]
    for option in options or []:
        if option not in OPTIONS:
            raise ConfigError(
                f"unknown template option {option!r}; choose from {', '.join(OPTIONS)}",
                op="template_build",
                context={"option": option},
            )
        wanted += OPTIONS[option]
    for package in extra or []:
        if not _PACKAGE.match(package):
            raise ConfigError(f"{package!r} is not a Debian package name", op="template_build")
        wanted.append(package)
    return sorted(set(wanted))


class TemplateStore:
    """The templates under ``root`` (``<home>/templates``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def list(self) -> builtins.list[TemplateManifest]:
        found = []
        for folder in sorted(self.root.glob("*/manifest.json")):
            try:
                found.append(TemplateManifest.model_validate_json(folder.read_bytes()))
            except (OSError, ValueError):
                continue  # a half-removed folder
        return found

    def get(self, name: str) -> Template:
        folder = self.root / check_name(name)
        try:
            manifest = TemplateManifest.model_validate_json((folder / "manifest.json").read_bytes())
        except FileNotFoundError:
            raise NotFound(
                f"no VM template {name!r}; build it with `hivecell template build {name}`",
                op="template",
                context={"name": name},
            ) from None
        return Template(folder, manifest)

    def remove(self, name: str) -> None:
        folder = self.root / check_name(name)
        if not folder.exists():
            raise NotFound(f"no VM template {name!r}", op="template_rm", context={"name": name})
        self._refuse_in_use(name, "remove")
        with self._lock(name):
            # rename first: a reader never sees a half-deleted template as a template
            doomed = self.root / f".rm-{name}-{os.getpid()}"
            folder.rename(doomed)
            shutil.rmtree(doomed)

    def build(
        self,
        name: str = DEFAULT_NAME,
        *,
        packages: builtins.list[str] | None = None,
        options: builtins.list[str] | None = None,
        mirror: str = DEFAULT_MIRROR,
        progress: Progress | None = None,
        reuse: bool = False,
        agent_policy: Path | None = None,
    ) -> Template:
        """Build (or rebuild) template ``name``; the old one stays usable until the new one
        is complete. ``reuse``: keep an existing one built from the same packages (a cache).
        ``agent_policy``: a TOML file of the guest's allow/block lists, checked here and
        installed as the image's /etc/hivecell/agent.toml."""
        check_name(name)
        check_mirror(mirror)
        rules = _policy_text(agent_policy)
        check_tools()
        self._refuse_in_use(name, "rebuild")
        wanted = packages_for(packages, options)
        say = progress or (lambda line: None)
        private_folder(self.root)
        with self._lock(name):
            if reuse:  # built meanwhile by whoever held the lock, from the same packages
                with contextlib.suppress(NotFound):
                    existing = self.get(name)
                    if existing.manifest.key == template_key(wanted, rules):
                        return existing
            scratch = self.root / f".build-{name}-{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                manifest = _build_into(scratch, name, wanted, mirror, say, rules)
                final = self.root / name
                if final.exists():
                    old = self.root / f".old-{name}-{os.getpid()}"
                    final.rename(old)
                    shutil.rmtree(old)
                shutil.rmtree(scratch / "rootfs", ignore_errors=True)
                scratch.rename(final)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        say(f"template {name} built in {manifest.build_seconds:.0f} s")
        return Template(self.root / name, manifest)

    def _refuse_in_use(self, name: str, what: str) -> None:
        """VM disks are overlays on the template's image: changing it under them corrupts
        them. VMs of the same home (``<home>/vms``) are checked."""
        users = []
        for meta in sorted((self.root.parent / "vms").glob("*/meta.json")):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(meta.read_text()).get("template") == name:
                    users.append(meta.parent.name)
        if users:
            raise ConfigError(
                f"cannot {what} template {name!r}: sandboxes {', '.join(users)} are "
                "copy-on-write overlays on it; destroy them first (hivecell sandbox rm ID)",
                op=f"template_{what}",
                context={"name": name, "sandboxes": users},
            )

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        private_folder(self.root)
        fd = os.open(self.root / f".lock-{name}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def check_tools() -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise ConfigError(
            f"building VM templates needs {', '.join(missing)}: "
            f"sudo apt-get install -y {' '.join(missing)} (hivecell doctor lists the VM tools)",
            op="template_build",
            context={"missing": missing},
        )
    if os.geteuid() != 0:
        raise ConfigError(
            "building a VM template needs root (mmdebstrap keeps the files' owners): "
            "run it with sudo",
            op="template_build",
        )


def _policy_text(path: Path | None) -> str | None:
    if path is None:
        return None
    from hivecell.guest import policy

    policy.load(path)  # refused here, not by a VM that will not boot
    return path.read_text()


def private_folder(folder: Path) -> None:
    """``folder`` made, or kept, 0700: QEMU drops to a uid of its own once it has opened its
    disks (vm.py); templates, warm states and VMs stay out of its reach only behind folders
    no other uid may enter, wherever the store or home lies (a shared cache folder's
    defaults are 0755)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    found = folder.stat()
    if found.st_mode & 0o077 and found.st_uid == os.geteuid():
        folder.chmod(found.st_mode & 0o700)


def install_policy(rootfs: Path, text: str) -> None:
    """Root's file, readable by the agent (uid 1000), not writable by it."""
    folder = rootfs / "etc" / "hivecell"
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = folder / "agent.toml"
    target.write_text(text)
    target.chmod(0o644)


def _build_into(
    scratch: Path,
    name: str,
    packages: list[str],
    mirror: str,
    say: Progress,
    agent_policy: str | None = None,
) -> TemplateManifest:
    started = time.monotonic()
    rootfs = scratch / "rootfs"
    scratch.mkdir(parents=True)
    say(f"installing {len(packages)} Debian packages with mmdebstrap (the longest step)")
    _run(
        [
            "mmdebstrap", "--variant=minbase", "--mode=root", f"--include={','.join(packages)}",
            "--aptopt=APT::Install-Recommends \"false\"",
            "--customize-hook=chroot \"$1\" useradd -m -u 1000 -U -s /bin/bash user",
            SUITE, str(rootfs), mirror,
        ],
        say,
    )  # fmt: skip
    _install_stub(rootfs)
    if agent_policy is not None:
        install_policy(rootfs, agent_policy)
    kernel = _take_kernel(rootfs, scratch)
    say("writing the disk image")
    disk = scratch / "disk.qcow2"
    _make_image(rootfs, scratch / "disk.raw", disk)
    manifest = TemplateManifest(
        name=name,
        suite=SUITE,
        packages=packages,
        kernel=kernel,
        image_sha256=_sha256(disk),
        image_bytes=disk.stat().st_size,
        build_seconds=round(time.monotonic() - started, 1),
        built_at=time.time(),
        key=template_key(packages, agent_policy),
        agent_policy=agent_policy,
    )
    (scratch / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    return manifest


def _install_stub(rootfs: Path) -> None:
    """The kernel's ``init=``: mounts the guest disk (the agent and its session scripts, see
    guestdisk.py) and hands over to its init. The agent lives on that second disk, not in
    the template, so a hivecell upgrade never needs a template rebuild."""
    stub = rootfs / STUB_INIT.lstrip("/")
    stub.write_text(STUB_SCRIPT)
    stub.chmod(0o755)
    (rootfs / "opt" / "hivecell").mkdir(parents=True, exist_ok=True)
    (rootfs / "etc" / "hostname").write_text("hivecell\n")


def _take_kernel(rootfs: Path, scratch: Path) -> str:
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise SandboxError("the template has no kernel (linux-image-cloud-amd64 did not install)")
    release = kernels[-1].name.removeprefix("vmlinuz-")
    shutil.copy2(kernels[-1], scratch / "vmlinuz")
    initramfs.build(rootfs, release, scratch / "initrd.img")  # not Debian's: see initramfs.py
    return release


def _make_image(rootfs: Path, raw: Path, disk: Path) -> None:
    used = sum(f.lstat().st_size for f in rootfs.rglob("*") if not f.is_symlink()) >> 20
    size_mb = int(used * 1.15) + FREE_SPACE_MB
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "hivecell", "-d", str(rootfs), str(raw), f"{size_mb}M"],
        check=True,
    )
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], check=True)
    raw.unlink()


def _run(argv: list[str], say: Progress) -> None:
    """Run a build step, passing its output lines on; its last lines go into the error."""
    tail: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            say(line)
            tail = [*tail[-19:], line]
    if proc.returncode != 0:
        raise SandboxError(
            f"{argv[0]} failed (exit {proc.returncode}):\n" + "\n".join(tail),
            op="template_build",
            context={"tool": argv[0], "code": proc.returncode},
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
