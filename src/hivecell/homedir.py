"""``$HIVECELL_HOME`` stays private: the folder 0700, the token, database, config, traces,
inputs and outputs readable by their owner only.

Two halves, both at the edge: ``private_umask`` makes everything the process creates from
then on private (the CLI calls it first), and ``secure_home`` fixes what an older version or
another umask left behind (the server calls it at start). The fix never follows a link: a link
planted in a task's outputs must not turn a chmod into a change of some host file.
Synchronous: async callers use a worker thread.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path

# Folders whose whole tree holds task data. ``sandboxes`` is the sandbox provider's and keeps
# the modes the provider gives it; the home's own 0700 already closes it to other users.
PRIVATE_TREES = ("traces", "outputs", "inputs")
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def private_umask() -> None:
    os.umask(0o077)


def secure_home(home: Path) -> None:
    """Create ``home`` (0700) if missing and take group/other access off what is in it."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    try:
        os.fchmod(fd, 0o700)
        for entry in os.listdir(fd):  # noqa: PTH208 - listed through the fd, never a path
            _secure_entry(fd, entry)
    finally:
        os.close(fd)


def _secure_entry(dir_fd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        _chmod_file(dir_fd, name)
    elif stat.S_ISDIR(st.st_mode) and name in PRIVATE_TREES:
        _secure_tree(dir_fd, name)


def _secure_tree(dir_fd: int, name: str) -> None:
    # fwalk with follow_symlinks=False opens every folder itself and checks it is the one it
    # listed, so a folder swapped for a link is not entered.
    for _root, _dirs, files, root_fd in os.fwalk(name, dir_fd=dir_fd, follow_symlinks=False):
        os.fchmod(root_fd, 0o700)
        for file in files:
            _chmod_file(root_fd, file)


def _chmod_file(dir_fd: int, name: str) -> None:
    """Owner bits only (setuid/setgid dropped); links, fifos and devices are left alone."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            return
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
    except OSError:
        return  # gone, swapped for a link (ELOOP), or unreadable to its owner
    with suppress(OSError):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & 0o700)
    os.close(fd)
