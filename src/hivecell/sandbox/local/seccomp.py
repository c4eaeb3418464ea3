"""The default seccomp filter every local sandbox runs under (bwrap ``--seccomp FD``).

A deny list in the spirit of Flatpak's and Docker's default profiles: everything is allowed
except the calls that only widen the kernel surface a box can reach (new user namespaces,
mounts, keyrings, eBPF, perf, io_uring, module and kexec loading, clock and swap control,
terminal injection, exotic socket families). Blocked calls fail with an errno, never kill,
so programs take their fallback paths. Compiled with libseccomp (through ``pyseccomp``, a
ctypes binding with libseccomp's own Python API) when the provider plans a start; the
supervisor only opens the resulting file, so it stays stdlib-only.

ptrace stays allowed (as Docker does on kernels >= 4.8, where a tracer can no longer
rewrite a syscall past the filter): the box is its own pid namespace without capabilities,
so only its own processes can be traced, and debuggers inside the box keep working.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
import threading
from pathlib import Path
from typing import Any

# Fail with EPERM whatever the arguments.
DENIED = (
    # namespaces and mounts: new ones are unprivileged only through a user namespace
    "setns", "mount", "umount", "umount2", "pivot_root", "move_mount", "open_tree",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr",
    # kernel keyrings, eBPF, perf counters, io_uring, userfaultfd: frequent exploit paths
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
    # loading code into the kernel
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module", "uselib",
    # host-wide state: swap, reboot, clocks, accounting, quotas, kernel log, raw I/O
    "swapon", "swapoff", "reboot", "settimeofday", "stime", "clock_settime", "clock_adjtime",
    "adjtimex", "acct", "quotactl", "quotactl_fd", "syslog", "vhangup", "ioperm", "iopl",
    "lookup_dcookie", "nfsservctl", "_sysctl", "sysfs", "ustat", "vm86", "vm86old",
    # file handles bypass path permissions
    "open_by_handle_at", "name_to_handle_at",
)  # fmt: skip

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
# clone(2) shares the low byte with the exit signal, so CLONE_NEWTIME only exists for unshare.
CLONE_NAMESPACES = (
    CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
    CLONE_NEWNET,
)  # fmt: skip
UNSHARE_NAMESPACES = (*CLONE_NAMESPACES, CLONE_NEWTIME)

# The families a desktop uses (Flatpak's list): unspec, unix, inet, inet6, netlink.
ALLOWED_FAMILIES = (0, 1, 2, 10, 16)
AF_NETLINK = 16
# netlink: routes (getifaddrs, Chromium's network monitor), sock_diag (ss), uevents (udev).
ALLOWED_NETLINK = (0, 4, 15)

TIOCSTI = 0x5412  # push bytes into a terminal's input: types commands into its reader
TIOCLINUX = 0x541C  # the same for the Linux console (paste selection)

# personality(2) flags that turn off hardening (ASLR, NX, the low-memory guard).
PERSONALITY_FLAGS = (0x0040000, 0x0100000, 0x0200000, 0x0400000, 0x0800000, 0x8000000)


# The other syscall ABIs a process on this machine can use (int 0x80, x32 numbers).
COMPAT_ABIS = {"x86_64": ("x86", "x32"), "aarch64": ("arm",)}


class SeccompUnavailable(Exception):
    """libseccomp cannot be loaded here; the message says how to install it."""


def _library() -> Any:
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: no libseccomp.so
        raise SeccompUnavailable(
            f"cannot load libseccomp ({exc}); install it with apt install libseccomp2"
        ) from exc
    return pyseccomp


def unavailable() -> str | None:
    """Why the filter cannot be built on this host, or None when it can."""
    try:
        program()
    except (SeccompUnavailable, OSError) as exc:
        return str(exc)
    return None


def write(path: Path) -> None:
    """Write the compiled program where the supervisor opens it (atomically)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(program())
    tmp.replace(path)


@functools.cache
def program() -> bytes:
    """The filter as the kernel's BPF, built once per process."""
    sc = _library()
    filt = sc.SyscallFilter(sc.ALLOW)
    _add_arches(sc, filt)
    _add_rules(sc, filt)
    with os.fdopen(os.memfd_create("seccomp-bpf"), "w+b") as out:
        filt.export_bpf(out)
        out.seek(0)
        return out.read()


def abis() -> str:
    """The ABIs the rules cover on this machine, for doctor."""
    return ", ".join((platform.machine(), *COMPAT_ABIS.get(platform.machine(), ())))


def _add_arches(sc: Any, filt: Any) -> None:
    """Cover every ABI the CPU can enter, so a 32-bit syscall cannot bypass the rules;
    any other architecture fails with EPERM."""
    for name in COMPAT_ABIS.get(platform.machine(), ()):
        filt.add_arch(getattr(sc.Arch, name.upper()))
    filt.set_attr(sc.Attr.ACT_BADARCH, sc.ERRNO(errno.EPERM))


def _add_rules(sc: Any, filt: Any) -> None:
    rule = filt.add_rule
    eperm = sc.ERRNO(errno.EPERM)
    for name in DENIED:
        if _known(sc, name):
            rule(eperm, name)
    if not _ptrace_allowed():
        rule(eperm, "ptrace")
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc use clone.
    rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NAMESPACES:
        rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for flag in UNSHARE_NAMESPACES:
        rule(eperm, "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for request in (TIOCSTI, TIOCLINUX):  # the kernel reads an unsigned int: mask the rest
        rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    _add_socket_rules(sc, rule)
    _add_personality_rules(sc, rule, eperm)


def _add_socket_rules(sc: Any, rule: Any) -> None:
    nosupport = sc.ERRNO(errno.EAFNOSUPPORT)
    for family in range(max(ALLOWED_FAMILIES)):
        if family not in ALLOWED_FAMILIES:
            rule(nosupport, "socket", sc.Arg(0, sc.EQ, family))
    # GE also catches values with garbage in the upper half of the register.
    rule(nosupport, "socket", sc.Arg(0, sc.GE, max(ALLOWED_FAMILIES) + 1))
    noproto = sc.ERRNO(errno.EPROTONOSUPPORT)
    netlink = sc.Arg(0, sc.EQ, AF_NETLINK)
    for proto in range(max(ALLOWED_NETLINK)):
        if proto not in ALLOWED_NETLINK:
            rule(noproto, "socket", netlink, sc.Arg(2, sc.EQ, proto))
    rule(noproto, "socket", netlink, sc.Arg(2, sc.GE, max(ALLOWED_NETLINK) + 1))


def _add_personality_rules(sc: Any, rule: Any, eperm: int) -> None:
    """EPERM when a hardening-off flag is set, except for the query 0xffffffff.

    libseccomp allows one comparison per argument and rule, so "flag set and not all bits
    set" becomes one rule per (flag, other bit): (arg & (flag|bit)) == flag.
    """
    for flag in PERSONALITY_FLAGS:
        for shift in range(32):
            bit = 1 << shift
            if bit != flag:
                rule(eperm, "personality", sc.Arg(0, sc.MASKED_EQ, flag | bit, flag))


def _known(sc: Any, name: str) -> bool:
    """libseccomp knows the call on some ABI (it resolves unknown names to -1)."""
    return int(sc.resolve_syscall(sc.Arch.NATIVE, name)) != -1


def _ptrace_allowed() -> bool:
    """Before 4.8 a tracer could change a syscall after the filter had checked it."""
    release = platform.release().split("-")[0].split(".")
    try:
        major, minor = int(release[0]), int(release[1])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (4, 8)
