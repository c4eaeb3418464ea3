"""Guest tools: read, write, list, move, delete and stat files inside the allowed roots.

Every path goes through ``hivecell.guest.paths.resolve`` and the handlers act only on the
path it returns. Reading, writing and listing follow symlinks (as long as the target is
inside the roots); ``stat_file``, ``delete_file`` and ``move_file`` act on a symlink
itself, never on its target. Each handler runs its blocking work in a worker thread.

Conventions:

* ``read_file``: ``size`` is the whole file's size; ``truncated`` means bytes follow the
  returned span (continue at ``offset`` + the span's byte length). In text mode a span that
  would end inside a multi-byte character ends before it instead.
* ``write_file``: ``size`` is the file's size after the write; ``overwrite`` replaces the
  file atomically and keeps its permission bits.
* ``list_directory``: directories first, then everything else, each by name (code point
  order); names starting with "." only with ``show_hidden``.
* ``stat_file``: ``mode`` is the permission bits in octal, e.g. "0644".
* ``move_file``: ``destination`` is the new path itself, not a folder to move into.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hivecell.errors import InvalidParams, NotFound, PathDenied, TooLarge, ToolFailed
from hivecell.guest.context import GuestConfig
from hivecell.guest.dispatch import Router
from hivecell.guest.paths import holds_root, resolve
from hivecell.protocol import methods as m

router = Router()


# --- errors ------------------------------------------------------------------------------
@contextlib.contextmanager
def _os_errors(op: str, raw: str) -> Iterator[None]:
    """Turn OSError into typed errors that name the path the caller gave."""
    ctx = {"path": raw}
    try:
        yield
    except FileNotFoundError:
        raise NotFound(f"{raw!r} does not exist", op=op, context=ctx) from None
    except IsADirectoryError:
        raise ToolFailed(
            f"{raw!r} is a directory (list_directory shows its contents)", op=op, context=ctx
        ) from None
    except NotADirectoryError:
        raise ToolFailed(
            f"{raw!r}: a component of the path is not a directory", op=op, context=ctx
        ) from None
    except OSError as exc:
        raise ToolFailed(f"{raw!r}: {exc.strerror or exc}", op=op, context=ctx) from None


# --- read --------------------------------------------------------------------------------
@router.threaded("read_file")
def _read(p: m.ReadFileParams, config: GuestConfig) -> m.ReadFileResult:
    path = resolve(p.path, config.roots, op="read_file")
    with _os_errors("read_file", p.path), _open_regular(path, p.path) as fh:
        size = os.fstat(fh.fileno()).st_size
        want = _read_span(p, size, config.max_file_bytes)
        fh.seek(p.offset)
        data = fh.read(want)
    at_eof = p.offset + len(data) >= size
    content, used = _as_text(data, p, at_eof) if p.encoding == "text" else _as_base64(data)
    return m.ReadFileResult(
        path=str(path),
        encoding=p.encoding,
        content=content,
        size=size,
        truncated=p.offset + used < size,
    )


def _open_regular(path: Path, raw: str) -> BinaryIO:
    # O_NONBLOCK: opening a FIFO must not hang the worker thread waiting for a writer
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.fdopen(fd, "rb")
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    raise ToolFailed(f"{raw!r} is not a regular file", op="read_file", context={"path": raw})


def _read_span(p: m.ReadFileParams, size: int, limit: int) -> int:
    remaining = max(size - p.offset, 0)
    want = remaining if p.length is None else min(p.length, remaining)
    if want <= limit:
        return want
    raise TooLarge(
        f"{p.path!r} is {size} bytes; reading {want} bytes from offset {p.offset} exceeds the "
        f"{limit}-byte limit; read it in parts with `offset` and `length` (length <= {limit})",
        op="read_file",
        context={"path": p.path, "size": size, "limit": limit, "offset": p.offset},
    )


def _as_text(data: bytes, p: m.ReadFileParams, at_eof: bool) -> tuple[str, int]:
    try:
        return data.decode("utf-8"), len(data)
    except UnicodeDecodeError as exc:
        cut_mid_character = exc.reason == "unexpected end of data" and exc.end == len(data)
        if cut_mid_character and not at_eof:
            return data[: exc.start].decode("utf-8"), exc.start
        where = p.offset + exc.start
        raise ToolFailed(
            f"{p.path!r} is not UTF-8 text (invalid byte at offset {where}); "
            'read it with encoding "base64"',
            op="read_file",
            context={"path": p.path, "offset": where},
        ) from None


def _as_base64(data: bytes) -> tuple[str, int]:
    return base64.b64encode(data).decode("ascii"), len(data)


# --- write -------------------------------------------------------------------------------
@router.threaded("write_file")
def _write(p: m.WriteFileParams, config: GuestConfig) -> m.WriteFileResult:
    path = resolve(p.path, config.roots, op="write_file")
    data = _payload(p, config.max_file_bytes)
    with _os_errors("write_file", p.path):
        _ensure_parent(path, p)
        atomic = p.mode == "overwrite"
        size = _replace(path, data) if atomic else _write_in_place(path, data, p)
    return m.WriteFileResult(path=str(path), size=size)


def _payload(p: m.WriteFileParams, limit: int) -> bytes:
    try:
        if p.encoding == "base64":
            # tolerate the line breaks of `base64` output, nothing else
            data = base64.b64decode("".join(p.content.split()), validate=True)
        else:
            data = p.content.encode("utf-8")
    except ValueError as exc:  # binascii.Error, non-ASCII base64, lone surrogates in text
        raise InvalidParams(
            f"content is not valid {p.encoding} ({exc}); send binary data as base64",
            op="write_file",
        ) from None
    if len(data) > limit:
        raise TooLarge(
            f"content is {len(data)} bytes, over the {limit}-byte limit; write it in parts "
            'with mode "append"',
            op="write_file",
            context={"path": p.path, "size": len(data), "limit": limit},
        )
    return data


def _ensure_parent(path: Path, p: m.WriteFileParams) -> None:
    if p.make_parents:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ToolFailed(
                f"cannot create the folders of {p.path!r}: a file is in the way",
                op="write_file",
                context={"path": p.path},
            ) from None
    else:
        _require_dir(path.parent, p.path, "write_file", "; pass make_parents=true")


def _require_dir(folder: Path, raw: str, op: str, hint: str = "") -> None:
    if not folder.is_dir():
        raise NotFound(
            f"directory {str(folder)!r} (for {raw!r}) does not exist{hint}",
            op=op,
            context={"path": raw, "directory": str(folder)},
        )


def _replace(path: Path, data: bytes) -> int:
    """Write a temp file next to the target and rename it: readers never see half a file."""
    try:
        keep_mode: int | None = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        keep_mode = None  # new file: 0o666 minus the umask, like open() would give
    tmp = path.with_name(f".hivecell-{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if keep_mode is not None:
                os.fchmod(fh.fileno(), keep_mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def _write_in_place(path: Path, data: bytes, p: m.WriteFileParams) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
    flags |= os.O_APPEND if p.mode == "append" else os.O_EXCL
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise ToolFailed(
            f'{p.path!r} already exists; use mode "overwrite" to replace it or "append"',
            op="write_file",
            context={"path": p.path},
        ) from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        return os.fstat(fh.fileno()).st_size


# --- list --------------------------------------------------------------------------------
@router.threaded("list_directory")
def _list(p: m.ListDirectoryParams, config: GuestConfig) -> m.ListDirectoryResult:
    path = resolve(p.path, config.roots, op="list_directory")
    with _os_errors("list_directory", p.path):
        if not path.is_dir():
            _not_a_directory(path, p.path)
        with os.scandir(path) as it:
            found = [e for e in it if p.show_hidden or not e.name.startswith(".")]
    # sort on d_type before stat-ing, so a huge folder costs only `limit` stats
    found.sort(key=lambda e: (not e.is_dir(follow_symlinks=False), e.name))
    entries = [entry for e in found[: p.limit] if (entry := _entry(e)) is not None]
    return m.ListDirectoryResult(path=str(path), entries=entries, truncated=len(found) > p.limit)


def _not_a_directory(path: Path, raw: str) -> None:
    path.lstat()  # raises FileNotFoundError for a missing path
    raise ToolFailed(
        f"{raw!r} is not a directory; use read_file or stat_file",
        op="list_directory",
        context={"path": raw},
    )


def _entry(e: os.DirEntry[str]) -> m.FileEntry | None:
    try:
        st = e.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # removed while we were listing
    return m.FileEntry(
        name=e.name, type=_file_type(st.st_mode), size=st.st_size, modified=st.st_mtime
    )


def _file_type(mode: int) -> m.FileType:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


# --- move, delete, stat ------------------------------------------------------------------
@router.threaded("move_file")
def _move(p: m.MoveFileParams, config: GuestConfig) -> m.MoveFileResult:
    source = _entry_path(p.source, config.roots, "move_file")
    destination = _entry_path(p.destination, config.roots, "move_file")
    with _os_errors("move_file", p.source):
        source.lstat()
        _require_dir(destination.parent, p.destination, "move_file")
        if not p.overwrite and os.path.lexists(destination):
            raise ToolFailed(
                f"{p.destination!r} already exists; pass overwrite=true to replace it",
                op="move_file",
                context={"source": p.source, "destination": p.destination},
            )
        _rename(source, destination, p.destination)
    return m.MoveFileResult(source=str(source), destination=str(destination))


def _rename(source: Path, destination: Path, raw: str) -> None:
    try:
        source.replace(destination)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _move_across_filesystems(source, destination, raw)


def _move_across_filesystems(source: Path, destination: Path, raw: str) -> None:
    # shutil.move would move *into* an existing directory, so clear the way first
    if destination.is_dir() and not destination.is_symlink():
        raise ToolFailed(
            f"{raw!r} is a directory on another filesystem; delete it first",
            op="move_file",
            context={"destination": raw},
        )
    destination.unlink(missing_ok=True)
    shutil.move(source, destination)


@router.threaded("delete_file")
def _delete(p: m.DeleteFileParams, config: GuestConfig) -> m.DeleteFileResult:
    path = _entry_path(p.path, config.roots, "delete_file")
    with _os_errors("delete_file", p.path):
        if not stat.S_ISDIR(path.lstat().st_mode):
            path.unlink()
        elif p.recursive:
            shutil.rmtree(path)
        else:
            _remove_empty_dir(path, p.path)
    return m.DeleteFileResult(path=str(path))


def _remove_empty_dir(path: Path, raw: str) -> None:
    try:
        path.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise ToolFailed(
            f"{raw!r} is a directory that is not empty; pass recursive=true to delete it all",
            op="delete_file",
            context={"path": raw},
        ) from None


@router.threaded("stat_file")
def _stat(p: m.PathParams, config: GuestConfig) -> m.StatResult:
    path = resolve(p.path, config.roots, op="stat_file", follow=False)
    with _os_errors("stat_file", p.path):
        st = path.lstat()
    return m.StatResult(
        path=str(path),
        type=_file_type(st.st_mode),
        size=st.st_size,
        mode=f"{stat.S_IMODE(st.st_mode):04o}",
        modified=st.st_mtime,
    )


def _entry_path(raw: str, roots: list[Path], op: str) -> Path:
    """A path to move or delete: a symlink itself, and never a root or a folder holding one."""
    path = resolve(raw, roots, op=op, follow=False)
    if holds_root(path, roots):
        raise PathDenied(
            f"{raw!r} is an allowed root or contains one; it cannot be moved or deleted",
            op=op,
            context={"path": raw, "roots": [str(r) for r in roots]},
        )
    return path
