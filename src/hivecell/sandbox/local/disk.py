"""A size cap on what a box can write to host disk: its home, /shared and /run/hivecell.

``image`` (hivecell runs as root): a sparse ext4 image per sandbox (``disk.img``, exactly as
large as the cap) loop-mounted ``nosuid,nodev`` on ``disk/``, where home/, shared/ and run/
live. A write past the cap fails with ENOSPC inside the box, and the image never takes more
of the host's disk than the cap. The mount lasts from create to destroy, not one run: a
stopped box's outbox is still read from ``shared/``. mkfs (lazy init, no discard) plus the
mount cost ~80 ms per create; the fresh image allocates ~2 MB.

``watch`` (no root, so no loop mounts): ``disk/`` is a plain folder. RLIMIT_FSIZE keeps any one
file under the cap and the supervisor measures the folder every few seconds, stopping the box
with "disk cap exceeded" when it is over (and when the box made a folder unreadable, which
would hide it). Weaker: between two measurements a box can write past the cap (bounded by
the write speed), and the folder's files count, not filesystem metadata.

``none``: no cap was asked for (``disk_mb=None``).

Stdlib only: the supervisor imports it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from hivecell.sandbox.local.layout import Layout

BACKENDS = ("auto", "image", "watch")  # auto: image when possible, else watch
MKFS_OPTIONS = [
    "-q", "-F", "-t", "ext4",
    "-m", "0",  # no blocks reserved for root: the cap is what the box gets
    "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard",  # a sparse file reads as zeros
]  # fmt: skip
# noinit_itable: no background zeroing of inode tables, which would allocate them on the host.
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime,noinit_itable"
MOUNTINFO = Path("/proc/self/mountinfo")
TOOLS = ("mkfs.ext4", "mount", "umount")
LOOP_CONTROL = "/dev/loop-control"


class DiskError(OSError):
    """The image could not be made, mounted or released; the message says why."""


def mode(cap_bytes: int | None, backend: str = "auto") -> str:
    """How a cap of ``cap_bytes`` is enforced on this host: image, watch or none."""
    if cap_bytes is None:
        return "none"
    if backend == "watch":
        return "watch"
    why = why_not_image()
    if not why:
        return "image"
    if backend == "image":
        raise DiskError(f"disk backend 'image' is unavailable: {why}; use disk backend 'auto'")
    return "watch"


def why_not_image() -> str:
    """Why this host cannot use the ``image`` mode ("" if it can), for errors and doctor."""
    if os.geteuid() != 0:
        return "loop mounts need root"
    if not os.access(LOOP_CONTROL, os.R_OK | os.W_OK):
        return f"no usable {LOOP_CONTROL} (a container without loop devices?)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (apt install e2fsprogs mount)" if missing else ""


def prepare(layout: Layout, cap_bytes: int | None, backend: str = "auto") -> str:
    """Make ``layout.disk`` (an empty capped filesystem, or a folder); returns the mode."""
    chosen = mode(cap_bytes, backend)
    layout.disk.mkdir(mode=0o755)
    if chosen == "image":
        assert cap_bytes is not None
        _make_image(layout.disk_image, cap_bytes)
        mount(layout)
    return chosen


def _make_image(image: Path, size: int) -> None:
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size)  # sparse: host blocks are only taken as the box writes
    finally:
        os.close(fd)
    _run(["mkfs.ext4", *MKFS_OPTIONS, str(image)], "make the sandbox's disk image")


def mount(layout: Layout) -> None:
    """Mount the image on ``layout.disk`` unless it already is (e.g. after a host reboot)."""
    if not layout.disk_image.exists() or is_mounted(layout.disk):
        return
    _run(
        ["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(layout.disk_image), str(layout.disk)],
        "mount the sandbox's disk image",
    )


def release(layout: Layout, timeout: float = 5.0) -> None:
    """Unmount the image and wait until its loop device is gone (the box must be stopped).

    A mount still busy after ``timeout`` is detached lazily: the kernel frees it, and
    the loop device (auto-clearing), once the last process using it has exited."""
    deadline = time.monotonic() + timeout
    while is_mounted(layout.disk):
        done = subprocess.run(["umount", str(layout.disk)], capture_output=True, check=False)
        if done.returncode == 0:
            continue  # stacked mounts (two creates racing a remount) come off one by one
        if time.monotonic() > deadline:
            _run(["umount", "--lazy", str(layout.disk)], "detach the sandbox's disk image")
            return
        time.sleep(0.05)  # a dying box still holds it; the kernel lets go within ms
    while loop_devices(layout.disk_image) and time.monotonic() < deadline:
        time.sleep(0.01)  # auto-clear detaches the loop device just after the unmount


def is_mounted(path: Path) -> bool:
    target = str(path)
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split(" ", 5)
        if len(fields) > 4 and _unescape(fields[4]) == target:
            return True
    return False


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def loop_devices(image: Path) -> list[str]:
    """Loop devices backed by ``image`` (also once it was deleted)."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            name = backing.read_text().strip()
        except OSError:
            continue  # detached meanwhile
        if name.removesuffix(" (deleted)") == str(image):
            found.append("/dev/" + backing.parent.parent.name)
    return found


def usage(folder: Path) -> int:
    """Bytes the files under ``folder`` take on disk (for the ``watch`` mode).

    Raises PermissionError for a folder we cannot list: the box (our own user there) made it
    unreadable, which would hide what is inside from the measurement."""
    total = 0
    stack = [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except PermissionError:
            raise
        except OSError:
            continue  # removed meanwhile
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += info.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip() or f"exit {done.returncode}"
        raise DiskError(f"cannot {what}: {' '.join(argv)}: {detail}")
