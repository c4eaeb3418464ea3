"""Confines file tools to the allowed roots.

This is a guard for the model, not the isolation boundary (the sandbox is): it resolves
symlinks and ``..`` the way the kernel would and refuses anything that ends outside the
roots, so a model cannot wander into system folders by accident or by prompt injection.
"""

from __future__ import annotations

import os
from pathlib import Path

from hivecell.errors import PathDenied

MAX_PATH = 4096


def resolve(raw: str, roots: list[Path], *, op: str, base: Path | None = None) -> Path:
    """The real path of ``raw`` if it lies inside one of ``roots``; PathDenied otherwise.

    Relative paths start at ``base`` (default: the first root). The path need not exist;
    its existing part is resolved through symlinks.
    """
    if "\x00" in raw or len(raw) > MAX_PATH:
        raise PathDenied(
            "path contains a NUL byte or is too long", op=op, context={"path": raw[:200]}
        )
    start = base or (roots[0] if roots else Path("/"))
    joined = Path(raw).expanduser() if raw.startswith("~") else start / raw
    real = Path(os.path.realpath(joined))
    for root in roots:
        root_real = Path(os.path.realpath(root))
        if real == root_real or root_real in real.parents:
            return real
    allowed = ", ".join(str(r) for r in roots)
    raise PathDenied(
        f"{raw!r} resolves to {str(real)!r}, outside the allowed roots ({allowed}); "
        "use a path under one of them (the agent's --root flags set them)",
        op=op,
        context={"path": raw, "resolved": str(real), "roots": [str(r) for r in roots]},
    )


def is_root(path: Path, roots: list[Path]) -> bool:
    return any(path == Path(os.path.realpath(r)) for r in roots)
