"""The guest disk: hivecell's guest agent, its Python packages and the VM's init, for VMs.

A local box runs the guest agent on the host's interpreter (bound in). A VM cannot see the
host, so a template carries its own copy: Debian's python3 (3.11 in bookworm) runs the same
package and the same installed distributions, copied file by file from this environment's
``site-packages`` (their wheels are built for CPython 3.11, which is why hivecell must run on
3.11 to build a template). Copying what is installed needs no network and gives the VM the
exact versions the host was tested with.

They go on a small read-only ext4 disk of their own (``/dev/vdb``, mounted on
``/opt/hivecell`` by the template's init stub), built in a second from this hivecell and
cached by its version: a template never needs rebuilding because hivecell changed, and a VM
always runs the agent of the host that started it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

import hivecell
from hivecell.errors import ConfigError, SandboxError

GUEST_PYTHON = (3, 11)  # Debian 12's python3
# What the guest agent imports (guest/, protocol/); their dependencies come along.
GUEST_DISTRIBUTIONS = ("anyio", "pydantic", "python-xlib", "mss", "pillow", "jeepney")
# The parts of hivecell the guest runs; their hash is the guest agent's version.
GUEST_SOURCES = ("__init__.py", "errors.py", "guest", "protocol", "sandbox/qemu/vmfiles")
VM_SCRIPTS = ("init", "session")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def check_python() -> None:
    if sys.version_info[:2] != GUEST_PYTHON:
        want = ".".join(map(str, GUEST_PYTHON))
        raise ConfigError(
            f"VM templates run the guest agent on Debian 12's Python {want}, and copy this "
            f"environment's packages into it; hivecell runs on {sys.version.split()[0]} here. "
            f"Run hivecell on Python {want} (uv python pin {want}) to build templates",
            op="template_build",
            context={"python": sys.version.split()[0], "needs": want},
        )


def distributions(roots: tuple[str, ...] = GUEST_DISTRIBUTIONS) -> list[metadata.Distribution]:
    """``roots`` and everything they require (extras excluded), each once."""
    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _normal(todo.pop())
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as exc:
            raise ConfigError(
                f"the guest agent needs the Python package {name!r}, which is not installed "
                "here; run `uv sync`",
                op="template_build",
                context={"package": name},
            ) from exc
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return sorted(seen.values(), key=lambda d: _normal(d.metadata["Name"]))


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def copy_distributions(dists: list[metadata.Distribution], dest: Path) -> list[str]:
    """Copy each distribution's installed files into ``dest`` (a site-packages folder);
    returns ``name==version`` for each. Files outside site-packages (scripts) are skipped."""
    copied = []
    for dist in dists:
        base = Path(str(dist.locate_file(""))).resolve()
        for entry in dist.files or []:
            source = Path(str(dist.locate_file(entry))).resolve()
            if base not in source.parents or "__pycache__" in source.parts:
                continue
            target = dest / source.relative_to(base)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        copied.append(f"{dist.metadata['Name']}=={dist.version}")
    return copied


def copy_package(dest: Path) -> None:
    """hivecell's own package (all of it: small, and the guest imports across it lazily)."""
    source = Path(hivecell.__file__).resolve().parent
    shutil.copytree(
        source, dest / "hivecell", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )


@functools.cache  # the sources do not change under a running process
def guest_version() -> str:
    """A hash of the guest agent's sources: equal on host and VM iff the VM's template was
    built from this hivecell."""
    root = Path(hivecell.__file__).resolve().parent
    digest = hashlib.sha256()
    for name in GUEST_SOURCES:
        path = root / name
        files = (
            sorted(f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
            if path.is_dir()
            else [path]
        )
        for file in files:
            digest.update(str(file.relative_to(root)).encode() + b"\0")
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def guest_disk(cache_dir: Path) -> Path:
    """The guest disk image of this hivecell (built once per version, under a lock)."""
    check_python()
    version = guest_version()
    image = cache_dir / f"guest-{version}.img"
    if image.exists():
        return image
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_dir / ".guest-disk.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not image.exists():  # built by whoever held the lock before us
            _build_disk(image, version)
    finally:
        os.close(fd)
    return image


def _build_disk(image: Path, version: str) -> None:
    staging = image.with_name(f".staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    tmp = image.with_name(f".{image.name}.{os.getpid()}.tmp")
    try:
        copy_package(staging / "src")
        copy_distributions(distributions(), staging / "site-packages")
        for script in VM_SCRIPTS:
            source = resources.files("hivecell.sandbox.qemu.vmfiles").joinpath(script)
            (staging / script).write_bytes(source.read_bytes())
            (staging / script).chmod(0o755)
        (staging / "guest-version").write_text(version + "\n")
        # The disk is read-only in the VM: compile here, recording the VM's paths.
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "-j", "0", "-s", str(staging),
             "-p", "/opt/hivecell", str(staging)],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        size_mb = _tree_mb(staging) * 2 + 16
        # Its chatter ("Creating regular file ...") must not reach our stdout: it is a
        # CLI's output (e.g. ``sandbox create --json``) when the first VM builds this disk.
        made = subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-L", "hivecell-guest", "-d", str(staging), str(tmp),
             f"{size_mb}M"],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if made.returncode != 0:
            raise SandboxError(
                f"mkfs.ext4 could not make the guest disk {image}: "
                f"{(made.stderr or made.stdout).strip()}",
                op="create",
            )
        tmp.replace(image)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        tmp.unlink(missing_ok=True)


def _tree_mb(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) >> 20
