"""The supervisor's side of the zygote: connect (starting it if none serves), ask for a boot.

Stdlib only: the supervisor of every box imports it. A box booted by the zygote runs
``BOX_INIT`` as bwrap's command instead of boot: a shell that says it runs (bwrap has set
the box up by then, so its namespaces are final) and then waits for boot's exit code on
the same socket, which becomes the box's own exit code, as if bwrap had run boot. Boot
dying without a word (killed) leaves it EOF: the box ends with an error.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import logging
import socket
import subprocess
import time
from pathlib import Path

_log = logging.getLogger("hivecell.sandbox")

TYPE_CHECKING = False  # not typing's: the supervisor of every sandbox imports this
if TYPE_CHECKING:
    from typing import Any

TITLE = "hivecell-zygote"  # the zygote's command line: this, then its socket's path
BOX_INIT = ["/bin/sh", "-c", 'printf x >&0; read -r code; exit "${code:-1}"', "hivecell-box"]
REPLY_TIMEOUT = 60.0  # the first request waits for the zygote's imports; a loaded host is slow
# Room for the boot command line the zygote's forks show (forkserver.set_title): its own command
# line must be at least that long, so it ends with this many spaces.
TITLE_ROOM = 768


class ZygoteError(OSError):
    """The zygote could not be reached or could not start the box's boot."""


def connect(plan: dict[str, Any]) -> socket.socket:
    """A connection to the zygote ``plan`` names, starting one first if none serves.

    Under the lock a server also takes to leave: a connection made here is always served
    (see forkserver.Server.serve)."""
    folder = Path(plan["socket"]).parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with Path(plan["lock"]).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(plan["socket"])
        if conn is None:
            _start(plan)
            conn = _connect(plan["socket"])
        if conn is None:
            raise ZygoteError(f"cannot connect to the zygote just started; see {plan['log']}")
        return conn


def _connect(path: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    return conn


def _start(plan: dict[str, Any]) -> None:
    """Bind its socket (so connects queue up while it imports) and start it, detached."""
    with contextlib.suppress(FileNotFoundError):  # a zygote that died without leaving
        Path(plan["socket"]).unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(plan["socket"])
        Path(plan["socket"]).chmod(0o600)
        listener.listen(128)
        fd = listener.fileno()
        argv = ["setsid", "--fork", *plan["command"], str(fd), " " * TITLE_ROOM]
        with Path(plan["log"]).open("ab") as log:
            # setsid --fork: the server is not our child (never our zombie; init's, or the
            # supervisor server's when a forked supervisor starts the zygote: a subreaper)
            # and in a session of its own; its parent exits at once.
            subprocess.run(argv, pass_fds=(fd,), stdin=subprocess.DEVNULL, stdout=log,
                           stderr=log, env=plan.get("env", {}), check=True)  # fmt: skip
    finally:
        listener.close()


def start_or_spawn(
    plan: dict[str, Any] | None,
    module: str,
    root: Path,
    log: Path,
    *,
    kind: str = "local",
    env: dict[str, str] | None = None,
) -> int:
    """A sandbox's supervisor (``kind``: a local box's, or a VM's: "qemu"; ``module`` its
    module): forked by the supervisor server ``plan`` names, or, without one (not root) or
    when it cannot be reached, a Python of its own with ``env``. Returns its pid."""
    if plan is not None:
        try:
            return start_supervisor(plan, root, log, kind)
        except OSError as exc:  # the sandbox still starts
            _log.warning("no supervisor server (%s); see %s", exc, plan["log"])
    from hivecell.sandbox import supervised

    return supervised.start(module, root, log, env)


def start_supervisor(plan: dict[str, Any], root: Path, log: Path, kind: str = "local") -> int:
    """A sandbox's supervisor (``kind``: a local box's, or a VM's: "qemu"), forked by the
    supervisor server ``plan`` names; returns its pid."""
    with log.open("ab") as out:
        out.write(f"--- start {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        out.flush()
        with connect(plan) as conn:
            return spawn(conn, {"root": str(root), "kind": kind}, [out.fileno()])


def spawn(conn: socket.socket, request: dict[str, Any], fds: list[int]) -> int:
    """Ask for the box's boot; returns its host pid.

    ``fds``: a pidfd of the box's pid 1, its seccomp program, the log, the life socket, the
    guest's and the VNC relay's listening sockets."""
    conn.settimeout(REPLY_TIMEOUT)
    try:
        conn.sendmsg(
            [json.dumps(request).encode()],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
        )
        raw = conn.recv(65536)
    except OSError as exc:
        raise ZygoteError(f"the zygote did not answer: {exc}") from exc
    if not raw:
        raise ZygoteError("the zygote hung up without an answer")
    reply = json.loads(raw)
    if "error" in reply:
        raise ZygoteError(f"the zygote could not start the box's boot: {reply['error']}")
    return int(reply["pid"])
