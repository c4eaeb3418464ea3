"""Confines file tools to the allowed roots.

This is a guard for the model, not the isolation boundary (the sandbox is): it resolves
symlinks and ``..`` the way the kernel would and refuses anything that ends outside the
roots, so a model cannot wander into system folders by accident or by prompt injection.
Callers must act on the returned path, never on the raw one.
"""

from __future__ import annotations

import os
from pathlib import Path

from hivecell.errors import PathDenied

MAX_PATH = 4096


def resolve(
    raw: str, roots: list[Path], *, op: str, base: Path | None = None, follow: bool = True
) -> Path:
    """The real path of ``raw`` if it lies inside one of ``roots``; PathDenied otherwise.

    Relative paths start at ``base`` (default: the first root). The path need not exist;
    its existing part is resolved through symlinks. With ``follow=False`` a final symlink
    is not followed: the result is the link itself, for tools that act on the link (stat,
    delete, move); then only the directory holding the link must lie inside the roots.
    """
    if "\x00" in raw or len(raw) > MAX_PATH:
        raise PathDenied(
            "path contains a NUL byte or is too long", op=op, context={"path": raw[:200]}
        )
    start = base or (roots[0] if roots else Path("/"))
    # a string join keeps a trailing slash, which makes even follow=False follow a link
    joined = os.path.join(start, os.path.expanduser(raw))  # noqa: PTH111, PTH118
    if not follow:
        link = _link_entry(joined, raw, roots, op)
        if link is not None:
            return link
    real = _realpath(joined, raw, roots, op)
    if _inside(real, roots):
        return real
    raise _denied(raw, real, roots, op)


def _link_entry(joined: str, raw: str, roots: list[Path], op: str) -> Path | None:
    """The symlink ``joined`` names (real parent + link name), if it is one inside the roots."""
    parent, name = os.path.split(joined)
    if name in ("", ".", "..") or not os.path.islink(joined):  # noqa: PTH114
        return None
    entry = _realpath(parent, raw, roots, op) / name
    return entry if _inside(entry, roots) else None


def _realpath(path: str, raw: str, roots: list[Path], op: str) -> Path:
    real = os.path.realpath(path)
    # realpath gives up at a symlink loop and appends the rest unresolved, after which
    # abspath folds its ``..`` lexically: "loop/../escape/x" would come back as an
    # in-root path whose "escape" symlink the kernel then follows. A fully resolved path
    # is a fixed point, so a second pass exposes that.
    if os.path.realpath(real) != real:
        raise PathDenied(
            f"{raw!r} goes through a symlink loop; remove the loop or use another path",
            op=op,
            context={"path": raw, "roots": [str(r) for r in roots]},
        )
    return Path(real)


def _inside(real: Path, roots: list[Path]) -> bool:
    for root in roots:
        root_real = Path(os.path.realpath(root))
        if real == root_real or root_real in real.parents:
            return True
    return False


def _denied(raw: str, real: Path, roots: list[Path], op: str) -> PathDenied:
    allowed = ", ".join(str(r) for r in roots)
    return PathDenied(
        f"{raw!r} resolves to {str(real)!r}, outside the allowed roots ({allowed}); "
        "use a path under one of them (the agent's --root flags set them)",
        op=op,
        context={"path": raw, "resolved": str(real), "roots": [str(r) for r in roots]},
    )


def is_root(path: Path, roots: list[Path]) -> bool:
    return any(path == Path(os.path.realpath(r)) for r in roots)


def holds_root(path: Path, roots: list[Path]) -> bool:
    """True if ``path`` is a root or a directory above one (deleting it would delete a root)."""
    return any(path == (real := Path(os.path.realpath(r))) or path in real.parents for r in roots)
