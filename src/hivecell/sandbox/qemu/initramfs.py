"""A template's initramfs: busybox, the two drivers the root disk needs, and a script.

Debian's generic initramfs (14 MB, every storage driver, udev) took ~2 s of a VM's boot
under emulation to unpack itself and run udev, only to load ``virtio_pci`` and
``virtio_blk`` (the cloud kernel has ext4 built in). This one is ~2 MB: its ``/init`` loads
those modules, mounts ``/dev/vda`` and hands over to the template's init stub. Written as a
``newc`` cpio archive (the kernel's own format) from the template's files.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hivecell.errors import SandboxError
from hivecell.sandbox.qemu.layout import STUB_INIT

MODULES = ("virtio_pci", "virtio_blk")  # what mounting /dev/vda needs; ext4 is built in
BUSYBOX = "bin/busybox"  # busybox-static's: it needs no library
INIT = f"""#!/bin/busybox sh
# hivecell's initramfs: load the root disk's drivers, mount it, hand over to the init stub.
bb=/bin/busybox
$bb mount -t devtmpfs -o nosuid devtmpfs /dev
for module in $($bb cat /modules); do
  $bb insmod "/lib/modules/$module" || echo "hivecell: cannot load $module"
done
tries=0
while [ ! -b /dev/vda ] && [ "$tries" -lt 400 ]; do $bb sleep 0.05; tries=$((tries + 1)); done
if ! $bb mount -t ext4 -o rw /dev/vda /root; then
  echo "hivecell: the root disk (/dev/vda) did not mount"
  $bb poweroff -f
fi
$bb mount --move /dev /root/dev
exec $bb switch_root /root {STUB_INIT}
"""
_FILE, _DIR, _CHAR = stat.S_IFREG, stat.S_IFDIR, stat.S_IFCHR


def build(rootfs: Path, release: str, target: Path) -> None:
    """``target``: the initramfs of kernel ``release`` from the template's ``rootfs``."""
    busybox = rootfs / BUSYBOX
    if not busybox.is_file():
        raise SandboxError(
            "the template has no static busybox (busybox-static did not install)",
            op="template_build",
        )
    modules = load_order(rootfs / "lib" / "modules" / release, MODULES)
    folders = ("bin", "dev", "proc", "root", "lib", "lib/modules")
    entries: list[tuple[str, int, bytes, int]] = [(name, _DIR | 0o755, b"", 0) for name in folders]
    entries.append(("dev/console", _CHAR | 0o600, b"", os.makedev(5, 1)))
    entries.append((BUSYBOX, _FILE | 0o755, busybox.read_bytes(), 0))
    for path in modules:
        entries.append((f"lib/modules/{path.name}", _FILE | 0o644, path.read_bytes(), 0))
    entries.append(("modules", _FILE | 0o644, "".join(f"{p.name}\n" for p in modules).encode(), 0))
    entries.append(("init", _FILE | 0o755, INIT.encode(), 0))
    target.write_bytes(cpio(entries))


def load_order(module_dir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The ``.ko`` files of ``wanted`` and what they need (``modules.dep``), each after its
    dependencies."""
    try:
        lines = (module_dir / "modules.dep").read_text().splitlines()
    except OSError as exc:
        raise SandboxError(f"the template's kernel has no modules.dep: {exc}") from exc
    needs: dict[str, list[str]] = {}
    for line in lines:
        module, _, deps = line.partition(":")
        needs[module] = deps.split()
    by_name = {Path(module).name.split(".")[0].replace("-", "_"): module for module in needs}
    ordered: list[str] = []

    def visit(module: str) -> None:
        if module in ordered:
            return
        for dep in needs.get(module, []):
            visit(dep)
        ordered.append(module)

    for name in wanted:
        if name not in by_name:
            raise SandboxError(f"the template's kernel has no module {name}")
        visit(by_name[name])
    for module in ordered:
        if not module.endswith(".ko"):  # busybox's insmod reads plain modules only
            raise SandboxError(f"the template's kernel module {module} is compressed")
    return [module_dir / module for module in ordered]


def cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A ``newc`` archive of (name, mode, data, rdev), owned by root."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev),
                  len(raw), 0)  # fmt: skip
        out += b"070701" + b"".join(b"%08x" % field for field in fields) + raw
        out += b"\0" * (-(110 + len(raw)) % 4)
        out += data + b"\0" * (-len(data) % 4)
    return bytes(out)
