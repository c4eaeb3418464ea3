"""``python -I -m hivecell.sandbox.local.zygote.supervisors LOCK IDLE_S FD ROOM``.

The supervisor server: every local box and every VM has a host supervisor (local
``supervisor.py``, ``qemu/supervisor.py``), and each used to be a Python of its own (~60 ms
to start and import, ~6.5 MB of private memory per box). This one imports both once and
forks one per sandbox (a ``forkserver``):

    request  JSON {"root": <the sandbox's folder>, "kind": "local" | "qemu"}
             + fds [its log, opened for appending]
    reply    JSON {"pid": <the supervisor's pid>} or {"error": "..."}

The fork runs as a detached supervisor would: a session of its own, stdin /dev/null, stdout
and stderr the log, and the command line ``python -I -m <its supervisor module> ROOT``
(what ``supervised.alive`` and ``ps`` look for). It runs on the host, as root (a
supervisor sets up cgroups, nftables, mounts), with no environment but ``PATH``: the
caller's (API keys and all) never reaches it.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from hivecell.sandbox.local import supervisor
from hivecell.sandbox.local.layout import SUPERVISOR_MODULE
from hivecell.sandbox.local.zygote import forkserver
from hivecell.sandbox.qemu import supervisor as vm_supervisor
from hivecell.sandbox.qemu.layout import SUPERVISOR_MODULE as VM_SUPERVISOR_MODULE

# kind -> (its module, shown as the command line; its entry point, given [root])
KINDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "local": (SUPERVISOR_MODULE, supervisor.main),
    "qemu": (VM_SUPERVISOR_MODULE, vm_supervisor.main),
}

TITLE = "hivecell-supervisors"
FD_COUNT = 1  # the box's log


def preload() -> None:
    """What a supervisor imports only for some boxes (nat, a watched disk cap) or some
    requests (a VM's save)."""
    from hivecell.sandbox.local import disk, hostfilter, network  # noqa: F401
    from hivecell.sandbox.qemu import saverequest, snapshots  # noqa: F401


def spawn_supervisor(raw: bytes, fds: list[int]) -> int:
    """In the server's child: fork the sandbox's supervisor; returns its pid."""
    request = json.loads(raw)
    root, kind = request.get("root"), request.get("kind", "local")
    if not isinstance(root, str) or not Path(root).is_absolute() or not Path(root).is_dir():
        raise ValueError(f"root must be an existing absolute folder, not {root!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    module, entry = KINDS[kind]
    # before the fork: whoever learns the pid must find the supervisor's command line
    forkserver.set_title([sys.executable, "-I", "-m", module, root])
    pid = os.fork()
    if pid == 0:
        _become_supervisor(root, fds[0], entry)
    return pid


def _become_supervisor(root: str, log_fd: int, entry: Callable[[list[str]], int]) -> None:
    code = 1
    try:
        os.setsid()
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        sys.argv = [sys.executable, root]
        code = entry([root])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> int:
    server = forkserver.Server("supervisors", FD_COUNT, spawn_supervisor)
    return forkserver.main(argv, TITLE, server, preload)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
