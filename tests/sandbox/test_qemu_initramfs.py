"""The template's own initramfs (hivecell/sandbox/qemu/initramfs.py): its archive read back
as the kernel reads it, its modules in dependency order, and clear errors for a kernel it
cannot serve. That it boots is every VM test's (the CI template carries it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hivecell.errors import SandboxError
from hivecell.sandbox.qemu import initramfs


def _read_newc(archive: bytes) -> dict[str, tuple[int, bytes, int]]:
    """name -> (mode, data, rdev), parsed independently of the writer (4-byte alignment of
    header+name and of data, as the kernel's unpacker expects)."""
    found = {}
    at = 0
    while True:
        assert archive[at : at + 6] == b"070701", at
        fields = [int(archive[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = fields[6], fields[11]
        name_at = at + 110
        name = archive[name_at : name_at + namesize - 1].decode()
        data_at = (name_at + namesize + 3) & ~3
        data = archive[data_at : data_at + size]
        at = (data_at + size + 3) & ~3
        if name == "TRAILER!!!":
            assert at == len(archive)
            return found
        found[name] = (fields[1], data, os.makedev(fields[9], fields[10]))


def _kernel_tree(root: Path, compressed: bool = False) -> Path:
    modules = root / "lib" / "modules" / "6.1.0-test"
    ext = ".ko.xz" if compressed else ".ko"
    deps = {
        f"kernel/drivers/block/virtio_blk{ext}": ["virtio_ring", "virtio"],
        f"kernel/drivers/virtio/virtio_pci{ext}": [
            "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring", "virtio"
        ],
        f"kernel/drivers/virtio/virtio_pci_legacy_dev{ext}": [],
        f"kernel/drivers/virtio/virtio_pci_modern_dev{ext}": [],
        f"kernel/drivers/virtio/virtio_ring{ext}": [],
        f"kernel/drivers/virtio/virtio{ext}": [],
        f"kernel/drivers/net/virtio-net{ext}": ["virtio_ring", "virtio"],
    }  # fmt: skip
    lines = []
    for module, needs in deps.items():
        path = modules / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ELF " + module.encode())
        lines.append(f"{module}: " + " ".join(f"kernel/drivers/virtio/{n}{ext}" for n in needs))
    (modules / "modules.dep").write_text("\n".join(lines) + "\n")
    (root / "bin").mkdir()
    (root / "bin" / "busybox").write_bytes(b"\x7fELF static busybox")
    return modules


def test_the_archive_holds_busybox_the_drivers_in_order_and_the_init(tmp_path: Path) -> None:
    _kernel_tree(tmp_path)
    target = tmp_path / "initrd.img"
    initramfs.build(tmp_path, "6.1.0-test", target)
    files = _read_newc(target.read_bytes())
    order = files["modules"][1].decode().split()
    assert order[-1] == "virtio_blk.ko" and order[-2] == "virtio_pci.ko"
    for needed in ("virtio.ko", "virtio_ring.ko", "virtio_pci_modern_dev.ko"):
        assert order.index(needed) < order.index("virtio_pci.ko")
    assert "virtio-net.ko" not in order  # only what mounting the root disk needs
    for name in order:
        mode, data, _ = files[f"lib/modules/{name}"]
        assert stat.S_ISREG(mode) and data.startswith(b"ELF ")
    mode, init, _ = files["init"]
    assert mode & 0o111 and init.startswith(b"#!/bin/busybox sh")
    assert b"switch_root /root /sbin/hivecell-init" in init
    assert files["bin/busybox"][1] == b"\x7fELF static busybox"
    mode, _, rdev = files["dev/console"]  # the kernel opens it before /init runs
    assert stat.S_ISCHR(mode) and (os.major(rdev), os.minor(rdev)) == (5, 1)
    assert all(stat.S_ISDIR(files[d][0]) for d in ("dev", "proc", "root", "lib/modules"))


def test_a_kernel_it_cannot_serve_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match=r"no modules\.dep"):
        initramfs.load_order(tmp_path, ("virtio_blk",))
    modules = _kernel_tree(tmp_path / "plain")
    with pytest.raises(SandboxError, match="no module virtio_scsi"):
        initramfs.load_order(modules, ("virtio_scsi",))
    compressed = _kernel_tree(tmp_path / "xz", compressed=True)
    with pytest.raises(SandboxError, match="is compressed"):
        initramfs.load_order(compressed, ("virtio_blk",))
    (tmp_path / "plain" / "bin" / "busybox").unlink()
    with pytest.raises(SandboxError, match="busybox-static"):
        initramfs.build(tmp_path / "plain", "6.1.0-test", tmp_path / "x.img")
