"""``session diff`` and ``session merge``: a worktree session's work against where its
branch started, and bringing it into a branch of the main repository.

Merge checks everything before it changes anything: the main checkout has no uncommitted
changes to tracked files, the target branch is not checked out elsewhere, and the merge has
no conflicts (``git merge-tree --write-tree`` computes it without touching any checkout,
with the session's uncommitted work included when ``commit`` is asked, through a private
index). Only then is the work committed on the session's branch and merged.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio

from hivecell.errors import HivecellError, InvalidParams
from hivecell.sessions.spec import SessionSpec
from hivecell.sessions.worktree import GitError

PASSED_ENV = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# The worktree is the agent's: no hook or file-system monitor it may have set up runs when
# hivecell runs git on its behalf (merge, commit, status).
NO_HOOKS = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
# Used when the repository has no identity of its own, so a merge never fails on it.
FALLBACK_IDENTITY = ("-c", "user.name=hivecell", "-c", "user.email=hivecell@localhost")


class MergeRefused(HivecellError):
    code = "conflict"


async def git(
    repo: Path,
    *args: str,
    op: str,
    env: dict[str, str] | None = None,
    ok: tuple[int, ...] = (0,),
    pre: tuple[str, ...] = (),
) -> tuple[int, str]:
    try:
        done = await anyio.run_process(
            ["git", "-C", str(repo), *NO_HOOKS, *pre, *args], check=False, env=env
        )
    except OSError as exc:
        raise GitError(f"cannot run git: {exc.strerror}; install git", op=op) from None
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode not in ok:
        text = done.stderr.decode("utf-8", "replace").strip() or out.strip()
        raise GitError(f"git {args[0]} failed: {text}", op=op, context={"repo": str(repo)})
    return done.returncode, out


def _env(environ: Mapping[str, str], extra: dict[str, str]) -> dict[str, str]:
    env = {k: environ[k] for k in PASSED_ENV if k in environ}
    env.setdefault("PATH", DEFAULT_PATH)
    return env | extra


def _need_branch(spec: SessionSpec, op: str) -> str:
    if spec.branch is None:
        raise InvalidParams(
            f"session {spec.name} has no branch of its own (isolation {spec.isolation}): its "
            f"work is in {spec.cwd} itself; diff and merge need --isolation worktree or sandbox",
            op=op,
            context={"name": spec.name},
        )
    return spec.branch


async def _base(spec: SessionSpec, branch: str, op: str) -> str:
    if spec.base:
        return spec.base
    # Sessions made before the base was recorded: where the branch left the main checkout.
    _, out = await git(Path(spec.repo), "merge-base", "HEAD", branch, op=op)
    return out.strip()


async def _snapshot(worktree: Path, op: str, environ: Mapping[str, str]) -> str:
    """A commit of the worktree as it is (uncommitted and untracked files included, ignored
    ones not), made through a private index: the worktree's own index and branch stay."""
    with tempfile.TemporaryDirectory(prefix="hc-index-") as tmp:
        env = _env(environ, {"GIT_INDEX_FILE": str(Path(tmp) / "index")})
        await git(worktree, "read-tree", "HEAD", op=op, env=env)
        await git(worktree, "add", "-A", op=op, env=env)
        _, tree = await git(worktree, "write-tree", op=op, env=env)
    _, commit = await git(
        worktree, "commit-tree", tree.strip(), "-p", "HEAD", "-m", "snapshot", op=op,
        pre=await _identity(worktree),
    )  # fmt: skip
    return commit.strip()


async def _identity(repo: Path) -> tuple[str, ...]:
    code, _ = await git(repo, "var", "GIT_COMMITTER_IDENT", op="session_git", ok=(0, 128))
    return () if code == 0 else FALLBACK_IDENTITY


async def diff(spec: SessionSpec, environ: Mapping[str, str]) -> dict[str, Any]:
    """The branch's changes since its base, uncommitted work in its worktree included."""
    branch = _need_branch(spec, "session_diff")
    base = await _base(spec, branch, "session_diff")
    worktree = Path(spec.cwd)
    if await anyio.Path(worktree).is_dir():
        head = await _snapshot(worktree, "session_diff", environ)
    else:
        _, out = await git(Path(spec.repo), "rev-parse", branch, op="session_diff")
        head = out.strip()
    repo = Path(spec.repo)
    _, text = await git(repo, "diff", "--no-color", "--no-ext-diff", base, head, op="session_diff")
    _, names = await git(repo, "diff", "--name-status", base, head, op="session_diff")
    files = [
        {"status": parts[0], "path": parts[-1]}
        for line in names.splitlines()
        if (parts := line.split("\t"))
    ]
    return {"name": spec.name, "branch": branch, "base": base, "files": files, "diff": text}


