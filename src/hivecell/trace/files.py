"""Blocking file helpers for the trace writer; async code calls them through a worker thread."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

_CHUNK = 64 * 1024


def open_for_append(path: Path) -> tuple[BinaryIO, bool]:
    """Open ``path`` for appending records, first cutting off a partial last line left by a
    killed writer so new records never run into it; and whether the file was created (its
    folder then needs an fsync for the new entry to survive a crash)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    # Not a with-block: the handle outlives this call and TraceWriter.close() closes it.
    handle = open(path, "ab")  # noqa: SIM115
    cut_partial_line(handle)
    return handle, created


def cut_partial_line(handle: BinaryIO) -> None:
    with open(handle.name, "rb") as reader:
        end = reader.seek(0, os.SEEK_END)
        keep = _end_of_last_line(reader, end)
    if keep != end:
        handle.truncate(keep)


def _end_of_last_line(reader: BinaryIO, end: int) -> int:
    """Offset just past the last newline (0 if none) — where complete records end."""
    position = end
    while position > 0:
        start = max(0, position - _CHUNK)
        reader.seek(start)
        block = reader.read(position - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def append_visibly(handle: BinaryIO, data: bytes) -> None:
    """In the kernel's page cache when this returns: a killed process cannot lose it (a
    crash of the machine still can, until ``fsync``)."""
    handle.write(data)
    handle.flush()


def write_atomically(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    tmp.replace(path)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
