"""A VM's RAM as a file of its own beside its saved state: a restore costs what the guest
used, not what it was given.

The supervisor makes the VM's RAM itself (a memfd QEMU maps shared, as virtiofsd needs) and
keeps a descriptor of it. A saved state is then two files: ``state.bin``, QEMU's migration
stream with the ``x-ignore-shared`` capability (devices only: the shared RAM is left out),
and ``state.ram``, the RAM as a sparse file (pages of zeros are holes). A restore fills a
new memfd with the file's data before QEMU starts, and loads only the devices.

Why not QEMU's own stream for the RAM: loading it makes the whole RAM resident and takes
seconds (QEMU reads every page the stream marks as zero, and a read of shared memory
allocates it); here a 4 GiB desktop VM restores in what copying its few hundred MB costs.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

from hivecell.errors import SandboxError

CHUNK = 1 << 20  # read and written per step
PAGE_RUN = 64 << 10  # zero runs this long (and aligned) become holes in the file


def path_for(state: Path) -> Path:
    """The RAM file of the saved state ``state``."""
    return state.with_suffix(".ram")


def make(memory_mb: int) -> int:
    """A new VM's RAM, all zeros (a hole), not inherited by the supervisor's other children;
    QEMU gets it as ``pass_fds``."""
    fd = os.memfd_create("hivecell-ram", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, memory_mb << 20)
    except OSError:
        os.close(fd)
        raise
    return fd


def dump(ram: int, target: Path) -> int:
    """Write the RAM of a paused VM into ``target`` (sparse); returns the bytes of data."""
    size = os.fstat(ram).st_size
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    written = 0
    zero = bytes(PAGE_RUN)
    try:
        with mmap.mmap(ram, size, prot=mmap.PROT_READ) as view:
            for start, end in _extents(ram, size):
                for offset in range(start, end, PAGE_RUN):
                    piece = view[offset : min(offset + PAGE_RUN, end)]
                    if piece != zero[: len(piece)]:
                        os.pwrite(out, piece, offset)
                        written += len(piece)
        os.ftruncate(out, size)
    finally:
        os.close(out)
    return written


def fill(ram: int, source: Path) -> None:
    """Copy the saved RAM ``source`` into the new VM's ``ram`` (of the same size): only its
    data, in the kernel (``sendfile``); the holes stay holes."""
    size = os.fstat(ram).st_size
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SandboxError(
            f"the saved RAM {source} cannot be read: {exc.strerror}", op="start"
        ) from exc
    try:
        saved = os.fstat(fd).st_size
        if saved != size:
            raise SandboxError(
                f"the saved RAM {source} is of a VM with {saved >> 20} MiB, not {size >> 20}",
                op="start",
                context={"saved_mb": saved >> 20, "memory_mb": size >> 20},
            )
        for start, end in _extents(fd, size):
            os.lseek(ram, start, os.SEEK_SET)
            offset = start
            while offset < end:
                sent = os.sendfile(ram, fd, offset, min(end - offset, 64 * CHUNK))
                if sent == 0:
                    raise SandboxError(f"the saved RAM {source} ended early", op="start")
                offset += sent
    finally:
        os.close(fd)


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The (start, end) of each run of data in ``fd``: tmpfs and ext4 know their holes."""
    found = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from here
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        found.append((start, end))
        offset = end
    return found
