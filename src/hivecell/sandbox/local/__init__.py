"""The ``local`` sandbox provider: bubblewrap boxes with Xvfb, supervised per sandbox.

Kept import-free: the supervisor (``python -m hivecell.sandbox.local.supervisor``) loads
this package and must start in milliseconds, without pydantic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hivecell.sandbox.local.provider import LocalProvider

__all__ = ["LocalProvider"]


def __getattr__(name: str) -> Any:
    if name == "LocalProvider":
        from hivecell.sandbox.local.provider import LocalProvider

        return LocalProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
