"""``python3 -m hivecell.guest.rootctl DEVICE``: the root end of a VM's control port.

The guest agent runs as the sandbox user; what only root may do for the host runs here, in
a small process the session script starts as root, reading one ``ID COMMAND [ARGS]`` line
at a time from the port (``org.hivecell.control.0``, root's only) and answering ``ID ok`` or
``ID error WHY`` (the host end is hivecell/sandbox/qemu/guestctl.py):

- ``come-back TIME HOSTNAME SEED``: after a restore from a saved state: the clock, the
  sandbox's own name, and fresh randomness. The kernel's random generator was saved with
  the state, so every clone of it would produce the same "random" bytes: the host's seed is
  credited to the pool and the generator reseeded at once (RNDADDENTROPY, RNDRESEEDCRNG; the
  template's kernel has no vmgenid driver to do it).
- ``mount`` / ``umount``: /shared over virtio-fs (hot-plugged: waits for it to probe).
- ``drop-caches``: before a state is saved, so it is small.

A long-lived process, not a shell loop: after a restore it is already in memory and runs no
program (under emulation, each one read back from disk costs a fraction of a second).
Stdlib only, so it starts in a moment.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2
SHARED = b"/shared"
FOLDERS = ("inbox", "outbox", "workspace")
MAX_LINE = 4096
MOUNT_TRIES = 200  # every 0.1 s: ~20 s for a hot-plugged device to show up

_libc = ctypes.CDLL(None, use_errno=True)


class Failed(Exception):
    pass


def _mounted() -> bool:
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == SHARED.decode() for line in mounts)


def mount(tries: int = MOUNT_TRIES) -> None:
    for attempt in range(tries + 1):
        if _mounted():
            break
        if _libc.mount(b"shared", SHARED, b"virtiofs", MS_NOSUID | MS_NODEV, None) == 0:
            break
        if attempt == tries:
            raise Failed(f"cannot mount /shared: {os.strerror(ctypes.get_errno())}")
        time.sleep(0.1)  # a hot-plugged device takes a moment to probe
    for folder in FOLDERS:  # the host made them; a fork's copy may lack one
        Path("/shared", folder).mkdir(exist_ok=True)


def umount() -> None:
    if _mounted() and _libc.umount2(SHARED, 0) != 0 and _libc.umount2(SHARED, MNT_DETACH) != 0:
        raise Failed(f"cannot unmount /shared: {os.strerror(ctypes.get_errno())}")


def come_back(now: str, hostname: str, seed: str) -> None:
    time.clock_settime(time.CLOCK_REALTIME, float(now))
    socket.sethostname(hostname)
    entropy = bytes.fromhex(seed)
    fd = os.open("/dev/urandom", os.O_WRONLY)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(entropy) * 8, len(entropy)) + entropy)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


COMMANDS: dict[str, Callable[..., None]] = {
    "mount": mount,
    "umount": umount,
    "come-back": come_back,
    "drop-caches": drop_caches,
}


def handle(line: str) -> str:
    words = line.split()
    if len(words) < 2:
        return f"{words[0] if words else '?'} error no command"
    tag, command, args = words[0], words[1], words[2:]
    run = COMMANDS.get(command)
    if run is None:
        return f"{tag} error unknown command {command}"
    try:
        run(*args)
    except (Failed, OSError, ValueError, TypeError) as exc:
        return f"{tag} error {command}: {exc}".replace("\n", " ")
    return f"{tag} ok"


def serve(device: str) -> None:
    fd = os.open(device, os.O_RDWR)
    os.write(fd, b"ready\n")
    pending = b""
    while True:
        data = os.read(fd, 4096)
        if not data:  # no host on the port: it blocks rather than end, but be safe
            time.sleep(0.1)
            continue
        pending += data
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            reply = handle(raw[:MAX_LINE].decode(errors="replace"))
            os.write(fd, reply.encode() + b"\n")
        if len(pending) > MAX_LINE:  # a line that never ends: drop it
            pending = b""


def main(argv: list[str]) -> int:
    # after a boot or a reboot the device is there already; a restored guest gets it
    # hot-plugged, then is asked
    with contextlib.suppress(Failed):
        mount(tries=0)
    serve(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
