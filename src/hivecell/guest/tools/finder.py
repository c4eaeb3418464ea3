"""Guest tools of the catalogue's finder domain: search, copy, new folder, trash, reveal.

Paths go through ``hivecell.guest.paths.resolve`` like every file tool. The trash follows
the freedesktop.org Trash specification 1.0: the home trash ($XDG_DATA_HOME/Trash), an
item in ``files/`` and a ``.trashinfo`` beside it in ``info/``, so file managers list and
restore what the agent trashed.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import time
import urllib.parse
from pathlib import Path

import anyio

from hivecell.errors import InvalidParams, NotFound, NotSupported, ToolFailed
from hivecell.guest.context import CallContext, GuestConfig
from hivecell.guest.dispatch import Router
from hivecell.guest.paths import resolve
from hivecell.guest.tools import desktop
from hivecell.guest.tools.files import _entry_path, _os_errors
from hivecell.protocol import catalog as c
from hivecell.protocol import methods as m

router = Router()
MAX_VISITED = 200_000  # entries a search looks at before it gives up (bounds its time)


@router.threaded("search_files")
def search_files(p: c.SearchParams, config: GuestConfig) -> c.SearchResult:
    folder = resolve(p.folder or ".", config.roots, op="search_files")
    if not folder.is_dir():
        raise NotFound(f"{p.folder!r} is not a folder", op="search_files")
    pattern, found, visited = p.pattern.lower(), [], 0
    # os.walk does not follow links into folders: the search stays where resolve allowed.
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(dirs + files):
            visited += 1
            if fnmatch.fnmatchcase(name.lower(), pattern):
                found.append(str(Path(parent) / name))
                if len(found) >= p.max_results:
                    return c.SearchResult(paths=found, truncated=True)
        if visited >= MAX_VISITED:
            return c.SearchResult(paths=found, truncated=True)
    return c.SearchResult(paths=found, truncated=False)


@router.threaded("copy_file")
def copy_file(p: c.CopyParams, config: GuestConfig) -> c.CopyResult:
    source = resolve(p.source, config.roots, op="copy_file", follow=False)
    destination = resolve(p.destination, config.roots, op="copy_file", follow=False)
    with _os_errors("copy_file", p.source):
        source_stat = source.lstat()
        if destination.is_dir() and not destination.is_symlink():
            destination = destination / source.name  # into a folder, as a file manager does
        if destination == source:
            raise InvalidParams("source and destination are the same", op="copy_file")
        if os.path.lexists(destination):
            if not p.overwrite:
                raise ToolFailed(
                    f"{str(destination)!r} already exists; pass overwrite=true to replace it",
                    op="copy_file",
                )
            _remove(destination)
        if stat.S_ISDIR(source_stat.st_mode):
            # symlinks=True copies links as links: a link to /etc stays a link, not /etc's files
            shutil.copytree(source, destination, symlinks=True)
        else:
            shutil.copy2(source, destination, follow_symlinks=False)
    return c.CopyResult(source=str(source), destination=str(destination))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@router.threaded("make_directory")
def make_directory(p: c.PathOnly, config: GuestConfig) -> c.PathResult:
    path = resolve(p.path, config.roots, op="make_directory")
    with _os_errors("make_directory", p.path):
        path.mkdir(parents=True, exist_ok=True)
    return c.PathResult(path=str(path))


# --- trash -------------------------------------------------------------------------------
def trash_home() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(data_home) / "Trash"


@router.threaded("trash_file")
def trash_file(p: c.PathOnly, config: GuestConfig) -> c.TrashResult:
    path = _entry_path(p.path, config.roots, "trash_file")
    trash = trash_home()
    if path == trash or trash in path.parents:
        raise InvalidParams(f"{p.path!r} is already in the trash", op="trash_file")
    with _os_errors("trash_file", p.path):
        path.lstat()
        (trash / "files").mkdir(parents=True, exist_ok=True)
        (trash / "info").mkdir(parents=True, exist_ok=True)
        info, name = _claim_info(trash, path)
        target = trash / "files" / name
        try:
            desktop_move(path, target)
        except BaseException:
            info.unlink(missing_ok=True)  # no info file may name an item that is not there
            raise
    return c.TrashResult(path=str(target), info=str(info))


def _claim_info(trash: Path, path: Path) -> tuple[Path, str]:
    """Create the .trashinfo first with O_EXCL: the spec's way to pick a free name atomically."""
    body = (
        "[Trash Info]\n"
        f"Path={urllib.parse.quote(str(path))}\n"
        f"DeletionDate={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
    ).encode()
    for n in range(1, 10_000):
        name = path.name if n == 1 else f"{path.stem}.{n}{path.suffix}"
        info = trash / "info" / f"{name}.trashinfo"
        if os.path.lexists(trash / "files" / name):
            continue
        try:
            fd = os.open(info, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(body)
        return info, name
    raise ToolFailed(f"the trash holds too many items named {path.name!r}; empty it")


def desktop_move(source: Path, target: Path) -> None:
    try:
        source.rename(target)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: /shared is another filesystem than the home trash
            raise
        shutil.move(source, target)


@router.threaded("empty_trash")
def empty_trash(p: m.Empty, config: GuestConfig) -> c.TrashEmptied:
    trash, removed = trash_home(), 0
    for sub in ("files", "info"):
        folder = trash / sub
        for entry in list(folder.iterdir()) if folder.is_dir() else []:
            _remove(entry)
            removed += sub == "files"
    return c.TrashEmptied(removed=removed)


# --- reveal ------------------------------------------------------------------------------
@router.method("reveal_file")
async def reveal_file(p: c.PathOnly, ctx: CallContext) -> m.Launched:
    path = resolve(p.path, ctx.config.roots, op="reveal_file")
    if not await anyio.Path(path).exists() and not await anyio.Path(path).is_symlink():
        raise NotFound(f"{p.path!r} does not exist", op="reveal_file")
    argv = reveal_argv(path)
    return await desktop.launch(argv, m.LaunchParams(settle=True), ctx)


def reveal_argv(path: Path) -> list[str]:
    folder = path if path.is_dir() else path.parent
    if shutil.which("nautilus"):
        return ["nautilus", "--select", str(path)]
    for manager in ("pcmanfm", "thunar", "caja", "nemo"):
        if shutil.which(manager):
            return [manager, str(folder)]  # they open the folder; none selects an item
    if shutil.which("xdg-open"):
        return ["xdg-open", str(folder)]
    raise NotSupported("no file manager is installed in the sandbox (e.g. apt install pcmanfm)")
