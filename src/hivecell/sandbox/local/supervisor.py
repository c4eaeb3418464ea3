"""``python -m hivecell.sandbox.local.supervisor DIR``: keeps one sandbox running.

Started detached by the provider so the sandbox outlives the CLI that created it. It sets up
the resource limits, runs bwrap (with ``--die-with-parent``: killing this process kills the
box), attaches slirp4netns in ``nat`` mode (behind the host filter), and exits when the box
does. SIGTERM stops the box. Stdlib only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from hivecell.sandbox.local import identity, limits
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.limits import LimitPlan
from hivecell.sandbox.local.zygote import client

TYPE_CHECKING = False  # not typing's: the supervisor of every sandbox imports this (~0.5 MB)
# network (slirp4netns, the host filter, the DNS proxy) and disk are imported by the boxes
# that use them: an offline box (the default) starts without them, ~6 ms sooner.
if TYPE_CHECKING:
    from typing import Any

    from hivecell.sandbox.local import network

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FILTER_CHECK_SECONDS = 2.0  # how long a flushed host filter may stay missing
DISK_CHECK_SECONDS = 2.0  # how often the ``watch`` disk cap is measured (no loop mounts)
GUEST_BACKLOG = 128
LOG_CAP_BYTES = 16 << 20  # per run: what the box (and we) may add to sandbox.log
# Copies stdin to stdout up to a byte count, then drops the rest until EOF: writers never
# see EPIPE, and stop signals for the supervisor's group leave it reading to the end. A shell
# with dd and cat, not a Python: it runs beside every box for its whole life (~0.4 MB PSS
# instead of ~4). dd, not head: dd writes each read at once (head holds its output until it
# exits, and the log must show a box's last lines while it runs).
COPIER = (
    'trap "" TERM INT HUP; dd bs=65536 count="$1" iflag=count_bytes status=none; '
    'if [ "$(head -c 1 | wc -c)" -gt 0 ]; then '
    'printf "\\n[hivecell] sandbox.log cap reached; dropping further output\\n"; fi; '
    "exec cat >/dev/null"
)


def log(message: str) -> None:
    now = time.time()
    stamp = f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d}"
    print(f"{stamp} supervisor[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class Box:
    """One run of the sandbox: from bwrap start to cleanup."""

    def __init__(self, layout: Layout, plan: dict[str, Any]) -> None:
        self.layout = layout
        self.plan = plan
        self.limits = LimitPlan.from_json(plan["limits"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.child_pid: int | None = None
        self.network: network.Network | None = None
        self.stopping = False
        self.failure: str | None = None  # why the supervisor stopped the box itself
        # A terminal box (terminal.py) runs a command on our own stdio: no guest sockets.
        self.terminal = bool(plan.get("terminal"))

    def run(self) -> int:
        zygote = None
        try:
            # Before this box's own set-up: a zygote started now inherits our mount
            # namespace, and staging gives us one holding this box's files and disk; the
            # zygote, serving every box for as long as it runs, kept them (a removed box's
            # disk stayed attached, its blocks allocated).
            zygote = self._connect_zygote()
            if self.plan.get("identity"):
                _stage_for_unprivileged_bwrap(self.plan)
            limits.setup(self.limits)
            self._start(zygote)
            self._wait()
        except OSError as exc:
            log(f"cannot run the sandbox: {exc}")
        finally:
            if zygote is not None:
                zygote.close()
            code = self._cleanup()
        log(f"box exited with {code}")
        if self.terminal:  # the command's own exit code is the terminal owner's to show
            return code if code >= 0 else 128 - code
        return 0 if code == 0 or self.stopping else 1

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        self._kill()

    def _kill(self) -> None:
        # Killing the namespace's pid 1 tears the whole box down before bwrap reaps it, so
        # when wait() returns no sandbox process is left; bwrap itself is the fallback.
        try:
            if self.child_pid is not None:
                os.kill(self.child_pid, signal.SIGKILL)
            elif self.proc is not None:
                self.proc.kill()
        except ProcessLookupError:
            pass

    def _start(self, zygote: socket.socket | None) -> None:
        with contextlib.ExitStack() as held:
            if zygote is not None:
                held.callback(zygote.close)  # only the boot's start needs it
            args_fd = _args_memfd(self.plan["bwrap_args"])
            seccomp_fd = _open_seccomp(self.plan["seccomp"])
            info_r, info_w = os.pipe()
            block_r, block_w = os.pipe()
            held.callback(os.close, block_w)
            sockets = [] if self.terminal else _bind_sockets(self.layout)
            for sock in sockets:
                # only the box holds them once it runs: if it dies, connects are refused
                held.callback(sock.close)
            pipes = [args_fd, seccomp_fd, info_w, block_r]
            fds = [*pipes, *(s.fileno() for s in sockets)]
            argv = [self.plan["bwrap"], "--args", str(args_fd), "--seccomp", str(seccomp_fd)]
            argv += ["--info-fd", str(info_w)]
            argv += ["--block-fd", str(block_r), "--"]
            stdin: int | None = None if self.terminal else subprocess.DEVNULL
            life = box_end = None
            if zygote is not None:  # bwrap runs BOX_INIT; the zygote forks boot in later
                life, box_end = socket.socketpair()
                held.callback(life.close)
                argv += client.BOX_INIT
                stdin = box_end.fileno()
            else:
                argv += self.plan["command"]
                argv += [] if self.terminal else _socket_args(sockets)
            try:
                self._popen(argv, fds, stdin)
            finally:
                for fd in pipes:
                    os.close(fd)
                if box_end is not None:
                    box_end.close()
                if zygote is None:
                    for sock in sockets:
                        sock.close()
            self.child_pid = _read_child_pid(info_r)
            if self.stopping or self.child_pid is None:
                self._kill()  # a stop request raced the start, or bwrap failed
                return
            if self.plan["network"] == "nat":
                self.network = self._network()
                self.network.start(self.child_pid)
            os.write(block_w, b"go")  # let the box run only once its network is in place
            if zygote is not None and life is not None:
                self._boot_from_zygote(zygote, life, sockets)

    def _popen(self, argv: list[str], fds: list[int], stdin: int | None) -> None:
        # The box writes to a pipe (cap_output), never to the log file itself: a box
        # process's /proc/<pid>/fd/1 would otherwise reopen the host's log for writing.
        # env={}: bwrap stays the box's pid 1, whose /proc/1/environ the box can read;
        # ours is the caller's (API keys and all). The box's own comes from --setenv.
        self.proc = subprocess.Popen(
            argv, pass_fds=fds, stdin=stdin, preexec_fn=self._enter_box, env={}
        )

    def _connect_zygote(self) -> socket.socket | None:
        plan = self.plan.get("zygote")
        if plan is None or self.terminal:
            return None
        try:
            return client.connect(plan)
        except OSError as exc:
            log(f"no zygote ({exc}); the box boots by itself")
            return None

    def _boot_from_zygote(
        self, zygote: socket.socket, life: socket.socket, sockets: list[socket.socket]
    ) -> None:
        """Once bwrap runs BOX_INIT (the box is set up), have the zygote fork boot into it."""
        if life.recv(1) != b"x":
            return  # the box ended first (bwrap failed, or a stop); the log says why
        assert self.child_pid is not None
        request = {
            "argv": self.plan["command"],
            "env": self.plan["boot_env"],
            "cwd": self.plan["boot_cwd"],
            "uid": self.plan["zygote"]["uid"],
            "gid": self.plan["zygote"]["gid"],
            "umask": _umask(),
            "cgroups": list(self.limits.cgroups),
        }
        pidfd = os.pidfd_open(self.child_pid)
        seccomp_fd = _open_seccomp(self.plan["seccomp"])
        guest, vnc = sockets
        try:
            fds = [pidfd, seccomp_fd, 2, life.fileno(), guest.fileno(), vnc.fileno()]
            pid = client.spawn(zygote, request, fds)
            log(f"boot forked from the zygote: pid {pid}")
        except client.ZygoteError as exc:
            if not self.stopping:
                self._fail(str(exc))
        finally:
            os.close(pidfd)
            os.close(seccomp_fd)

    def _wait(self) -> None:
        """Until the box exits; a ``nat`` box's host filter is checked and its connections
        logged, and a ``watch`` disk cap measured, meanwhile."""
        assert self.proc is not None
        checks = self._periodic_checks()
        if checks:
            pidfd = os.pidfd_open(self.proc.pid)
            interval = min(FILTER_CHECK_SECONDS, DISK_CHECK_SECONDS)
            try:
                while not select.select([pidfd], [], [], interval)[0]:
                    for check in checks:
                        check()
            finally:
                os.close(pidfd)
        self.proc.wait()

    def _periodic_checks(self) -> list[Callable[[], None]]:
        checks: list[Callable[[], None]] = []
        if self.network is not None:
            checks.append(functools.partial(self._check_filter, self.network))
        watch = self.plan.get("disk", {})
        if watch.get("mode") == "watch":
            checks.append(
                functools.partial(self._check_disk, Path(watch["folder"]), watch["cap_bytes"])
            )
        return checks

    def _check_disk(self, folder: Path, cap: int) -> None:
        """No loop mount here: measure, and stop the box once it is over its cap."""
        from hivecell.sandbox.local import disk

        try:
            used = disk.usage(folder)
        except PermissionError as exc:  # fail closed: what it hides might be over the cap
            self._fail(f"disk cap cannot be measured: the sandbox made {exc.filename} unreadable")
            return
        if used > cap:
            self._fail(
                f"disk cap exceeded: the sandbox wrote {used >> 20} MiB, over its "
                f"{cap >> 20} MiB (disk_mb); free space in it or raise disk_mb"
            )

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log(f"stopping the box: {reason}")
            self._kill()

    def _check_filter(self, net: network.Network) -> None:
        try:
            if net.check():
                log("the host filter had been removed (a ruleset flush?); put it back")
        except OSError as exc:
            log(f"cannot put the host filter back, stopping the box: {exc}")
            self._kill()  # fail closed

    def _network(self) -> network.Network:
        from hivecell.sandbox.local import network
        from hivecell.sandbox.local.hostfilter import HostFilter

        host_filter = HostFilter(self.plan["nft"])
        return network.Network(
            self.plan["slirp4netns"],
            host_filter,
            self.layout.sandbox_id,
            self.plan["nat"],
            self.layout.network_log,
        )

    def _enter_box(self) -> None:
        """Between fork and exec of bwrap: join the cgroups (needs root), then drop root."""
        limits.join(self.limits)
        who = self.plan.get("identity")
        if who:
            identity.drop(who["uid"], who["gid"])

    def _cleanup(self) -> int:
        code = -1
        if self.proc is not None:
            if self.proc.poll() is None:
                self._kill()
            code = self.proc.wait()
        if self.network is not None:
            try:
                self.network.stop()
            except OSError as exc:  # destroy retries; the box and slirp4netns are gone already
                log(f"cannot detach from the host filter: {exc}")
        left = limits.cleanup(self.limits)
        if left:
            log(f"could not remove cgroups {left}")
        if self.failure is not None:
            _record_failure(self.layout, self.failure, code)
        else:
            _record_exit(self.layout, code, self.stopping)
        return code


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _args_memfd(args: list[str]) -> int:
    """bwrap reads its options from here: host paths stay out of the box's /proc/1/cmdline."""
    fd = os.memfd_create("bwrap-args", 0)
    os.write(fd, b"".join(a.encode() + b"\0" for a in args))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _open_seccomp(path: str) -> int:
    """The box's compiled seccomp filter (built by the provider, see seccomp.py), for bwrap's
    ``--seccomp FD``. It lives in the sandbox's folder, out of the box's reach; a link planted
    there is refused rather than followed."""
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _bind_sockets(layout: Layout) -> list[socket.socket]:
    """The guest's and the VNC relay's unix sockets, bound in a folder the box never sees.

    The host connects to these paths, so they must not live where the box writes (it could
    replace them with links to another sandbox's socket or a host service). The box gets
    them as fds. The guest's listens from the start: the provider's first ping waits in its
    backlog and is answered the moment the agent serves (no polling, whose sleeps and CPU
    cost a cold start ~10 ms); the VNC relay's listens once the relay runs.
    """
    bound = []
    try:
        for path in (layout.guest_socket, layout.vnc_socket):
            path.unlink(missing_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bound.append(sock)
            sock.bind(str(path))
        bound[0].listen(GUEST_BACKLOG)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def _socket_args(sockets: list[socket.socket]) -> list[str]:
    guest, vnc = sockets
    return ["--listen-fd", str(guest.fileno()), "--vnc-fd", str(vnc.fileno())]


def _read_child_pid(info_r: int) -> int | None:
    data = b""
    try:
        while chunk := os.read(info_r, 4096):
            data += chunk
            try:
                return int(json.loads(data)["child-pid"])
            except ValueError:
                continue  # partial JSON; read more
    finally:
        os.close(info_r)
    return None  # bwrap failed before starting the box; its error is in the log


def _record_exit(layout: Layout, code: int, stopped: bool) -> None:
    if stopped or code == 0:
        status, detail = "stopped", "stopped on request" if stopped else "the guest shut down"
    else:
        status, detail = "error", f"the sandbox exited with code {code}; see {layout.log}"
    try:
        layout.record_exit(status, detail, code)
    except OSError as exc:  # the folder was removed under a running box
        log(f"cannot record the exit: {exc}")


def _record_failure(layout: Layout, reason: str, code: int) -> None:
    try:
        layout.record_exit("error", reason, code)
    except OSError as exc:
        log(f"cannot record the exit: {exc}")


def _stage_for_unprivileged_bwrap(plan: dict[str, Any]) -> None:
    """bwrap will run as the sandbox's uid: give it reachable copies of 0700-hidden sources."""
    identity.private_mounts()
    plan["bwrap_args"] = identity.stage_binds(plan["bwrap_args"])


def detach(pid_fd: int) -> None:
    """Fork away from the launcher, which exits at once: the supervisor is then nobody's
    child (so never a zombie in a long-lived host process); tell the launcher our pid."""
    if os.fork() > 0:
        os._exit(0)
    os.write(pid_fd, str(os.getpid()).encode())
    os.close(pid_fd)


def cap_output(limit: int) -> None:
    """Route our stdout/stderr, which bwrap and every process in the box inherit, through a
    copier that writes at most ``limit`` bytes to the log. Without it the box fills the host
    disk by writing to /proc/1/fd/1 (bwrap's, owned by the box's user), which also showed it
    the log's host path."""
    read_fd, write_fd = os.pipe()
    try:
        subprocess.Popen(
            ["/bin/sh", "-c", COPIER, "copier", str(limit)],
            stdin=read_fd,
            start_new_session=True,  # out of reach of signals sent to our group
        )
    finally:
        os.close(read_fd)
    for target in (1, 2):
        os.dup2(write_fd, target)
    os.close(write_fd)


def _record_pid(layout: Layout) -> None:
    """A terminal box runs under its caller, which records no pid: without this the box
    would list as stopped while it runs, and capacity and metrics would not count it."""
    from hivecell.sandbox.local import state  # pydantic: only terminal boxes pay for it

    meta = state.load(layout)
    if meta is not None:
        meta.supervisor_pid = os.getpid()
        state.save(layout, meta)


def main(argv: list[str]) -> int:
    """argv: the sandbox folder, then optionally a fd on which to report our pid."""
    layout = Layout(Path(argv[0]).resolve())
    terminal = argv[1:] == ["--terminal"]  # in the foreground, on the caller's terminal
    if len(argv) > 1 and not terminal:
        detach(int(argv[1]))
    if terminal:  # our own lines go to the log; the terminal is the command's
        sys.stderr = open(layout.log, "a", buffering=1)  # noqa: SIM115 - for the whole run
        _record_pid(layout)
    else:
        cap_output(LOG_CAP_BYTES)
    box = Box(layout, json.loads(layout.plan.read_text()))
    for sig in STOP_SIGNALS:
        if not (terminal and signal.getsignal(sig) == signal.SIG_IGN):  # a Ctrl-C, there
            signal.signal(sig, box.stop)
    log(f"starting {layout.sandbox_id} ({box.limits.describe()}, network={box.plan['network']})")
    return box.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
