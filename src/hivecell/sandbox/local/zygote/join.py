"""Turn a forked copy of the zygote into a process of one running box.

The box is bwrap's: its namespaces, its cgroups, its uid, its seccomp filter. bwrap puts a
process there by exec'ing it; a forked zygote copy gets there step by step, and every step
must end exactly where bwrap would have put it, or the copy is a way out of the box.

In the zygote's child (host root, single-threaded): ``enter`` joins the box's cgroups, drops
the supplementary groups and joins all its namespaces at once through a pidfd of the box's
pid 1 (the kernel orders the joins and checks each), so the next fork lands in the box's PID
namespace. In that grandchild, ``confine``: a session of its own, the box's uid and gid,
every capability gone (bounding, ambient and the three sets: host root is unmapped in the
box, so the usual 0 -> non-0 drop does not happen), ``no_new_privs``, then the box's own
seccomp program, last, as bwrap loads it.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from hivecell.sandbox.local.libc import check, libc

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (
    0x08000000, 0x10000000, 0x20000000, 0x40000000,
)  # fmt: skip
# bwrap --unshare-all: every namespace the box has, joined in one setns (time is not one)
BOX_NAMESPACES = (
    CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    | CLONE_NEWCGROUP
)  # fmt: skip
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 4, 24, 22, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SECCOMP_MODE_FILTER = 2
CAPABILITY_VERSION_3 = 0x20080522
CAP_LAST_CAP = Path("/proc/sys/kernel/cap_last_cap")
BPF_INSTRUCTION_BYTES = 8


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def enter(box_pidfd: int, cgroups: list[str]) -> None:
    """In the zygote's child, as host root: into the box's cgroups and namespaces.

    Only a box: a process in our own user namespace is not one (joining it would leave a
    "boot" on the host). Cgroups first (as root on the host's hierarchy; the box's cgroup
    namespace then shows them as its root). Groups before the user namespace: the box's
    denies setgroups."""
    target = _pidfd_pid(box_pidfd)
    if Path(f"/proc/{target}/ns/user").readlink() == Path("/proc/self/ns/user").readlink():
        raise OSError(f"process {target} is not a box: it shares the host's user namespace")
    pid = str(os.getpid())
    for cg in cgroups:
        Path(cg, "cgroup.procs").write_text(pid)
    os.setgroups([])
    lib = libc()
    check(lib.setns(box_pidfd, BOX_NAMESPACES), "setns into the box")


def _pidfd_pid(pidfd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{pidfd}").read_text().splitlines():
        if line.startswith("Pid:") and int(line.split()[1]) > 0:
            return int(line.split()[1])
    raise OSError("the box's pidfd names no live process")


def confine(uid: int, gid: int, seccomp_program: bytes) -> None:
    """In the grandchild, inside the box's namespaces: become the box's user for good."""
    os.setsid()  # bwrap --new-session: no way to push input into the host's terminal
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    lib = libc()
    lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]  # fmt: skip
    drop_capabilities(lib)
    check(lib.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    # The uid change made us undumpable; an exec'd box process is dumpable (and nothing in
    # the zygote's memory is secret: it never holds more than what boxes are told anyway).
    check(lib.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "PR_SET_DUMPABLE")
    load_seccomp(lib, seccomp_program)


def drop_capabilities(lib: ctypes.CDLL) -> None:
    last = int(CAP_LAST_CAP.read_text())
    for cap in range(last + 1):
        check(lib.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    check(lib.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient")
    header = _CapHeader(CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero: no effective, permitted or inheritable capability
    check(lib.capset(ctypes.byref(header), data), "capset")


def load_seccomp(lib: ctypes.CDLL, program: bytes) -> None:
    """The box's filter (seccomp.py), as bwrap's ``--seccomp`` loads it."""
    if not program or len(program) % BPF_INSTRUCTION_BYTES:
        raise OSError(f"the box's seccomp program is malformed ({len(program)} bytes)")
    code = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // BPF_INSTRUCTION_BYTES, ctypes.addressof(code))
    check(
        lib.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0),
        "loading the box's seccomp filter",
    )
