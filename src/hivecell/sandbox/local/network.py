"""``nat`` networking: slirp4netns gives the box's network namespace a ``tap0``.

Stdlib only (run by the supervisor). slirp4netns runs on the host side as a normal process,
so the box gets outbound TCP/UDP. ``--disable-host-loopback`` refuses 10.0.2.2 (slirp's alias
for the host's 127.0.0.1), ``--disable-dns`` its DNS relay (10.0.2.3); the host filter
(``hostfilter.py``) decides every other destination: slirp4netns starts only once its group
is filtered. The box's DNS is our forwarder (``dnsproxy.py``), its connections are logged
(``netlog.py``).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from hivecell.sandbox.local import dnsproxy
from hivecell.sandbox.local.dnsproxy import DnsProxy
from hivecell.sandbox.local.hostfilter import BoxRules, HostFilter
from hivecell.sandbox.local.netlog import ConnectionLog
from hivecell.sandbox.netpolicy import name_allowed

NS_GET_USERNS = 0xB701  # ioctl: the user namespace owning a namespace
MTU = 65520
NAMED_MIN_SECONDS = 300  # apps keep addresses past short TTLs; so does the filter
NAMED_MAX_SECONDS = 7 * 24 * 3600


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
    """slirp4netns, its entry in the host filter, our DNS and the connection log, for one
    run of a ``nat`` box. ``plan``: the supervisor plan's ``network_policy`` (see
    ``netpolicy.plan``) plus ``dns_servers``."""

    def __init__(
        self, slirp4netns: str, host_filter: HostFilter, sandbox_id: str, plan: dict[str, Any],
        log_path: Path, dns_listen: tuple[str, int] = dnsproxy.LISTEN,
    ) -> None:  # fmt: skip
        self.slirp4netns = slirp4netns
        self.host_filter = host_filter
        self.policy = plan["policy"]
        self.rules = BoxRules(sandbox_id, self.policy)
        self.log = ConnectionLog(
            log_path, self.rules.open is False, self.rules.cidr4 + self.rules.cidr6
        )
        self.dns = DnsProxy(
            plan["dns_servers"], self._allows, self._answered, self.log.question, dns_listen
        )
        self.slirp: Slirp | None = None
        self.gid = -1
        self._named: dict[str, float] = {}  # address -> when the filter forgets it
        self._named_lock = threading.Lock()  # DNS workers add, the supervisor's loop reads

    def start(self, child_pid: int) -> None:
        """Returns once tap0 is configured; raises OSError (with nothing left) otherwise."""
        _await_loopback(child_pid)
        self.gid = self.host_filter.attach(self.rules)
        try:
            self.dns.start(child_pid)
            self.slirp = start(self.slirp4netns, child_pid, self.gid)
        except BaseException:
            self.dns.stop()
            self.host_filter.detach(self.rules.sandbox_id)
            raise

    def check(self) -> bool:
        """Puts the host filter back if it was removed (returns whether it had to), then
        logs the flows counted since the last call."""
        table = self.host_filter.read()
        repaired = self.host_filter.ensure(self.rules, self.gid, self._named_left(), table)
        if repaired:
            table = self.host_filter.read()
        if table is not None:
            self.log.update(table, self.gid)
        return repaired

    def stop(self) -> None:
        """Stops slirp4netns, then (never before: its sockets would go unfiltered) logs the
        last counts and detaches."""
        if self.slirp is not None:
            self.slirp.stop()
            self.slirp = None
        self.dns.stop()
        try:
            table = self.host_filter.read()
            if table is not None and self.gid >= 0:
                self.log.update(table, self.gid)
        finally:
            self.host_filter.detach(self.rules.sandbox_id)

    def _allows(self, name: str) -> bool:
        return name_allowed(self.policy, name)

    def _answered(self, name: str, addresses: list[tuple[str, int]]) -> None:
        """Before the box sees the answer: remember the names, and (with an allowlist) let
        the box reach the addresses."""
        self.log.named([a for a, _ in addresses], name)
        if self.rules.open or not addresses:
            return
        now = time.monotonic()
        seconds = {a: min(max(ttl, NAMED_MIN_SECONDS), NAMED_MAX_SECONDS) for a, ttl in addresses}
        self.host_filter.add_named(self.gid, seconds)
        with self._named_lock:
            for address, left in seconds.items():
                self._named[address] = now + left

    def _named_left(self) -> dict[str, int]:
        now = time.monotonic()
        with self._named_lock:
            self._named = {a: t for a, t in self._named.items() if t > now}
            return {a: int(t - now) + 1 for a, t in self._named.items()}


def start(slirp4netns: str, child_pid: int, gid: int) -> Slirp:
    """Attach slirp4netns, running with group ``gid`` only, to the namespace of ``child_pid``
    once its loopback is up; returns once tap0 is configured.

    bwrap may nest a second user namespace inside the one owning the network namespace, so
    slirp4netns must join the *owner* (found with NS_GET_USERNS), not the child's own; a
    namespace root made without one (a VM's) is owned by ours, which it must not join.
    """
    userns = _owner_userns(child_pid)
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    fds = (ready_w, exit_r) if userns is None else (userns, ready_w, exit_r)
    try:
        proc = subprocess.Popen(
            _argv(slirp4netns, child_pid, userns, ready_w, exit_r),
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            group=gid,  # the sockets' fsgid is what the host filter matches
            extra_groups=[],
        )
    except OSError:
        os.close(ready_r)
        os.close(exit_w)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    slirp = Slirp(proc, exit_w)
    _await_ready(ready_r, slirp)
    return slirp


def _argv(
    slirp4netns: str, child_pid: int, userns: int | None, ready_w: int, exit_r: int
) -> list[str]:
    owner = [] if userns is None else [f"--userns-path=/proc/self/fd/{userns}"]
    return [
        slirp4netns, "--configure", f"--mtu={MTU}", "--disable-host-loopback", "--disable-dns",
        "--enable-sandbox", "--enable-seccomp", *owner,
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


def _owner_userns(child_pid: int) -> int | None:
    """An fd of the user namespace owning the child's network namespace; None if ours."""
    netns = os.open(f"/proc/{child_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(netns, NS_GET_USERNS)
    finally:
        os.close(netns)
    mine = Path("/proc/self/ns/user").stat()
    theirs = os.fstat(owner)
    if (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino):
        os.close(owner)
        return None
    return owner


def _await_ready(ready_r: int, slirp: Slirp) -> None:
    try:
        ok = os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
    if not ok:
        slirp.stop()
        raise OSError(f"slirp4netns exited with {slirp.proc.returncode} before configuring tap0")
