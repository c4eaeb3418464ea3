"""``worktree`` isolation: each session works on its own branch ``hivecell/NAME`` in its own
git worktree, so agents never touch each other's files. Removing the worktree keeps the
branch (the session's work)."""

from __future__ import annotations

from pathlib import Path

import anyio

from hivecell.errors import HivecellError, InvalidParams

BRANCH_PREFIX = "hivecell/"


class GitError(HivecellError):
    code = "git_error"


async def _git(repo: Path, *args: str, op: str) -> str:
    try:
        done = await anyio.run_process(["git", "-C", str(repo), *args], check=False)
    except OSError as exc:
        raise GitError(f"cannot run git: {exc.strerror}; install git", op=op) from None
    if done.returncode != 0:
        text = done.stderr.decode("utf-8", "replace").strip()
        raise GitError(f"git {args[0]} failed: {text}", op=op, context={"repo": str(repo)})
    return done.stdout.decode("utf-8", "replace").strip()


async def repo_root(repo: Path) -> Path:
    try:
        return Path(await _git(repo, "rev-parse", "--show-toplevel", op="session_create"))
    except GitError:
        raise InvalidParams(
            f"--repo {repo} is not a git repository (worktree isolation needs one): "
            "pass a repository or --isolation none",
            op="session_create",
        ) from None


async def add(repo: Path, name: str, path: Path) -> str:
    branch = BRANCH_PREFIX + name
    try:
        await _git(repo, "worktree", "add", "-b", branch, str(path), "HEAD", op="session_create")
    except GitError as exc:
        if "already exists" in exc.message:
            raise InvalidParams(
                f"branch {branch} already exists (kept from an earlier session?): pick another "
                f"session name, or delete it with git branch -D {branch}",
                op="session_create",
                context={"branch": branch},
            ) from None
        raise
    return branch


async def remove(repo: Path, path: Path, *, force: bool) -> None:
    """``git worktree remove``: refuses uncommitted changes unless ``force``."""
    args = ["worktree", "remove", *(["--force"] if force else []), str(path)]
    try:
        await _git(repo, *args, op="session_destroy")
    except GitError as exc:
        raise InvalidParams(
            f"{exc.message}; commit the work or pass --force to drop it",
            op="session_destroy",
            context={"worktree": str(path)},
        ) from None


async def status(path: Path) -> str:
    """``git status --porcelain`` of a worktree: empty when it is clean."""
    return await _git(path, "status", "--porcelain", op="session_destroy")


async def head(path: Path) -> str:
    """The commit a worktree's HEAD is at (a new session's base)."""
    return await _git(path, "rev-parse", "HEAD", op="session_create")
