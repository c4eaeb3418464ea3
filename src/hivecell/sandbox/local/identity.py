"""Who a box is on the host when hivecell runs as root: its own unprivileged uid, never root.

Stdlib only (the supervisor imports it). The supervisor keeps root for what needs it
(cgroups, nftables, slirp4netns), then its bwrap child drops to the sandbox's uid/gid
(``uidpool.py``) and creates an unprivileged user namespace, so uid 1000 inside maps to
that uid outside: files the box makes belong to it, a setuid copy of a shell is setuid to
a nobody, and RLIMIT_NPROC (never applied to root) binds.

The dropped bwrap must still reach its bind sources, but ``$HIVECELL_HOME`` is 0700 and a
checkout may sit under /root. ``--bind-fd`` does not help: bwrap ``realpath()``s the
fd's /proc link, which walks the same folders. So the supervisor moves into a private mount
namespace and, while still root, bind-mounts each source the uid cannot reach onto a tmpfs
of its own (``STAGE``); bwrap then binds the staged copy. The stage exists only in that
namespace: nothing on the host changes and the box sees only the usual destinations.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hivecell.sandbox.local.libc import check, libc

TYPE_CHECKING = False  # not typing's: the supervisor of every sandbox imports this (~0.5 MB)

if TYPE_CHECKING:
    import ctypes  # imported when needed: the supervisor starts in milliseconds

STAGE = Path("/run/hivecell-stage")  # an empty folder on the host; a tmpfs in our namespace
BIND_OPTIONS = ("--bind", "--ro-bind", "--dev-bind", "--bind-try", "--ro-bind-try")
# How many operands other bwrap options take, so an operand is never read as an option.
OPERANDS = dict.fromkeys((*BIND_OPTIONS, "--dev-bind-try"), 2) | {
    "--setenv": 2, "--symlink": 2, "--chmod": 2, "--file": 2, "--bind-data": 2,
    "--ro-bind-data": 2, "--bind-fd": 2, "--ro-bind-fd": 2, "--unsetenv": 1, "--chdir": 1,
    "--hostname": 1, "--uid": 1, "--gid": 1, "--perms": 1, "--size": 1, "--tmpfs": 1,
    "--proc": 1, "--dev": 1, "--dir": 1, "--mqueue": 1, "--remount-ro": 1, "--cap-add": 1,
    "--cap-drop": 1, "--seccomp": 1, "--add-seccomp-fd": 1, "--userns": 1, "--userns2": 1,
    "--pidns": 1, "--lock-file": 1, "--sync-fd": 1, "--exec-label": 1, "--file-label": 1,
    "--args": 1, "--block-fd": 1, "--userns-block-fd": 1, "--info-fd": 1,
    "--json-status-fd": 1,
}  # fmt: skip
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_SLAVE = 0x1000, 0x4000, 0x80000
MAX_USER_NAMESPACES = Path("/proc/sys/user/max_user_namespaces")
DEBIAN_USERNS_CLONE = Path("/proc/sys/kernel/unprivileged_userns_clone")
APPARMOR_USERNS = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")


def userns_unavailable() -> str | None:
    """Why an unprivileged process cannot create a user namespace here; None if it can."""
    for sysctl, path, wanted in (
        ("user.max_user_namespaces", MAX_USER_NAMESPACES, lambda v: v > 0),
        ("kernel.unprivileged_userns_clone", DEBIAN_USERNS_CLONE, lambda v: v == 1),
        ("kernel.apparmor_restrict_unprivileged_userns", APPARMOR_USERNS, lambda v: v == 0),
    ):
        try:
            value = int(path.read_text())
        except (OSError, ValueError):
            continue  # this kernel has no such switch
        if not wanted(value):
            return f"sysctl {sysctl} is {value}"
    return None


# --- supervisor side: private mounts, staging, dropping root --------------------------------
def _mount(lib: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:  # fmt: skip
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    check(lib.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {source} on {target}")


def private_mounts() -> None:
    """Move this process into its own mount namespace; host mounts still propagate in."""
    STAGE.mkdir(mode=0o755, exist_ok=True)
    lib = libc()
    check(lib.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(lib, None, "/", None, MS_REC | MS_SLAVE)  # ours never propagate to the host
    _mount(lib, "hivecell-stage", str(STAGE), "tmpfs", 0, "mode=0755,size=64k")


def stage_binds(args: list[str]) -> list[str]:
    """``args`` with every bind source an unprivileged uid cannot reach replaced by a copy
    bind-mounted under ``STAGE`` (call after ``private_mounts``)."""
    lib = libc()
    out = list(args)
    i = 0
    while i < len(args):
        if args[i] in BIND_OPTIONS and i + 2 < len(args):
            staged = _stage(lib, args[i + 1], i)
            if staged is not None:
                out[i + 1] = staged
        i += 1 + OPERANDS.get(args[i], 0)
    return out


def _stage(lib: ctypes.CDLL, source: str, n: int) -> str | None:
    real = Path(source).resolve()
    # bwrap walks the path as given (a link's own folder too), then the link's target.
    if not real.exists() or (_reachable(Path(source).absolute()) and _reachable(real)):
        return None  # fine as it is (or a -try bind of a missing path)
    staged = STAGE / str(n)
    if real.is_dir():
        staged.mkdir()
    else:
        staged.touch()
    _mount(lib, str(real), str(staged), None, MS_BIND | MS_REC)
    return str(staged)


def _reachable(path: Path) -> bool:
    """Whether anyone may search every folder above ``path``."""
    return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)


def drop(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good, with no supplementary groups (runs before exec)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
