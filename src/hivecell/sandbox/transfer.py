"""Copying files out of and into folders a sandbox can write, never following what it planted.

The box owns everything under its ``/shared``: between our listing and our copy it can swap
any file or folder for a symlink (to ``/etc``, to ``/``), a fifo, a socket or a hard link. So
no path is ever resolved more than one component at a time:

- every entry is opened relative to its parent's fd with ``O_PATH|O_NOFOLLOW`` (a symlink
  yields an fd to the link itself; a fifo or device is not opened for I/O) and ``fstat``'d;
  only regular files and folders are then upgraded to a readable fd through
  ``/proc/self/fd/N``, which names that inode, not a path, so a swap after the ``fstat``
  changes nothing we read;
- symlinks, fifos, sockets, devices and folders on another file system are skipped and
  reported;
- copies never keep setuid, setgid or sticky bits, nor group or world write;
- a file with several hard links (``st_nlink > 1``) is copied by content like any other: its
  fd is an inode the box could already read inside its own mount (``link(2)`` cannot cross
  mounts, and the kernel's protected_hardlinks refuses files the box does not own), and each
  link counts against the caps, so linking one big file many times is bounded too;
- caps on bytes and files end the copy early; the report says what was left out and why. The
  walk also looks at no more than ``2 * max_files + 1000`` entries, so a box full of links or
  empty folders cannot keep the host busy, and descends at most ``MAX_DEPTH`` folders.

Destinations are created with ``O_EXCL|O_NOFOLLOW`` (files) and ``mkdirat`` + ``O_NOFOLLOW``
(folders) relative to a folder fd, so a link waiting there is replaced, never written through.

Stdlib, pydantic and our errors only; synchronous (callers run it in a worker thread).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hivecell.errors import NotFound, PathDenied

DEFAULT_MAX_BYTES = 1024**3
DEFAULT_MAX_FILES = 10_000
MAX_DEPTH = 64
MAX_LISTED = 200  # skipped entries listed by name; the rest are only counted
CHUNK = 1024 * 1024
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

SkipReason = Literal[
    "symlink",
    "fifo",
    "socket",
    "device",
    "other_mount",
    "too_deep",
    "byte_cap",
    "file_cap",
    "entry_cap",
    "exists",
    "error",
]


class TransferLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=0, description="total bytes copied")
    max_files: int = Field(DEFAULT_MAX_FILES, ge=0, description="files copied")

    @property
    def max_entries(self) -> int:
        return 2 * self.max_files + 1000


class Skipped(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="relative to the folder copied; '.' is the folder itself")
    reason: SkipReason
    detail: str = ""


class TransferReport(BaseModel):
    """What one copy did: the task service stores it in the trace and ``transfer.json``."""

    model_config = ConfigDict(extra="forbid")

    copied: list[str] = Field(default_factory=list, description="relative paths copied")
    bytes: int = 0
    skipped: list[Skipped] = Field(default_factory=list, description=f"first {MAX_LISTED}")
    skipped_count: int = Field(0, description="all entries left out, listed or not")
    truncated: bool = Field(False, description="a cap ended the copy before everything fitted")
    stripped: list[str] = Field(
        default_factory=list, description="copies whose setuid/setgid/sticky bits were removed"
    )

    def summary(self) -> str:
        text = f"{len(self.copied)} file(s), {self.bytes} bytes copied"
        if self.skipped_count:
            reasons = sorted({s.reason for s in self.skipped})
            text += f"; {self.skipped_count} left out ({', '.join(reasons)})"
        return text + ("; stopped at a cap" if self.truncated else "")


def copy_out(
    trusted: Path, untrusted: str, dest: Path, limits: TransferLimits | None = None
) -> TransferReport:
    """Copy the tree at ``trusted/untrusted`` into ``dest`` (made if missing).

    ``trusted`` is a host folder the box cannot replace (its ``shared`` folder); every
    component of ``untrusted`` (e.g. ``"outbox"``) and below is opened no-follow. A planted
    link there is reported as skipped ``"."`` and nothing is copied.
    """
    walk = _Walk(limits or TransferLimits(), _output_mode)
    dest.mkdir(parents=True, exist_ok=True)
    with _fd(os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as dst:
        with _fd(os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as base:
            src = walk.open_dir_chain(base, untrusted)
        if src is not None:
            with _fd(src):
                walk.root_dev = os.fstat(src).st_dev
                walk.tree(src, dst, "", 0)
    return walk.report


def copy_in(
    files: Sequence[Path], trusted: Path, untrusted: str, limits: TransferLimits | None = None
) -> TransferReport:
    """Copy host files (chosen by a person, so their own path is followed) into the folder
    ``trusted/untrusted`` that the box may have replaced; copies are readable by the box.

    Raises ``NotFound`` for a missing source and ``PathDenied`` when the box turned the
    destination folder into something else (nothing is written then).
    """
    walk = _Walk(limits or TransferLimits(), _inbox_mode)
    for source in files:
        if not source.is_file():
            raise NotFound(
                f"input file {source} does not exist", op="copy_in", context={"file": str(source)}
            )
    with _fd(os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as base:
        dst = _inbox_fd(base, untrusted)
    with _fd(dst):
        for source in files:
            with _fd(os.open(source, os.O_PATH | os.O_CLOEXEC)) as fd:
                walk.entry_fd(fd, dst, source.name, source.name, 0)
    return walk.report


def copy_tree_in(
    source: Path,
    trusted: Path,
    untrusted: str,
    owner: int | None = None,
    limits: TransferLimits | None = None,
) -> TransferReport:
    """Copy the host folder ``source`` (ours: made by earlier ``copy_out`` calls) over the
    folder ``trusted/untrusted`` of a box, replacing files of the same name and never writing
    through what the box planted. ``owner``: the box's host uid, given the copies so the box
    may edit them in place."""
    walk = _Walk(limits or TransferLimits(), _inbox_mode, owner=owner)
    with _fd(os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as base:
        dst = _inbox_fd(base, untrusted)
    with _fd(dst), _fd(os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as src:
        if owner is not None:
            os.fchown(dst, owner, owner)
        walk.root_dev = os.fstat(src).st_dev
        walk.tree(src, dst, "", 0)
    return walk.report


def ensure_folder(trusted: Path, name: str, owner: int | None = None) -> None:
    """Make ``trusted/name`` a real folder again: a link or file the box left there (while it
    could write ``trusted``) is removed, never followed. For a stopped box, before it boots.
    ``owner``: the box's host uid (and gid), which must own the folder it writes."""
    with _fd(os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as base:
        fd = _make_dir(base, name)
        if fd is None:
            os.unlink(name, dir_fd=base)
            fd = _make_dir(base, name)
        if fd is None:
            raise PathDenied(f"{trusted / name} keeps coming back as a non-folder", op="start")
        try:
            if owner is not None:
                os.fchown(fd, owner, owner)  # the fd, so never what a link points at
        finally:
            os.close(fd)


class _Walk:
    """One copy's state: the caps, what was copied and what was left out."""

    def __init__(
        self, limits: TransferLimits, mode: Callable[[int], int], owner: int | None = None
    ) -> None:
        self.limits = limits
        self.mode = mode  # the copy's permissions, from the source's st_mode
        self.owner = owner  # uid and gid given to every copy (None: ours)
        self.report = TransferReport()
        self.entries = 0
        self.root_dev: int | None = None
        self.stopped = False  # a file or entry cap was reached: nothing more is looked at

    # --- walking the source ---------------------------------------------------------------
    def open_dir_chain(self, base: int, untrusted: str) -> int | None:
        """An fd of ``base/untrusted`` opened one no-follow component at a time, or None."""
        parts = PurePosixPath(untrusted).parts
        if not parts or any(part in ("/", ".", "..") for part in parts):
            raise PathDenied(f"{untrusted!r} must be a relative path going down", op="copy_out")
        current = os.dup(base)
        for part in parts:
            try:
                with _fd(os.open(part, _PATH, dir_fd=current)) as fd:
                    kind = _kind(os.fstat(fd).st_mode)
                    nxt = _reopen(fd, os.O_RDONLY | os.O_DIRECTORY) if kind == "dir" else None
            except OSError as exc:
                os.close(current)
                self.skip(".", "error", f"{untrusted}: {exc.strerror}")
                return None
            os.close(current)
            if nxt is None:
                self.skip(".", _reason(kind), f"{untrusted} is a {kind}, not a folder")
                return None
            current = nxt
        return current

    def tree(self, src: int, dst: int, prefix: str, depth: int) -> None:
        for name in self._names(src):
            if self.stopped:
                return
            path = f"{prefix}/{name}" if prefix else name
            self.entries += 1
            if self.entries > self.limits.max_entries:
                self._stop(path, "entry_cap", f"looked at {self.limits.max_entries} entries")
                return
            try:
                with _fd(os.open(name, _PATH, dir_fd=src)) as fd:
                    self.entry_fd(fd, dst, name, path, depth)
            except OSError as exc:
                self.skip(path, "error", exc.strerror or str(exc))

    def _names(self, src: int) -> list[str]:
        # Bounded read: a folder with millions of names is not listed whole.
        budget = self.limits.max_entries - self.entries + 1
        with os.scandir(src) as listing:
            return sorted(entry.name for entry in islice(listing, max(budget, 0)))

    def entry_fd(self, fd: int, dst: int, name: str, path: str, depth: int) -> None:
        """Copy what the O_PATH ``fd`` names, judged by its own fstat, never by name."""
        st = os.fstat(fd)
        kind = _kind(st.st_mode)
        if kind == "dir":
            self._dir(fd, st, dst, name, path, depth)
        elif kind == "file":
            self._file(fd, st, dst, name, path)
        else:
            self.skip(path, _reason(kind))

    def _dir(self, fd: int, st: os.stat_result, dst: int, name: str, path: str, depth: int) -> None:
        if self.root_dev is not None and st.st_dev != self.root_dev:
            self.skip(path, "other_mount")
        elif depth >= MAX_DEPTH:
            self.skip(path, "too_deep", f"more than {MAX_DEPTH} folders deep")
        else:
            with _fd(_reopen(fd, os.O_RDONLY | os.O_DIRECTORY)) as src:
                sub = _make_dir(dst, name)
                if sub is None:
                    self.skip(path, "exists", "a file of that name is already there")
                    return
                with _fd(sub):
                    if self.owner is not None:
                        os.fchown(sub, self.owner, self.owner)
                    self.tree(src, sub, path, depth + 1)

    def _file(self, fd: int, st: os.stat_result, dst: int, name: str, path: str) -> None:
        report = self.report
        if len(report.copied) >= self.limits.max_files:
            self._stop(path, "file_cap", f"{self.limits.max_files} files copied")
            return
        if report.bytes + st.st_size > self.limits.max_bytes:
            report.truncated = True  # later, smaller files may still fit: keep walking
            self.skip(path, "byte_cap", f"{st.st_size} bytes would pass {self.limits.max_bytes}")
            return
        with _fd(_reopen(fd, os.O_RDONLY)) as src:
            out = _create_file(dst, name)
            if out is None:
                self.skip(path, "exists", "a folder of that name is already there")
                return
            with _fd(out):
                copied = _copy_bytes(src, out, st.st_size)
                os.fchmod(out, self.mode(st.st_mode))
                if self.owner is not None:
                    os.fchown(out, self.owner, self.owner)
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        report.bytes += copied
        report.copied.append(_shown(path))
        if st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX):
            report.stripped.append(_shown(path))

    # --- reporting --------------------------------------------------------------------------
    def _stop(self, path: str, reason: SkipReason, detail: str) -> None:
        self.stopped = True
        self.report.truncated = True
        self.skip(path, reason, f"{detail}; this and later entries were not copied")

    def skip(self, path: str, reason: SkipReason, detail: str = "") -> None:
        self.report.skipped_count += 1
        if len(self.report.skipped) < MAX_LISTED or self.stopped:  # the cap itself is listed
            self.report.skipped.append(Skipped(path=_shown(path), reason=reason, detail=detail))


