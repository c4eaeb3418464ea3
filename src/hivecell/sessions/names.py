"""What a session may be called: the name becomes a folder, a socket path and a git branch.

ASCII lower-case letters, digits and inner hyphens, at most 40 characters: no ``..``, no
slash, no look-alike Unicode letters (``re.ASCII`` and an explicit class), nothing git would
refuse in ``hivecell/NAME``, and short enough that the supervisor's socket path stays under
the 108 bytes a unix socket address allows.
"""

from __future__ import annotations

import re

from hivecell.errors import InvalidParams

MAX_LENGTH = 40
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", re.ASCII)


def check_name(name: str) -> str:
    """``name`` if it is a valid session name; ``InvalidParams`` saying why not otherwise."""
    if len(name) > MAX_LENGTH:
        raise InvalidParams(
            f"session name is {len(name)} characters long; use at most {MAX_LENGTH}",
            op="session_name",
            context={"name": name[:MAX_LENGTH] + "..."},
        )
    if not _NAME.fullmatch(name):
        raise InvalidParams(
            f"session name {name!r} is not allowed: use lower-case ASCII letters, digits and "
            "hyphens inside (e.g. fix-login-2)",
            op="session_name",
            context={"name": name},
        )
    return name
