"""``nat`` networking: slirp4netns gives the box's network namespace a ``tap0``.

Stdlib only (run by the supervisor). slirp4netns runs on the host side as a normal process,
so the box gets outbound TCP/UDP and DNS (10.0.2.3). ``--disable-host-loopback`` refuses
10.0.2.2 (slirp's alias for the host's 127.0.0.1), and the host filter (``hostfilter.py``)
refuses every other address of the host: slirp4netns starts only once its group is filtered.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time

from hivecell.sandbox.local.hostfilter import HostFilter

NS_GET_USERNS = 0xB701  # ioctl: the user namespace owning a namespace
MTU = 65520


class Slirp:
    """A running slirp4netns; it also exits by itself when the supervisor dies (exit fd)."""

    def __init__(self, proc: subprocess.Popen[bytes], exit_w: int) -> None:
        self.proc = proc
        self._exit_w = exit_w

    def stop(self) -> None:
        if self._exit_w >= 0:
            os.close(self._exit_w)  # slirp4netns exits when its exit fd reaches EOF
            self._exit_w = -1
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Network:
    """slirp4netns plus its entry in the host filter, for one run of a ``nat`` box."""

    def __init__(self, slirp4netns: str, host_filter: HostFilter, sandbox_id: str) -> None:
        self.slirp4netns = slirp4netns
        self.host_filter = host_filter
        self.sandbox_id = sandbox_id
        self.slirp: Slirp | None = None
        self.gid = -1

    def start(self, child_pid: int) -> None:
        """Returns once tap0 is configured; raises OSError (with nothing left) otherwise."""
        _await_loopback(child_pid)
        self.gid = self.host_filter.attach(self.sandbox_id)
        try:
            self.slirp = start(self.slirp4netns, child_pid, self.gid)
        except BaseException:
            self.host_filter.detach(self.sandbox_id)
            raise

    def ensure_filtered(self) -> bool:
        """Puts the host filter back if it was removed; returns whether it had to."""
        return self.host_filter.ensure(self.sandbox_id, self.gid)

    def stop(self) -> None:
        """Stops slirp4netns, then (never before: its sockets would go unfiltered) detaches."""
        if self.slirp is not None:
            self.slirp.stop()
            self.slirp = None
        self.host_filter.detach(self.sandbox_id)


def start(slirp4netns: str, child_pid: int, gid: int) -> Slirp:
    """Attach slirp4netns, running with group ``gid`` only, to the namespace of ``child_pid``
    once its loopback is up; returns once tap0 is configured.

    bwrap may nest a second user namespace inside the one owning the network namespace, so
    slirp4netns must join the *owner* (found with NS_GET_USERNS), not the child's own.
    """
    userns = _owner_userns(child_pid)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    try:
        proc = subprocess.Popen(
            _argv(slirp4netns, child_pid, userns, ready_w, exit_r),
            pass_fds=(userns, ready_w, exit_r),
            stdin=subprocess.DEVNULL,
            group=gid,  # the sockets' fsgid is what the host filter matches
            extra_groups=[],
        )
    except OSError:
        os.close(ready_r)
        os.close(exit_w)
        raise
    finally:
        for fd in (userns, ready_w, exit_r):
            os.close(fd)
    slirp = Slirp(proc, exit_w)
    _await_ready(ready_r, slirp)
    return slirp


def _argv(slirp4netns: str, child_pid: int, userns: int, ready_w: int, exit_r: int) -> list[str]:
    return [
        slirp4netns, "--configure", f"--mtu={MTU}", "--disable-host-loopback",
        "--enable-sandbox", "--enable-seccomp", f"--userns-path=/proc/self/fd/{userns}",
        f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", str(child_pid), "tap0",
    ]  # fmt: skip


def _await_loopback(child_pid: int, timeout: float = 5.0) -> None:
    """Wait until bwrap has set up the box's loopback.

    bwrap adds 127.0.0.1 to ``lo`` with NLM_F_EXCL just after reporting the child pid and
    dies if the address exists, which it does once slirp4netns has brought ``lo`` up. The
    address shows in the namespace's FIB only once bwrap is done with it.
    """
    fib = f"/proc/{child_pid}/net/fib_trie"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(fib) as fh:
            if "127.0.0.1" in fh.read():
                return
        time.sleep(0.0005)
    raise OSError(f"the box's loopback was not set up within {timeout} s")


def _owner_userns(child_pid: int) -> int:
    netns = os.open(f"/proc/{child_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(netns, NS_GET_USERNS)
    finally:
        os.close(netns)


def _await_ready(ready_r: int, slirp: Slirp) -> None:
    try:
        ok = os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
    if not ok:
        slirp.stop()
        raise OSError(f"slirp4netns exited with {slirp.proc.returncode} before configuring tap0")
