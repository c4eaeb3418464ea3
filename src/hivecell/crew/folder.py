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
import tempfile
from pathlib import Path

from hivecell.sandbox import transfer
from hivecell.sandbox.transfer import TransferLimits, TransferReport

FOLDER = "crew"  # under the desktop's /shared


def push(crew_shared: Path, box_shared: Path, owner: int | None, limits: TransferLimits) -> None:
    crew_shared.mkdir(parents=True, exist_ok=True)
    transfer.copy_tree_in(crew_shared, box_shared, FOLDER, owner, limits)


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
