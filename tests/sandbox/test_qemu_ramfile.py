"""A VM's RAM saved beside its state (hivecell/sandbox/qemu/ramfile.py), on real memfds and
files: what is saved comes back byte for byte, zeros stay holes on both sides, and a file
that is not what it should be is refused with its reason."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from hivecell.errors import SandboxError
from hivecell.sandbox.qemu import ramfile

MB = 1 << 20


def _resident(fd: int) -> int:
    """Bytes of ``fd`` (a memfd) that hold pages: what a VM's RAM costs the host."""
    return os.fstat(fd).st_blocks * 512


def _guest_ram(memory_mb: int) -> int:
    """A memfd written as a guest would: scattered pages, a page of zeros written over
    data, and a large untouched part."""
    fd = ramfile.make(memory_mb)
    with mmap.mmap(fd, memory_mb * MB) as ram:
        ram[0:4096] = b"\x01" * 4096  # the first page
        ram[3 * MB + 17 : 3 * MB + 23] = b"kernel"  # inside a run
        ram[5 * MB : 5 * MB + 128 * 1024] = bytes(128 * 1024)  # touched, but zeros
        ram[memory_mb * MB - 4096 :] = b"\xff" * 4096  # the last page
    return fd


def test_a_saved_ram_comes_back_byte_for_byte_and_zeros_stay_holes(tmp_path: Path) -> None:
    source = _guest_ram(16)
    saved = tmp_path / "state.ram"
    written = ramfile.dump(source, saved)
    assert written == 3 * 4096  # three pages hold data; the zeros were left out
    assert saved.stat().st_size == 16 * MB  # the RAM's size, as a sparse file
    assert saved.stat().st_blocks * 512 <= 3 * ramfile.PAGE_RUN  # ext4 blocks, not 16 MB

    target = ramfile.make(16)
    ramfile.fill(target, saved)
    # the new VM holds only the saved data: its untouched RAM costs the host nothing (read
    # first: reading shared memory allocates it)
    assert _resident(target) == 3 * 4096
    with mmap.mmap(source, 16 * MB) as one, mmap.mmap(target, 16 * MB) as two:
        assert one[:] == two[:]
    for fd in (source, target):
        os.close(fd)


def test_a_ram_file_of_another_size_or_a_link_is_refused(tmp_path: Path) -> None:
    source = _guest_ram(8)
    saved = tmp_path / "state.ram"
    ramfile.dump(source, saved)
    target = ramfile.make(16)
    with pytest.raises(SandboxError, match="of a VM with 8 MiB, not 16"):
        ramfile.fill(target, saved)
    # a link planted where the state is (a restore never follows one)
    link = tmp_path / "linked.ram"
    link.symlink_to(saved)
    with pytest.raises(SandboxError, match="cannot be read"):
        ramfile.fill(ramfile.make(8), link)
    with pytest.raises(SandboxError, match="cannot be read"):
        ramfile.fill(ramfile.make(8), tmp_path / "missing.ram")
    # nor does a save write through one
    target_of_link = tmp_path / "elsewhere"
    (tmp_path / "planted.ram").symlink_to(target_of_link)
    with pytest.raises(OSError):
        ramfile.dump(source, tmp_path / "planted.ram")
    assert not target_of_link.exists()


def test_the_ram_file_goes_beside_its_state() -> None:
    assert ramfile.path_for(Path("/v/snapshots/a/state.bin")) == Path("/v/snapshots/a/state.ram")
    assert ramfile.path_for(Path("/v/incoming.bin")) == Path("/v/incoming.ram")
