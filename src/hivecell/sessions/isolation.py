"""What a session's supervisor runs in its PTY for each isolation level.

- ``none``: the agent's command, on the host, in the repository.
- ``worktree``: the agent on the host, in its worktree, inside a mount namespace
  (bubblewrap with the host's root bound) where the blocked paths (``blocked.py``) and
  ``$HIVECELL_HOME`` (other sessions, sandboxes, the server's token) are covered, its own
  pid namespace (no other process's ``/proc/PID/root`` to read the host through) and no
  capabilities (a root agent cannot unmount a cover nor read a mode-000 one).
- ``sandbox``: a local sandbox (``sandbox.local.terminal``) with the worktree bound
  read-write at its host path, the repository's git folder read-only and a git folder of
  the box's own for its commits (``boxgit``), no host home,
  the box's resource limits and network mode, and the agent's CLI bound read-only when it
  lives outside the box's system folders (``agent_paths``).

The PTY and the session's supervisor stay on the host in every case.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import anyio

from hivecell.errors import ConfigError, InvalidParams
from hivecell.sandbox.base import NetworkMode, SandboxSpec
from hivecell.sandbox.local import etcfiles, state, terminal
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.sessions import blocked, boxgit
from hivecell.sessions.proxy.gate import GatePlan

# In the box, what the system folders already show (bound read-only into every box).
SYSTEM_DIRS = tuple(Path(p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"))
BOX_PATH = "/usr/local/bin:/usr/bin:/bin"
# git in the box sees the repository's folders owned by a stranger (the host's owner):
# trusted there, it is the box's own business (environment config counts as command line;
# see _box_git).
HOST_ONLY_ENV = ("HOME", "USER", "LOGNAME", "SHELL", "PATH")


def bwrap_path() -> str:
    found = shutil.which("bwrap")
    if found is None:
        raise ConfigError(
            "worktree and sandbox isolation need bubblewrap: apt install bubblewrap "
            "(or pass --isolation none)",
            op="session_create",
        )
    return found


# -- worktree ---------------------------------------------------------------------------
async def worktree_argv(
    folder: Path,
    argv: list[str],
    worktree: Path,
    *,
    home: Path | None,
    repo: Path,
    hivecell_home: Path,
    gate: GatePlan | None = None,
) -> list[str]:
    """``argv`` wrapped to run on the host with the blocked paths covered."""
    covers = await anyio.to_thread.run_sync(_find, folder, home, [repo, worktree], hivecell_home)
    wt = str(worktree)
    proxy: list[str] = []
    if gate is not None:  # back in from under the tmpfs over HOME, read-only
        argv = gate.wrap(sys.executable, argv)
        proxy = ["--ro-bind", str(gate.socket_dir), str(gate.socket_dir)]
    return [
        bwrap_path(),
        "--dev-bind", "/", "/",
        "--unshare-pid", "--proc", "/proc",
        "--die-with-parent", "--cap-drop", "ALL",
        "--tmpfs", str(hivecell_home),
        *proxy,
        "--bind", wt, wt,
        *covers.bwrap_args(folder),
        "--chdir", wt,
        "--", sys.executable, "-I", "-S", "-c", terminal.FOREGROUND, "", *argv,
    ]  # fmt: skip


def _find(folder: Path, home: Path | None, trees: list[Path], skip: Path) -> blocked.Covers:
    blocked.make_covers(folder)
    return blocked.find(home, trees, skip=(skip,))


# -- sandbox ----------------------------------------------------------------------------
class BoxPlan:
    """What ``sandbox_plan`` made: the box's id, the PTY's command and its environment."""

    __slots__ = ("argv", "env", "sandbox_id")

    def __init__(self, sandbox_id: str, argv: list[str], env: dict[str, str]) -> None:
        self.sandbox_id = sandbox_id
        self.argv = argv
        self.env = env


async def sandbox_plan(
    folder: Path,
    argv: list[str],
    worktree: Path,
    env: dict[str, str],
    *,
    branch: str,
    hivecell_home: Path,
    network: NetworkMode,
    memory_mb: int | None,
    host_path: str,
    gate: GatePlan | None = None,
) -> BoxPlan:
    git_dir = await _common_git_dir(worktree)
    box_git = await boxgit.prepare(folder, worktree, git_dir, branch)
    covers = await anyio.to_thread.run_sync(_find, folder, None, [worktree], hivecell_home)
    agent_dirs, bin_dirs = await anyio.to_thread.run_sync(agent_paths, argv[0], host_path)
    provider = LocalProvider(hivecell_home)
    proxy: list[terminal.Bind] = []
    if gate is not None:  # the gate runs on the box's Python, the one FOREGROUND runs on
        argv = gate.wrap(provider.runtime.executable, argv)
        proxy = [terminal.Bind(str(gate.socket_dir))]
    wt = str(worktree)
    binds = [
        terminal.Bind(wt, writable=True),
        terminal.Bind(str(git_dir)),  # the objects the box's git borrows
        terminal.Bind(str(box_git.folder), writable=True),
        terminal.Bind(str(box_git.config)),  # the host's, read-only over the box's folder
        # the box's .git points at its own folder; a mount point: the box cannot swap it
        _CoverBind(str(box_git.gitfile), str(worktree / ".git")),
        *_cover_binds(covers.bwrap_args(folder, under=worktree)),
        *(terminal.Bind(str(d)) for d in agent_dirs),
        *proxy,
    ]
    box_env = {k: v for k, v in env.items() if k not in HOST_ONLY_ENV} | await _box_git(worktree)
    box_env |= {
        "HOME": etcfiles.SANDBOX_HOME,
        "USER": etcfiles.SANDBOX_USER,
        "LOGNAME": etcfiles.SANDBOX_USER,
        "SHELL": "/bin/bash",
        "PATH": ":".join([*map(str, bin_dirs), BOX_PATH]),
    }
    spec = SandboxSpec(network=network, name=f"session-{folder.name}"[:64])
    if memory_mb is not None:
        spec = spec.model_copy(update={"memory_mb": memory_mb})
    sandbox_id = await anyio.to_thread.run_sync(
        lambda: terminal.prepare(provider, spec, argv, cwd=wt, env=box_env, binds=binds)
    )
    try:
        await anyio.to_thread.run_sync(
            _share_worktree, hivecell_home, sandbox_id, worktree, box_git
        )
    except BaseException:
        with anyio.CancelScope(shield=True):
            await destroy_box(hivecell_home, sandbox_id)
        raise
    return BoxPlan(sandbox_id, terminal.supervisor_argv(hivecell_home, sandbox_id), box_env)


async def destroy_box(hivecell_home: Path, sandbox_id: str) -> None:
    await LocalProvider(hivecell_home).destroy(sandbox_id)


def _cover_binds(args: list[str]) -> list[terminal.Bind]:
    """``--ro-bind COVER PATH`` triples as binds (the cover's path differs from the target)."""
    return [_CoverBind(args[i + 1], args[i + 2]) for i in range(0, len(args), 3)]


class _CoverBind(terminal.Bind):
    __slots__ = ("cover",)

    def __init__(self, cover: str, target: str) -> None:
        super().__init__(target)
        self.cover = cover

    def args(self) -> list[str]:
        return ["--ro-bind", self.cover, self.host]


async def _box_git(worktree: Path) -> dict[str, str]:
    """git settings for the box: safe.directory and an author (the host's for the
    repository, if it has one). The box has no ~/.gitconfig, and a CLI that finds no
    user.name writes one into the repository's config (read-only here: Aider stops on it)."""
    config = {"safe.directory": "*"}
    for key, fallback in (
        ("user.name", "hivecell agent"),
        ("user.email", "agent@hivecell.invalid"),
    ):
        done = await anyio.run_process(
            ["git", "-C", str(worktree), "config", "--get", key], check=False
        )
        config[key] = done.stdout.decode(errors="replace").strip() or fallback
    env = {"GIT_CONFIG_COUNT": str(len(config))}
    for i, (key, value) in enumerate(config.items()):
        env |= {f"GIT_CONFIG_KEY_{i}": key, f"GIT_CONFIG_VALUE_{i}": value}
    return env


async def _common_git_dir(worktree: Path) -> Path:
    done = await anyio.run_process(
        ["git", "-C", str(worktree), "rev-parse", "--path-format=absolute", "--git-common-dir"],
        check=False,
    )
    if done.returncode != 0:
        raise InvalidParams(
            f"sandbox isolation needs a git repository: {done.stderr.decode().strip()}",
            op="session_create",
        )
    return Path(done.stdout.decode().strip())


def _share_worktree(
    hivecell_home: Path, sandbox_id: str, worktree: Path, box_git: boxgit.BoxGit
) -> None:
    """As root the box is its own host uid: its group gets write access to the worktree
    (group-writable, set-gid folders so new files stay in the group). The owner stays the
    same, so git on the host still trusts the worktree, and a ``.git`` the box made would
    belong to the box and be refused by git (safe.directory) rather than obeyed."""
    meta = state.load(Layout.of(hivecell_home, sandbox_id))
    if os.geteuid() != 0 or meta is None or meta.info.host_uid is None:
        return  # the box is the invoking user
    gid = meta.info.host_uid
    _share_tree(worktree, gid, skip=worktree / ".git")
    _share_tree(box_git.folder, gid, skip=box_git.config)  # its config stays the host's


def _share_tree(root: Path, gid: int, *, skip: Path) -> None:
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if Path(top) / name != skip:
                _share(Path(top) / name, gid)
        dirs[:] = [d for d in dirs if Path(top) / d != skip]
    _share(root, gid)


def _share(path: Path, gid: int) -> None:
    if path.is_symlink() or (path.name == ".git" and path.is_file()):
        return
    os.lchown(path, -1, gid)
    mode = os.lstat(path).st_mode
    extra = stat.S_IRWXG | stat.S_ISGID if stat.S_ISDIR(mode) else stat.S_IRGRP | stat.S_IWGRP
    path.chmod(stat.S_IMODE(mode) | extra)


def agent_paths(command: str, host_path: str) -> tuple[list[Path], list[Path]]:
    """The folders to bind read-only so ``command`` runs in a box, and its bin folders for
    the box's PATH: found on the server's PATH, with links, the script's interpreter
    (``#!``) and a virtualenv's base Python followed. Empty for a system command."""
    found = shutil.which(command, path=host_path)
    if found is None:
        raise InvalidParams(
            f"the agent's command {command!r} is not on the server's PATH ({host_path}): "
            "install it, or start the server with a PATH that has it",
            op="session_create",
            context={"command": command},
        )
    first = Path(found)
    files = _follow(first, host_path, depth=0)
    prefixes = [_prefix(f) for f in files if not _is_system(f)]
    for folder in list(prefixes):  # pip --user: ~/.local/bin's scripts import ~/.local/lib
        if folder.name == "bin" and folder.parent.name == ".local":
            prefixes.append(folder.parent / "lib")
    bins = [first.parent] if not _is_system(first) else []
    return _outermost(prefixes), bins


def _follow(path: Path, host_path: str, depth: int) -> list[Path]:
    """``path``, its link target, its interpreter and a venv's base Python, recursively."""
    if depth > 4:
        return []
    real = path.resolve()
    out = list(dict.fromkeys([path, real]))
    interpreter = _shebang(real, host_path)
    if interpreter is not None:
        out += _follow(interpreter, host_path, depth + 1)
    venv = _venv(real) or _venv(path)
    if venv is not None:
        home = _venv_home(venv)
        if home is not None:
            out += [home, home.resolve()]
    return out


def _shebang(path: Path, host_path: str) -> Path | None:
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not words:
        return None
    if Path(words[0]).name == "env" and len(words) > 1:
        found = shutil.which(words[-1], path=host_path)
        return Path(found) if found else None
    return Path(words[0])


def _venv(path: Path) -> Path | None:
    for parent in path.parents:
        if (parent / "pyvenv.cfg").is_file():
            return parent
    return None


def _venv_home(venv: Path) -> Path | None:
    try:
        lines = (venv / "pyvenv.cfg").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return Path(value.strip())
    return None


def _prefix(path: Path) -> Path:
    """The install a file belongs to: a venv or an npm/node prefix (the folder above
    ``bin``), else the file's own folder (never all of ~/.local for ~/.local/bin/x)."""
    folder = path if path.is_dir() else path.parent
    venv = _venv(folder / "x")
    if venv is not None:
        return venv
    if folder.name == "bin" and folder.parent.name != ".local" and (folder.parent / "lib").is_dir():
        return folder.parent  # a Python install, an npm prefix, a node version
    return folder


def _is_system(path: Path) -> bool:
    return any(path == d or d in path.parents for d in SYSTEM_DIRS)


def _outermost(paths: list[Path]) -> list[Path]:
    unique = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return kept
