"""The C library's calls Python's ``os`` lacks (mount, setns, prctl, capset), and their errors.

ctypes is imported on first use: the supervisor, which imports this, starts in milliseconds.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not typing's: the supervisor of every sandbox imports this
if TYPE_CHECKING:
    import ctypes


def libc() -> ctypes.CDLL:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    """Raise OSError with errno and ``what`` unless ``result`` is 0."""
    if result != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
