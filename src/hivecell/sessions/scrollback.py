"""A session's scrollback on disk, capped: ``scrollback.log`` holds what the terminal
printed; once it passes ``max_bytes`` its newest half is kept (from a line start) and the
rest dropped.

Offsets stay stable across a trim: an offset counts every byte the session ever printed.
``scrollback.base`` holds how many bytes were dropped, so file position = offset - base.
(A crash between a trim's rename and the base update leaves the base behind: a reader
replays some bytes twice, it never misses any.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from hivecell.sessions.spec import SCROLLBACK, write_private

BASE = "scrollback.base"
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
MIN_MAX_BYTES = 64 * 1024
_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def read_base(folder: Path) -> int:
    try:
        fd = os.open(folder / BASE, os.O_RDONLY | _FLAGS)
    except FileNotFoundError:
        return 0
    with os.fdopen(fd) as f:
        raw = f.read(32).strip()
    return int(raw) if raw.isdigit() else 0


class Scrollback:
    """The supervisor's writer (one per session: the supervisor is its only writer)."""

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = folder
        self.path = folder / SCROLLBACK
        self.max_bytes = max(max_bytes, MIN_MAX_BYTES)
        self.base = read_base(folder)
        self.file = self._open()

    def _open(self) -> BinaryIO:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _FLAGS, 0o600)
        f = os.fdopen(fd, "ab", buffering=0)
        f.seek(0, os.SEEK_END)
        return f

    def fileno(self) -> int:
        return self.file.fileno()

    def tell(self) -> int:
        """The offset after the last byte printed (bytes ever printed)."""
        return self.base + self.file.seek(0, os.SEEK_END)

    def write(self, data: bytes) -> None:
        self.file.write(data)
        if self.file.tell() > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        """Keep the newest half, from the first line start in it (a clean place for a
        terminal to start replaying)."""
        size = self.file.seek(0, os.SEEK_END)
        keep_from = size - self.max_bytes // 2
        with open(self.path, "rb") as f:
            f.seek(keep_from)
            kept = f.read()
        newline = kept.find(b"\n", 0, 64 * 1024)
        if newline >= 0:
            keep_from += newline + 1
            kept = kept[newline + 1 :]
        tmp = self.path.with_name(SCROLLBACK + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _FLAGS, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(kept)
        tmp.replace(self.path)
        self.file.close()
        self.file = self._open()
        self.base += keep_from
        write_private(self.folder / BASE, f"{self.base}\n")

    def start(self, offset: object, tail: object) -> int:
        """Where a replay starts: ``offset`` (no earlier than what is kept), else the last
        ``tail`` bytes, else everything kept."""
        end = self.tell()
        if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0:
            return max(min(offset, end), self.base)
        if isinstance(tail, int) and not isinstance(tail, bool) and tail >= 0:
            return max(end - tail, self.base)
        return self.base


def read_range(folder: Path, offset: int | None, tail: int) -> tuple[bytes, int]:
    """Bytes from ``offset`` (or the last ``tail``), at most ``tail`` of them, and the
    offset after them. Offsets below what is kept start at the oldest kept byte."""
    for attempt in range(3):  # a trim between reading the base and opening: read both again
        base = read_base(folder)
        fd = os.open(folder / SCROLLBACK, os.O_RDONLY | _FLAGS)
        if read_base(folder) == base or attempt == 2:
            break
        os.close(fd)
    with os.fdopen(fd, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        end = base + size
        start = min(offset, end) if offset is not None else max(0, end - tail)
        start = max(start, base)
        f.seek(start - base)
        data = f.read(min(end - start, tail))
    return data, start + len(data)
