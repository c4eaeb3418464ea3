"""Connecting to a unix socket in a folder the sandbox can write, without following links.

The guest and VNC sockets live in the box's ``/run/hivecell``: the box could swap them for a
link to a host service's socket or to another sandbox's, and ``connect(2)`` follows links.
So the socket is opened ``O_PATH|O_NOFOLLOW``, checked to be a socket, and connected to
through ``/proc/self/fd/N``, which names that inode rather than a path. A socket the box made
itself is its own business; ``link(2)`` cannot bring another mount's socket into its folder.
The stream itself is ``hivecell.protocol.unixstream``'s (race-free on asyncio).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import anyio
from anyio.abc import SocketStream

from hivecell.protocol.unixstream import connect_unix


async def connect_unix_nofollow(path: str | Path) -> SocketStream:
    """Like ``anyio.connect_unix``; raises ``OSError(ELOOP)`` for a link, ``ENOTSOCK`` for
    anything else that is not a socket."""
    fd = await anyio.to_thread.run_sync(_open_socket_inode, str(path))
    try:
        return await connect_unix(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _open_socket_inode(path: str) -> int:
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if stat.S_ISSOCK(mode):
        return fd
    os.close(fd)
    if stat.S_ISLNK(mode):
        raise OSError(errno.ELOOP, f"{path} is a symbolic link, not a socket")
    raise OSError(errno.ENOTSOCK, f"{path} is not a socket")
