"""A sandbox session's own git directory, so an agent in a box can stage and commit.

The repository's git folder is bound read-only into the box: an agent that could write it
could plant hooks or config that the host's git would later obey. Yet agents commit as they
work (Aider after each edit), and a commit that fails stops them. So the box gets a git
directory of its own, ``SESSION/boxgit``: its objects hold only what the box writes and
borrow the repository's (``objects/info/alternates``, read-only in the box), its refs start
as copies of the repository's branches and tags (the session's branch at its base), its
index as a copy of the worktree's. The worktree's ``.git`` in the box is a read-only file
pointing there, and its config a read-only file the host wrote.

The host never runs git in this folder: the box owns it, hooks included. What the host takes
from a sandbox session is its worktree's files (``session diff`` and ``merge`` snapshot
them), so the agent's commits stay its own history inside the box.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio

from hivecell.sessions.worktree import GitError

BOXGIT = "boxgit"
GITFILE = "boxgit.link"  # bound at WORKTREE/.git in the box


class BoxGit:
    __slots__ = ("config", "folder", "gitfile")

    def __init__(self, folder: Path) -> None:
        self.folder = folder / BOXGIT
        self.config = self.folder / "config"
        self.gitfile = folder / GITFILE


async def prepare(session_folder: Path, worktree: Path, common: Path, branch: str) -> BoxGit:
    """Make the box's git directory from the worktree's current state; ``common`` is the
    repository's git folder (``git rev-parse --git-common-dir``)."""
    box = BoxGit(session_folder)
    index = Path(await _git(worktree, "rev-parse", "--path-format=absolute", "--git-path", "index"))
    head = await _git(worktree, "rev-parse", "HEAD")
    object_format = await _git(worktree, "rev-parse", "--show-object-format")
    refs = await _git(
        worktree, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags"
    )
    await anyio.to_thread.run_sync(_write, box, common, index, head, object_format, refs, branch)
    return box


def _write(
    box: BoxGit,
    common: Path,
    index: Path,
    head: str,
    object_format: str,
    refs: str,
    branch: str,
) -> None:
    root = box.folder
    for sub in ("objects/info", "refs/heads", "refs/tags", "info", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "objects" / "info" / "alternates").write_text(f"{common / 'objects'}\n")
    (root / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    ref = root / "refs" / "heads" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(head + "\n")
    lines = sorted(line for line in refs.splitlines() if not line.endswith(f" refs/heads/{branch}"))
    (root / "packed-refs").write_text("".join(line + "\n" for line in lines))
    box.config.write_text(_config(object_format))
    if index.is_file():
        shutil.copyfile(index, root / "index")
    exclude = common / "info" / "exclude"
    if exclude.is_file():
        shutil.copyfile(exclude, root / "info" / "exclude")
    box.gitfile.write_text(f"gitdir: {root}\n")
    box.gitfile.chmod(0o444)
    box.config.chmod(0o444)


def _config(object_format: str) -> str:
    """The box's git config: a plain non-bare repository (the worktree is where the .git file
    is), SHA-256 repositories said so."""
    version = 1 if object_format != "sha1" else 0
    text = f"[core]\n\trepositoryformatversion = {version}\n\tfilemode = true\n\tbare = false\n"
    if version:
        text += f"[extensions]\n\tobjectformat = {object_format}\n"
    return text


async def _git(worktree: Path, *args: str) -> str:
    done = await anyio.run_process(["git", "-C", str(worktree), *args], check=False)
    if done.returncode != 0:
        raise GitError(
            f"git {args[0]} failed: {done.stderr.decode(errors='replace').strip()}",
            op="session_create",
            context={"worktree": str(worktree)},
        )
    return done.stdout.decode().strip()
