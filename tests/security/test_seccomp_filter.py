"""Edge cases of the compiled filter, loaded into a forked child on the host (no sandbox).

The in-box tests (test_seccomp.py) try each blocked call; these pin the argument rules whose
encoding is subtle: personality's query value, upper register halves, socket families.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
from collections.abc import Callable

from hivecell.sandbox.local import seccomp

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
PR_SET_NO_NEW_PRIVS = 38
NR_SECCOMP = 317
NR_PERSONALITY = 135
NR_IOCTL = 16
NR_UNSHARE = 272


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _errno_of(nr: int, *args: int) -> int:
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
    return 0 if result >= 0 else ctypes.get_errno()


def _under_filter(checks: Callable[[], dict[str, int]]) -> dict[str, int]:
    """Run ``checks`` in a child that loaded the default filter; returns what it reported."""
    program = seccomp.program()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports through the pipe and never returns
        code = 0
        try:
            buf = ctypes.create_string_buffer(program, len(program))
            prog = SockFprog(len(program) // 8, ctypes.addressof(buf))
            if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                code = 90
            elif libc.syscall(ctypes.c_long(NR_SECCOMP), 1, 0, ctypes.byref(prog)) != 0:
                code = 91  # SECCOMP_SET_MODE_FILTER refused the program
            else:
                os.write(write_end, json.dumps(checks()).encode())
        except BaseException:
            code = 92
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    report: dict[str, int] = json.loads(data)
    return report


def _socket_errno(family: int, kind: int, proto: int = 0) -> int:
    try:
        socket.socket(family, kind, proto).close()
    except OSError as exc:
        return exc.errno or -1
    return 0


def _personality_checks() -> dict[str, int]:
    values = {
        "query": 0xFFFFFFFF,
        "linux": 0,
        "linux32": 0x0008,
        "uname26": 0x0020000,
        "no_aslr": 0x0040000,
        "no_aslr_with_top_bit": 0x80040000,  # not the query: still a flag change
        "read_implies_exec": 0x0400000,
        "no_aslr_upper_garbage": 0x1_0004_0000,  # the kernel reads the low 32 bits only
    }
    report = {}
    for name, value in values.items():
        pid = os.fork()  # each in its own child: a change would stick
        if pid == 0:
            os._exit(_errno_of(NR_PERSONALITY, value))
        report[name] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return report


def test_personality_allows_the_query_and_safe_values_only() -> None:
    report = _under_filter(_personality_checks)
    assert report == {
        "query": 0,
        "linux": 0,
        "linux32": 0,
        "uname26": 0,
        "no_aslr": errno.EPERM,
        "no_aslr_with_top_bit": errno.EPERM,
        "read_implies_exec": errno.EPERM,
        "no_aslr_upper_garbage": errno.EPERM,
    }


def _register_checks() -> dict[str, int]:
    tiocsti_high = (1 << 32) | seccomp.TIOCSTI  # same request for the kernel
    return {
        "tiocsti_upper_garbage": _errno_of(NR_IOCTL, 0, tiocsti_high, 0),
        "unshare_newuser_upper_garbage": _errno_of(NR_UNSHARE, (1 << 40) | seccomp.CLONE_NEWUSER),
    }


def test_upper_register_halves_do_not_slip_past() -> None:
    assert _under_filter(_register_checks) == {
        "tiocsti_upper_garbage": errno.EPERM,
        "unshare_newuser_upper_garbage": errno.EPERM,
    }


def _socket_checks() -> dict[str, int]:
    return {
        "unix": _socket_errno(socket.AF_UNIX, socket.SOCK_STREAM),
        "inet": _socket_errno(socket.AF_INET, socket.SOCK_DGRAM),
        "inet6": _socket_errno(socket.AF_INET6, socket.SOCK_DGRAM),
        "netlink_route": _socket_errno(socket.AF_NETLINK, socket.SOCK_RAW, 0),
        "netlink_uevent": _socket_errno(socket.AF_NETLINK, socket.SOCK_RAW, 15),
        "netlink_netfilter": _socket_errno(socket.AF_NETLINK, socket.SOCK_RAW, 12),
        "netlink_xfrm": _socket_errno(socket.AF_NETLINK, socket.SOCK_RAW, 6),
        "packet": _socket_errno(socket.AF_PACKET, socket.SOCK_RAW),
        "vsock": _socket_errno(socket.AF_VSOCK, socket.SOCK_STREAM),
    }


def test_socket_families_beyond_a_desktop_are_refused() -> None:
    # The tests run as root, for whom the kernel itself opens every one of these.
    assert _under_filter(_socket_checks) == {
        "unix": 0,
        "inet": 0,
        "inet6": 0,
        "netlink_route": 0,
        "netlink_uevent": 0,
        "netlink_netfilter": errno.EPROTONOSUPPORT,
        "netlink_xfrm": errno.EPROTONOSUPPORT,
        "packet": errno.EAFNOSUPPORT,
        "vsock": errno.EAFNOSUPPORT,
    }
