"""The ZIP bundle of a task: its trace, screenshots, conversation, network log and outputs.

The outputs came from an untrusted sandbox. Even though the outbox copy did not follow links,
the bundle walks them again without trusting that: every directory and file is opened relative
to its parent's descriptor with ``O_NOFOLLOW``, so a symlink (planted, or swapped in later) is
never followed and never added. Only regular files go in, and the total is capped.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hivecell.errors import TooLarge
from hivecell.trace.export import export_markdown
from hivecell.trace.models import CONVERSATION_FILE, SCREENSHOTS_DIR, TRACE_FILE

# Trace files copied as they are when present. transfer.json is written by the agent service.
TRACE_FILES = (TRACE_FILE, CONVERSATION_FILE, "network.jsonl", "transfer.json")
OUTPUTS_DIR = "outputs"
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK  # NONBLOCK: a planted FIFO never hangs


class _Budget:
    """Uncompressed bytes left before the bundle is refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, size: int, name: str) -> None:
        self.left -= size
        if self.left < 0:
            raise TooLarge(
                f"the export is larger than {self.limit} bytes (at {name!r}); download the "
                "outputs one by one (GET /tasks/{id}/artifacts/NAME) or export format=json",
                op="export.zip",
                context={"limit": self.limit, "name": name},
            )


def write_bundle(
    trace_dir: Path,
    output_dir: Path | None,
    dest: BinaryIO,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> None:
    """Write the ZIP to ``dest`` (blocking: async callers use a worker thread)."""
    budget = _Budget(max_bytes)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        markdown = export_markdown(trace_dir).encode()  # links screenshots/ inside the zip
        budget.take(len(markdown), "trace.md")
        archive.writestr("trace.md", markdown)
        for name in TRACE_FILES:
            _add_file(archive, Path(trace_dir), name, name, budget)
        _add_tree(archive, Path(trace_dir) / SCREENSHOTS_DIR, SCREENSHOTS_DIR, budget)
        if output_dir is not None:
            _add_tree(archive, Path(output_dir), OUTPUTS_DIR, budget)


def _add_tree(archive: zipfile.ZipFile, root: Path, prefix: str, budget: _Budget) -> None:
    try:
        fd = os.open(root, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there, or the root itself is a link: add nothing
    try:
        for fd_parent, name, arcname in _walk(fd, prefix):
            _add_at(archive, fd_parent, name, arcname, budget)
    finally:
        os.close(fd)


def _walk(dir_fd: int, prefix: str) -> Iterator[tuple[int, str, str]]:
    """(parent fd, name, archive name) of each non-directory entry, never through a link."""
    for name in sorted(os.listdir(dir_fd)):
        arcname = f"{prefix}/{name}"
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # swapped for a link (ELOOP) or gone since listing
            try:
                yield from _walk(child, arcname)
            finally:
                os.close(child)
        elif stat.S_ISREG(mode):
            yield dir_fd, name, arcname


def _add_file(
    archive: zipfile.ZipFile, directory: Path, name: str, arcname: str, budget: _Budget
) -> None:
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError:
        return
    try:
        _add_at(archive, fd, name, arcname, budget)
    finally:
        os.close(fd)


def _add_at(
    archive: zipfile.ZipFile, dir_fd: int, name: str, arcname: str, budget: _Budget
) -> None:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return  # missing, or a link (ELOOP): never followed
    with os.fdopen(fd, "rb") as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            return  # a FIFO, device or socket: not an output
        budget.take(info.st_size, arcname)
        with archive.open(arcname, "w", force_zip64=True) as target:
            left = info.st_size  # what the budget counted: a file still growing is cut there
            while left > 0 and (chunk := source.read(min(_CHUNK, left))):
                left -= len(chunk)
                target.write(chunk)
