"""``python -m hivecell.sandbox.local.zygote.server LOCK IDLE_S FD ROOM``: the zygote itself.

Started by a supervisor (``client.connect``) with its listening socket as ``FD``, inside a
bwrap that gives it only a mount namespace with the box's view of the Python runtime. It
imports what boot and the agent need, then serves as a ``forkserver``:

    request  JSON (see ``Request``) + fds
             [box pidfd, seccomp program, log, life, guest socket, VNC socket]
    reply    JSON {"pid": <host pid of the box's boot>} or {"error": "..."}

For each request its child joins the box (``join.enter``) and forks the boot process there
(``join.confine``, then ``hivecell.guest.boot``). Only root (the supervisors) may connect.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import traceback

from hivecell.sandbox.local.zygote import client, forkserver, join

FD_COUNT = 6  # box pidfd, seccomp, log, life, guest socket, VNC socket
# where the boot process finds what the box's bwrap would have given it
BOOT_FDS = {"listen": 3, "vnc": 4, "life": 5}


def preload() -> None:
    """Everything boot and the agent import, including what the agent loads lazily."""
    from hivecell.guest import boot, policy  # noqa: F401 - policy: read by every agent

    boot.preload((*boot.AGENT_MODULES, *boot.LAZY_MODULES))
    from hivecell.guest import context, run  # noqa: F401


class Request:
    """What the supervisor asks for; checked before anything is done with it."""

    def __init__(self, raw: bytes) -> None:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("the request is not a JSON object")
        self.argv = _strings(data, "argv")
        env = data.get("env")
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ValueError("env must map strings to strings")
        self.env: dict[str, str] = env
        self.cgroups = _strings(data, "cgroups")
        self.cwd = _str(data, "cwd")
        self.uid, self.gid, self.umask = (_int(data, k) for k in ("uid", "gid", "umask"))
        if not self.argv or self.uid <= 0 or self.gid <= 0:
            raise ValueError("argv must not be empty and uid/gid must not be root")


def _int(data: dict[str, object], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} must be an integer")
    return value


def _str(data: dict[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _strings(data: dict[str, object], key: str) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings")
    return value


def spawn_boot(raw: bytes, fds: list[int]) -> int:
    """In the zygote's child: join the box, fork its boot process there; returns its pid."""
    box_pidfd, seccomp_fd = fds[0], fds[1]
    request = Request(raw)
    program = os.read(seccomp_fd, 1 << 20)
    boot_argv = [*request.argv, *_fd_args()]
    forkserver.set_title(boot_argv)
    join.enter(box_pidfd, request.cgroups)
    pid = os.fork()
    if pid == 0:
        _become_boot(request, program, boot_argv, fds[2:])
    return pid


def _fd_args() -> list[str]:
    return [arg for name, fd in BOOT_FDS.items() for arg in (f"--{name}-fd", str(fd))]


def _become_boot(request: Request, program: bytes, argv: list[str], fds: list[int]) -> None:
    """The box's boot process; never returns."""
    code, life = 1, -1
    try:
        _arrange_fds(*fds)
        life = BOOT_FDS["life"]
        join.confine(request.uid, request.gid, program)
        os.umask(request.umask)
        os.environ.clear()
        os.environ.update(request.env)
        os.chdir(request.cwd)
        code = _run_boot(argv)
    except BaseException:  # the box's log must say why it never came up
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            if life >= 0:  # the box's exit code (see client.BOX_INIT); else it sees EOF
                os.write(life, f"{code}\n".encode())
        finally:
            os._exit(code)


def _arrange_fds(*fds: int) -> None:
    """stdin /dev/null, stdout and stderr the box's log, the sockets where boot expects
    them; nothing else of the zygote's stays open."""
    # above every target first, so no dup2 overwrites a source still to be moved
    log_fd, life, listen, vnc = (fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds)
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    for name, fd in (("listen", listen), ("vnc", vnc), ("life", life)):
        os.dup2(fd, BOOT_FDS[name])
    os.closerange(max(BOOT_FDS.values()) + 1, os.sysconf("SC_OPEN_MAX"))


def _run_boot(argv: list[str]) -> int:
    """hivecell.guest.boot's main, exiting as its interpreter would."""
    from hivecell.guest import boot

    boot.reset_clock()
    sys.argv = argv
    try:
        return boot.main(argv[argv.index(boot.__name__) + 1 :])
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def main(argv: list[str]) -> int:
    # Boot processes become the server's children (a subreaper), not the box's init's: the
    # kernel reparents a process forked into a namespace to the forker's side of it.
    server = forkserver.Server("zygote", FD_COUNT, spawn_boot)
    return forkserver.main(argv, client.TITLE, server, preload)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
