"""The seed's blocked paths: what a session's agent must not read, and how to hide it.

Hidden by mounting over them inside the agent's mount namespace (``isolation.py``): an
empty folder or file with mode 000, so opening fails (EACCES) even for a root agent,
which runs without capabilities. Only paths that exist when the session is created are
covered (a restart keeps the list); what the agent makes itself is its own. A link to a
covered path resolves to the cover.

The list (documented in docs/sessions.md, keep both in step):
- folders under the home: ``HOME_DIRS``; files under the home: ``HOME_FILES``;
- files whose name matches ``PATTERNS`` anywhere under the home, the repository and the
  session's worktree, except inside ``SKIP_DIRS`` (caches and dependency trees, walked
  by nobody's secrets) and at most ``MAX_ENTRIES`` entries per tree.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

HOME_DIRS = (".ssh", ".aws", ".gnupg", ".azure", ".kube", ".config/gcloud")
HOME_FILES = (
    ".netrc", ".git-credentials", ".docker/config.json", ".config/gh/hosts.yml",
    ".pgpass", ".pypirc", ".npmrc", ".config/hub",
)  # fmt: skip
PATTERNS = (".env*", "*.pem", "*.key", "secrets.*")
SKIP_DIRS = frozenset(
    {".git", "node_modules", "__pycache__", ".cache", ".npm", ".venv", "venv", ".rustup",
     ".pyenv", ".nvm", ".cargo", ".gradle", ".m2"}
)  # fmt: skip
# Source files named like a pattern (stdlib secrets.py, a secrets.ts module) are code.
CODE_SUFFIXES = frozenset(
    {".py", ".pyc", ".pyi", ".js", ".mjs", ".cjs", ".ts", ".go", ".rs", ".rb", ".java"}
)
MAX_ENTRIES = 200_000
COVER_DIR = "blocked.d"  # in the session's folder: the empty, mode 000 covers
COVER_FILE = "blocked.f"


class Covers:
    """Which host paths to cover: folders and files, absolute, links resolved as well."""

    def __init__(self) -> None:
        self.dirs: list[str] = []
        self.files: list[str] = []

    def add(self, path: Path, *, resolve: bool = True) -> None:
        # A mount over a link lands on its target: cover a home entry's target too, but
        # never follow a link found in a tree (a ".pem" link to libc would hide libc).
        if not resolve and path.is_symlink():
            return
        for candidate in dict.fromkeys((path, path.resolve() if resolve else path)):
            try:
                is_dir = candidate.is_dir()
            except OSError:
                continue
            if not candidate.exists():
                continue
            (self.dirs if is_dir else self.files).append(str(candidate))

    def bwrap_args(self, folder: Path, *, under: Path | None = None) -> list[str]:
        """``--ro-bind`` of the session's covers over each path (only those below ``under``
        when given: a box sees nothing of the host beyond its own binds)."""
        args: list[str] = []
        for paths, cover in ((self.dirs, folder / COVER_DIR), (self.files, folder / COVER_FILE)):
            for path in dict.fromkeys(paths):
                if under is None or Path(path).is_relative_to(under):
                    args += ["--ro-bind", str(cover), path]
        return args


def make_covers(folder: Path) -> None:
    """The empty folder and file bound over blocked paths (made once, at create)."""
    (folder / COVER_DIR).mkdir(mode=0o000, exist_ok=True)
    fd = os.open(folder / COVER_FILE, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o000)
    os.close(fd)
    (folder / COVER_DIR).chmod(0o000)  # mkdir's mode went through the umask


def find(home: Path | None, trees: list[Path], *, skip: tuple[Path, ...] = ()) -> Covers:
    """Every blocked path that exists now, under ``home`` and in ``trees``; not inside
    ``skip`` (``$HIVECELL_HOME``, covered as a whole)."""
    covers = Covers()
    if home is not None:
        for name in (*HOME_DIRS, *HOME_FILES):
            if os.path.lexists(home / name):
                covers.add(home / name)
    for tree in dict.fromkeys([*([home] if home else []), *trees]):
        for path in _matching(tree, skip):
            covers.add(path, resolve=False)
    return covers


def is_blocked_name(name: str) -> bool:
    if Path(name).suffix in CODE_SUFFIXES:
        return False  # Python's own secrets.py is a module, not a secret
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in PATTERNS)


def _matching(tree: Path, skip: tuple[Path, ...]) -> list[Path]:
    found: list[Path] = []
    seen = 0
    for top, dirs, files in os.walk(tree):  # never follows links into other trees
        seen += len(dirs) + len(files)
        if seen > MAX_ENTRIES:
            break
        for name in files + dirs:
            if is_blocked_name(name):
                found.append(Path(top) / name)
        dirs[:] = [
            d
            for d in dirs
            if d not in SKIP_DIRS and not is_blocked_name(d) and Path(top, d) not in skip
        ]
    return found
