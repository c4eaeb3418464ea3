"""``python -m hivecell.sandbox.local.supervisor DIR``: keeps one sandbox running.

Started detached by the provider so the sandbox outlives the CLI that created it. It sets up
the resource limits, runs bwrap (with ``--die-with-parent``: killing this process kills the
box), attaches slirp4netns in ``nat`` mode (behind the host filter), and exits when the box
does. SIGTERM stops the box. Stdlib only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from hivecell.sandbox.local import limits, network
from hivecell.sandbox.local.hostfilter import HostFilter
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.limits import LimitPlan

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FILTER_CHECK_SECONDS = 2.0  # how long a flushed host filter may stay missing


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
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

    def run(self) -> int:
        try:
            limits.setup(self.limits)
            self._start()
            self._wait()
        except OSError as exc:
            log(f"cannot run the sandbox: {exc}")
        finally:
            code = self._cleanup()
        log(f"box exited with {code}")
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

    def _start(self) -> None:
        args_fd = _args_memfd(self.plan["bwrap_args"])
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        fds = [args_fd, info_w, block_r]
        argv = [self.plan["bwrap"], "--args", str(args_fd), "--info-fd", str(info_w)]
        argv += ["--block-fd", str(block_r), "--", *self.plan["command"]]
        try:
            self.proc = subprocess.Popen(
                argv, pass_fds=fds, stdin=subprocess.DEVNULL, preexec_fn=self._join_limits
            )
        finally:
            for fd in fds:
                os.close(fd)
        self.child_pid = _read_child_pid(info_r)
        try:
            if self.stopping or self.child_pid is None:
                self._kill()  # a stop request raced the start, or bwrap failed
                return
            if self.plan["network"] == "nat":
                self.network = self._network()
                self.network.start(self.child_pid)
            os.write(block_w, b"go")  # let the box run only once its network is in place
        finally:
            os.close(block_w)

    def _wait(self) -> None:
        """Until the box exits; a ``nat`` box's host filter is checked and its connections
        logged meanwhile."""
        assert self.proc is not None
        if self.network is not None:
            pidfd = os.pidfd_open(self.proc.pid)
            try:
                while not select.select([pidfd], [], [], FILTER_CHECK_SECONDS)[0]:
                    self._check_filter(self.network)
            finally:
                os.close(pidfd)
        self.proc.wait()

    def _check_filter(self, net: network.Network) -> None:
        try:
            if net.check():
                log("the host filter had been removed (a ruleset flush?); put it back")
        except OSError as exc:
            log(f"cannot put the host filter back, stopping the box: {exc}")
            self._kill()  # fail closed

    def _network(self) -> network.Network:
        host_filter = HostFilter(self.plan["nft"])
        return network.Network(
            self.plan["slirp4netns"],
            host_filter,
            self.layout.sandbox_id,
            self.plan["nat"],
            self.layout.network_log,
        )

    def _join_limits(self) -> None:
        limits.join(self.limits)

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
        _record_exit(self.layout, code, self.stopping)
        return code


def _args_memfd(args: list[str]) -> int:
    """bwrap reads its options from here: host paths stay out of the box's /proc/1/cmdline."""
    fd = os.memfd_create("bwrap-args", 0)
    os.write(fd, b"".join(a.encode() + b"\0" for a in args))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


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


def detach(pid_fd: int) -> None:
    """Fork away from the launcher, which exits at once: the supervisor is then nobody's
    child (so never a zombie in a long-lived host process); tell the launcher our pid."""
    if os.fork() > 0:
        os._exit(0)
    os.write(pid_fd, str(os.getpid()).encode())
    os.close(pid_fd)


def main(argv: list[str]) -> int:
    """argv: the sandbox folder, then optionally a fd on which to report our pid."""
    layout = Layout(Path(argv[0]).resolve())
    if len(argv) > 1:
        detach(int(argv[1]))
    box = Box(layout, json.loads(layout.plan.read_text()))
    for sig in STOP_SIGNALS:
        signal.signal(sig, box.stop)
    log(f"starting {layout.sandbox_id} ({box.limits.describe()}, network={box.plan['network']})")
    return box.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
