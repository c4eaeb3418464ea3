"""Run inside a sandbox: tries each call the seccomp filter blocks, prints {probe: errno}.

0 means the call succeeded. Arguments are chosen so that, without the filter, the kernel
answers something other than EPERM (a success, EFAULT, EINVAL, EBADF, ENOSYS...): only the
filter makes every probe say EPERM. x86_64 syscall numbers; stdlib only (ctypes).
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import pty
import signal
import socket
import sys
import threading
from collections.abc import Callable

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

CLONE_NEWUSER = 0x10000000
AT_FDCWD = -100
BAD_POINTER = 1  # the kernel's copy_from_user fails on it: EFAULT when nothing stops it first
NR = {
    "ptrace": 101, "personality": 135, "mount": 165, "umount2": 166, "init_module": 175,
    "kexec_load": 246, "add_key": 248, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "finit_module": 313,
    "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425, "clone3": 435,
    "clone": 56,
}  # fmt: skip


def syscall(name: str, *args: int) -> int:
    """The call's errno, 0 on success."""
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(NR[name]), *(ctypes.c_long(a) for a in args))
    return 0 if result >= 0 else ctypes.get_errno()


def in_child(probe: Callable[[], int]) -> int:
    """Run ``probe`` in a forked child (it may change namespaces); its errno is the exit code."""
    pid = os.fork()
    if pid == 0:
        os._exit(probe())
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def raw_fork(name: str, *args: int) -> int:
    """A clone-like call that forks: the child leaves at once."""
    ctypes.set_errno(0)
    pid = libc.syscall(ctypes.c_long(NR[name]), *(ctypes.c_long(a) for a in args))
    if pid == 0:
        os._exit(0)
    if pid < 0:
        return ctypes.get_errno()
    os.waitpid(pid, 0)
    return 0


def clone3_fork() -> int:
    args = (ctypes.c_uint64 * 11)()  # struct clone_args, version 2 size
    args[4] = signal.SIGCHLD  # exit_signal
    return raw_fork("clone3", ctypes.addressof(args), ctypes.sizeof(args))


def io_uring() -> int:
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    return syscall("io_uring_setup", 1, ctypes.addressof(params))


def keyctl() -> int:
    return syscall("keyctl", 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring


def tiocsti() -> int:
    """Push a byte into our own controlling terminal (a fresh pty)."""
    pid, master = pty.fork()
    if pid == 0:
        try:
            import fcntl
            import termios

            fcntl.ioctl(0, termios.TIOCSTI, b"x")
        except OSError as exc:
            os._exit(exc.errno or 255)
        os._exit(0)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    os.close(master)
    return code


def int80_unshare() -> int:
    """unshare(CLONE_NEWUSER) through the 32-bit entry (int 0x80, i386 number 310)."""
    code = bytes.fromhex("53b836010000bb00000010cd805b4863c0c3")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    func = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    result = func()
    return 0 if result >= 0 else -result


def netlink_netfilter() -> int:
    try:
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12).close()  # NETLINK_NETFILTER
    except OSError as exc:
        return exc.errno or 255
    return 0


def vsock() -> int:
    """AF_VSOCK reaches the hypervisor host's services (CID 2) when a VM runs hivecell."""
    try:
        socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM, 0).close()
    except OSError as exc:
        return exc.errno or 255
    return 0


PROBES: dict[str, Callable[[], int]] = {
    "unshare_newuser": lambda: in_child(lambda: syscall("unshare", CLONE_NEWUSER)),
    "clone_newuser": lambda: raw_fork("clone", CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0),
    "clone3": clone3_fork,
    "int80_unshare_newuser": lambda: in_child(int80_unshare),
    "mount": lambda: syscall("mount", BAD_POINTER, BAD_POINTER, BAD_POINTER, 0, 0),
    "umount2": lambda: syscall("umount2", BAD_POINTER, 0xFFFF),  # EINVAL: flags come first
    "keyctl": keyctl,
    "add_key": lambda: syscall("add_key", BAD_POINTER, BAD_POINTER, 0, 0, 0),
    "bpf": lambda: syscall("bpf", 9999, 0, 0),
    "perf_event_open": lambda: syscall("perf_event_open", BAD_POINTER, 0, -1, -1, 0),
    "kexec_load": lambda: syscall("kexec_load", 0, 0, 0, 0),
    "init_module": lambda: syscall("init_module", BAD_POINTER, 0, BAD_POINTER),
    "finit_module": lambda: syscall("finit_module", -1, BAD_POINTER, 0),
    "io_uring_setup": io_uring,
    "userfaultfd": lambda: syscall("userfaultfd", 1),  # UFFD_USER_MODE_ONLY: allowed unprivileged
    "setns": lambda: syscall("setns", -1, 0),
    "open_by_handle_at": lambda: syscall("open_by_handle_at", -1, BAD_POINTER, 0),
    "name_to_handle_at": lambda: syscall("name_to_handle_at", AT_FDCWD, BAD_POINTER, 0, 0, 0),
    "personality_no_aslr": lambda: in_child(lambda: syscall("personality", 0x0040000)),
    "tiocsti": tiocsti,
    "netlink_netfilter": netlink_netfilter,
    "vsock": vsock,
}


def ordinary() -> dict[str, object]:
    """What must keep working: fork/exec, threads (clone3 falls back), sockets, ptrace."""
    results: dict[str, object] = {}
    results["personality_query"] = syscall("personality", 0xFFFFFFFF)
    results["exec"] = os.system("/bin/echo hi >/dev/null")  # fork + exec through the shell
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
    thread.start()
    thread.join()
    results["thread"] = len(seen)
    a, b = socket.socketpair()
    a.sendall(b"ping")
    results["socketpair"] = b.recv(4).decode()
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as client:
        conn, _ = server.accept()
        client.sendall(b"tcp")
        results["tcp"] = conn.recv(3).decode()
        conn.close()
    netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
    netlink.close()
    results["netlink_route"] = "ok"
    results["ptrace_child"] = ptrace_child()
    return results


def ptrace_child() -> int:
    """Attach to our own child and detach: debuggers inside the box work (allowed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(read_end, 1)
        os._exit(0)
    try:
        code = syscall("ptrace", 16, pid, 0, 0)  # PTRACE_ATTACH
        if code == 0:
            os.waitpid(pid, 0)  # stopped by the attach
            code = syscall("ptrace", 17, pid, 0, 0)  # PTRACE_DETACH
    finally:
        os.write(write_end, b"x")
        os.waitpid(pid, 0)
    return code


def main() -> None:
    report = {name: probe() for name, probe in PROBES.items()}
    names = {name: errno.errorcode.get(code, str(code)) for name, code in report.items()}
    json.dump({"blocked": names, "ordinary": ordinary()}, sys.stdout)


if __name__ == "__main__":
    main()