def _output_mode(mode: int) -> int:
    """The box's permissions minus setuid/setgid/sticky and group/world write; ours to read."""
    return (stat.S_IMODE(mode) & 0o755) | 0o600


def _inbox_mode(mode: int) -> int:
    """Readable (and executable if it was) by the box, whichever host uid it runs as."""
    return 0o755 if mode & stat.S_IXUSR else 0o644


def _inbox_fd(base: int, untrusted: str) -> int:
    """The destination folder's fd; made if the box removed it, refused if it was replaced."""
    name = PurePosixPath(untrusted)
    if len(name.parts) != 1:
        raise PathDenied(f"{untrusted!r} must be one folder name", op="copy_in")
    fd = _make_dir(base, untrusted)
    if fd is None:
        raise PathDenied(
            f"the sandbox replaced /shared/{untrusted} with something that is not a folder "
            "(a link?); no input file was copied. Use a fresh sandbox for this task.",
            op="copy_in",
            context={"folder": untrusted},
        )
    return fd


def _make_dir(parent: int, name: str) -> int | None:
    """An fd of folder ``name`` in ``parent``, made if missing; None if a non-folder is there."""
    with suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    try:
        return os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
        )
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return None
        raise


def _create_file(parent: int, name: str) -> int | None:
    """A new, empty file ``name`` in ``parent``; whatever was there (a link too) is replaced."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(3):  # a writable destination may get the name back between unlink and open
        try:
            return os.open(name, flags, 0o600, dir_fd=parent)
        except FileExistsError:
            try:
                os.unlink(name, dir_fd=parent)  # unlinkat removes a link, never its target
            except IsADirectoryError:
                return None
            except FileNotFoundError:
                pass
    return None


def _copy_bytes(src: int, out: int, size: int) -> int:
    """At most ``size`` bytes (the size we checked against the cap), even if the file grew."""
    done = 0
    while done < size:
        chunk = os.read(src, min(CHUNK, size - done))
        if not chunk:
            break
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view) :]
        done += len(chunk)
    return done


def _reopen(fd: int, flags: int) -> int:
    """Upgrade an O_PATH fd to an open file of the same inode (the path is never looked up)."""
    return os.open(f"/proc/self/fd/{fd}", flags | os.O_CLOEXEC)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def _reason(kind: str) -> SkipReason:
    reasons: dict[str, SkipReason] = {
        "symlink": "symlink",
        "fifo": "fifo",
        "socket": "socket",
        "device": "device",
    }
    return reasons.get(kind, "error")


def _shown(path: str) -> str:
    """File names are bytes; reports are JSON text."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)
