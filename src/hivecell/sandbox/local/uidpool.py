"""Host uids for sandboxes when hivecell runs as root: one unprivileged uid (and the same gid)
per sandbox, so no box is ever host root and no two boxes share an owner.

Stdlib only. The range lies in the block systemd leaves unallocated (1879048192-2147352575,
docs/UIDS-GIDS.md: above the nspawn container ranges, below the "foreign" range): no
account, file or process on a normal host carries these ids. It ends well below the slirp
group range of ``hostfilter.py`` (GID_BASE = 2113929216, 65536 slots), so a sandbox's own
gid never matches the nftables rule that tags slirp4netns sockets.

Claims are host-wide (sandboxes of every ``$HIVECELL_HOME`` share the pool): one file per
uid in a root-only folder, naming the sandbox folder that holds it; changes hold an flock.
A claim whose sandbox folder is gone (a home removed without ``destroy``) is stale and is
reused, unless a process still runs as that uid or an account has it.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

UID_BASE = 2_080_374_784  # 0x7C000000
UID_SLOTS = 65_536  # ends at 2_080_440_319, far below hostfilter.GID_BASE
REGISTRY = Path("/var/lib/hivecell/uids")


class PoolExhausted(OSError):
    """Every uid of the range is claimed by an existing sandbox."""


def in_range(uid: int) -> bool:
    return UID_BASE <= uid < UID_BASE + UID_SLOTS


def allocate(owner: Path, registry: Path = REGISTRY) -> int:
    """Claim a free uid for the sandbox folder ``owner`` (an absolute path)."""
    registry.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(registry):
        claims = _claims(registry)
        running = _running_uids()
        for uid in range(UID_BASE, UID_BASE + UID_SLOTS):
            holder = claims.get(uid)
            if holder is not None and Path(holder).is_dir():
                continue
            if uid in running or _has_account(uid):
                continue
            _write_claim(registry, uid, str(owner))
            return uid
    raise PoolExhausted(
        f"all {UID_SLOTS} sandbox uids ({UID_BASE}-{UID_BASE + UID_SLOTS - 1}) are in use; "
        f"destroy unused sandboxes (claims are in {registry})"
    )


def release(uid: int, owner: Path, registry: Path = REGISTRY) -> None:
    """Give ``uid`` back if ``owner`` still holds it (idempotent)."""
    if not in_range(uid) or not registry.is_dir():
        return
    with _locked(registry):
        claim = registry / str(uid)
        with contextlib.suppress(FileNotFoundError):
            if claim.read_text() == str(owner):
                claim.unlink()


@contextlib.contextmanager
def _locked(registry: Path) -> Iterator[None]:
    fd = os.open(registry / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _claims(registry: Path) -> dict[int, str]:
    found = {}
    for entry in registry.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found[int(entry.name)] = entry.read_text()
    return found


def _write_claim(registry: Path, uid: int, owner: str) -> None:
    tmp = registry / f".{uid}.tmp"
    tmp.write_text(owner)
    tmp.replace(registry / str(uid))


def _running_uids() -> set[int]:
    """Owners of /proc/<pid>: a process left over from a lost sandbox keeps its uid busy."""
    uids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                uids.add(entry.stat().st_uid)
    return uids


def _has_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False
