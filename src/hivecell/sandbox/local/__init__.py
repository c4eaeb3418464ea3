"""The ``local`` sandbox provider: bubblewrap boxes with Xvfb, supervised per sandbox.

Kept import-free: the supervisor (``python -m hivecell.sandbox.local.supervisor``) loads
this package and must start in milliseconds, without pydantic.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the supervisor of every sandbox imports this (~0.5 MB)
if TYPE_CHECKING:
    from typing import Any

    from hivecell.sandbox.local.provider import LocalProvider

__all__ = ["LocalProvider"]


def __getattr__(name: str) -> Any:
    if name == "LocalProvider":
        from hivecell.sandbox.local.provider import LocalProvider

        return LocalProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
