"""The crew folder: files the agents pass each other, at ``/shared/crew`` in every desktop.

It lives on the host (``<crew folder>/shared``) and meets each desktop at TODO boundaries:
before a TODO it is copied into the agent's ``/shared/crew`` (replacing files of the same
name), after it what the agent left there is copied back (the newest finisher wins a name).
No box ever writes another's files, and every copy is the no-follow kind of
``sandbox/transfer.py``: a link planted in one desktop reaches neither the host nor another
desktop. Deleting a file in a desktop does not delete it for the crew.

Synchronous (callers run it in a worker thread).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import suppress
from pathlib import Path

from hivecell.sandbox import transfer
from hivecell.sandbox.transfer import TransferLimits, TransferReport

FOLDER = "crew"  # under the desktop's /shared


def push(crew_shared: Path, box_shared: Path, owner: int | None, limits: TransferLimits) -> None:
    """Before a TODO: the crew folder into the desktop, and an empty outbox (so what the
    TODO's task collects from it is that TODO's alone)."""
    crew_shared.mkdir(parents=True, exist_ok=True)
    transfer.copy_tree_in(crew_shared, box_shared, FOLDER, owner, limits)
    _empty(box_shared, "outbox")


def _empty(trusted: Path, name: str) -> None:
    """Remove what is in ``trusted/name`` (the box's), never following a link it planted:
    rmtree by fd (``avoids_symlink_attacks`` on Linux), the folder opened no-follow."""
    base = os.open(trusted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            folder = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=base)
        except OSError:  # gone or not a folder: the task's collection reports that
            return
        try:
            for entry in os.listdir(folder):  # noqa: PTH208 - by fd: pathlib has no form
                # A swap between the stat and the removal makes it fail, never follow.
                with suppress(OSError):
                    if stat.S_ISDIR(os.stat(entry, dir_fd=folder, follow_symlinks=False).st_mode):
                        shutil.rmtree(entry, dir_fd=folder)
                    else:
                        os.unlink(entry, dir_fd=folder)
        finally:
            os.close(folder)
    finally:
        os.close(base)


def pull(box_shared: Path, crew_shared: Path, limits: TransferLimits) -> TransferReport:
    """Copy the desktop's ``/shared/crew`` into the crew folder; what the copy left out is
    in the report."""
    crew_shared.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=crew_shared.parent))
    try:
        report = transfer.copy_out(box_shared, FOLDER, staging, limits)
        _merge(staging, crew_shared)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _merge(source: Path, dest: Path) -> None:
    """Move every file of ``source`` (ours, made by copy_out: files and folders only) into
    ``dest`` at the same place; a folder where a file goes (or the reverse) is replaced."""
    for root, folders, files in os.walk(source):
        relative = Path(root).relative_to(source)
        target = dest / relative
        if target.exists() and not target.is_dir():
            target.unlink()
        target.mkdir(exist_ok=True)
        for name in folders:
            if (target / name).exists() and not (target / name).is_dir():
                (target / name).unlink()
        for name in files:
            if (target / name).is_dir():
                shutil.rmtree(target / name)
            (Path(root) / name).replace(target / name)


def gather(task_outputs: Path, crew_outputs: Path) -> None:
    """A TODO's outputs (already copied out by its task) into the crew's outputs folder."""
    if task_outputs.is_dir():
        shutil.copytree(task_outputs, crew_outputs, symlinks=True, dirs_exist_ok=True)