async def merge(
    spec: SessionSpec,
    environ: Mapping[str, str],
    *,
    into: str | None,
    commit: bool,
    message: str | None,
) -> dict[str, Any]:
    op = "session_merge"
    branch = _need_branch(spec, op)
    repo, worktree = Path(spec.repo), Path(spec.cwd)
    target = into or await _current_branch(repo, op)
    await _check_target(repo, target, op)
    await _check_clean_checkout(repo, op)
    pending = await anyio.Path(worktree).is_dir() and bool(
        (await git(worktree, "status", "--porcelain", op=op))[1].strip()
    )
    if pending and not commit:
        raise MergeRefused(
            f"session {spec.name} has uncommitted changes in {worktree}: pass --commit to "
            f"commit them on {branch} first, or commit them yourself",
            op=op,
            context={"name": spec.name},
        )
    head = await _snapshot(worktree, op, environ) if pending else branch
    await _check_no_conflicts(repo, target, head, op)
    # Checked: now change things.
    committed = None
    if pending:
        committed = await _commit_worktree(worktree, spec, message)
    title = f"Merge session {spec.name} ({branch}, agent {spec.agent}) into {target}"
    merged = await _merge(repo, target, branch, title, op)
    return {
        "name": spec.name,
        "branch": branch,
        "into": target,
        "committed": committed,
        "merge_commit": merged,
        "message": f"{branch} merged into {target}"
        + (f" (pending work committed as {committed[:12]})" if committed else ""),
    }


async def _current_branch(repo: Path, op: str) -> str:
    code, out = await git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", op=op, ok=(0, 1))
    if code != 0:
        raise MergeRefused(
            f"the main checkout {repo} is on a detached HEAD: pass --into BRANCH",
            op=op,
            context={"repo": str(repo)},
        )
    return out.strip()


async def _check_target(repo: Path, target: str, op: str) -> None:
    code, _ = await git(repo, "check-ref-format", f"refs/heads/{target}", op=op, ok=(0, 1))
    if code != 0 or target.startswith("-"):
        raise InvalidParams(f"--into {target!r} is not a branch name", op=op)
    code, _ = await git(
        repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{target}", op=op, ok=(0, 1)
    )
    if code != 0:
        raise InvalidParams(f"--into {target}: no such branch in {repo}", op=op)
    where = await _checked_out(repo, target, op)
    if where is not None and where != await _toplevel(repo, op):
        raise MergeRefused(
            f"branch {target} is checked out in {where}, not in the main checkout {repo}: "
            "merge there by hand or pick another --into",
            op=op,
        )


async def _toplevel(repo: Path, op: str) -> str:
    return (await git(repo, "rev-parse", "--show-toplevel", op=op))[1].strip()


async def _checked_out(repo: Path, target: str, op: str) -> str | None:
    """The worktree that has ``target`` checked out, if any."""
    _, out = await git(repo, "worktree", "list", "--porcelain", op=op)
    path = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            path = line.removeprefix("worktree ")
        elif line == f"branch refs/heads/{target}":
            return path
    return None


async def _check_clean_checkout(repo: Path, op: str) -> None:
    _, out = await git(repo, "status", "--porcelain", "--untracked-files=no", op=op)
    if out.strip():
        raise MergeRefused(
            f"the main checkout {repo} has uncommitted changes "
            f"({len(out.splitlines())} files): commit or stash them, then merge again",
            op=op,
            context={"repo": str(repo)},
        )


async def _check_no_conflicts(repo: Path, target: str, head: str, op: str) -> None:
    code, out = await git(
        repo, "merge-tree", "--write-tree", "--name-only", "--no-messages", target, head,
        op=op, ok=(0, 1),
    )  # fmt: skip
    if code == 1:
        files = [f for f in out.splitlines()[1:] if f.strip()]
        raise MergeRefused(
            f"merging into {target} conflicts in {', '.join(files) or 'some files'}: nothing "
            "was changed; resolve it on the session's branch (or merge by hand)",
            op=op,
            context={"files": files},
        )


async def _commit_worktree(worktree: Path, spec: SessionSpec, message: str | None) -> str:
    op = "session_merge"
    who = await _identity(worktree)
    text = message or f"hivecell: uncommitted work of session {spec.name} (agent {spec.agent})"
    await git(worktree, "add", "-A", op=op)
    await git(worktree, "commit", "-q", "--no-verify", "-m", text, op=op, pre=who)
    return (await git(worktree, "rev-parse", "HEAD", op=op))[1].strip()


async def _merge(repo: Path, target: str, branch: str, title: str, op: str) -> str:
    who = await _identity(repo)
    if await _checked_out(repo, target, op) is not None:  # the main checkout's branch
        try:
            await git(repo, "merge", "--no-ff", "--no-edit", "-m", title, branch, op=op, pre=who)
        except GitError:
            await git(repo, "merge", "--abort", op=op, ok=(0, 128))
            raise
        return (await git(repo, "rev-parse", "HEAD", op=op))[1].strip()
    # Not checked out anywhere: make the merge commit from the computed tree, move the ref.
    _, tree = await git(repo, "merge-tree", "--write-tree", target, branch, op=op)
    old = (await git(repo, "rev-parse", f"refs/heads/{target}", op=op))[1].strip()
    _, made = await git(
        repo, "commit-tree", tree.splitlines()[0], "-p", old, "-p", branch, "-m", title,
        op=op, pre=who,
    )  # fmt: skip
    await git(repo, "update-ref", f"refs/heads/{target}", made.strip(), old, op=op)
    return made.strip()
