"""The bubblewrap command line for one sandbox.

Everything is unshared (user, ipc, pid, net, uts, cgroup namespaces) and the box cannot make
user namespaces of its own (``--disable-userns``, besides the seccomp filter the supervisor
hands bwrap, see seccomp.py). The root is an empty tmpfs into which we bind, read-only, /usr
(plus the merged-usr symlinks), a curated /etc and the host's Python runtime; writable are
only the sandbox's own home, /shared, /run/hivecell and private tmpfs folders. The
environment is rebuilt from scratch.
"""

from __future__ import annotations

from pathlib import Path

from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.local import etcfiles
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.limits import LimitPlan
from hivecell.sandbox.local.pyruntime import PythonRuntime

TOP_LEVEL = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
HOST_EXTRAS = ("/var/cache/fontconfig",)  # a warm font cache saves every app ~100 ms
XDG_RUNTIME_DIR = "/tmp/xdg-runtime"
# A second lock on nested user namespaces, should the seccomp filter ever miss a way in:
# bwrap caps user.max_user_namespaces at 1 and enters a nested one that cannot raise it, so
# any new user namespace fails with ENOSPC.
# --unshare-all only *tries* a user namespace; --disable-userns needs a certain one.
NO_NESTED_USERNS = ("--unshare-user", "--disable-userns")
BOOT_MODULE = "hivecell.guest.boot"
PYCACHE = "/opt/hivecell/pycache"
TMPFS_BYTES = 1 << 30
# Host-global kernel knobs under the box's /proc, bound read-only over it. bwrap covers
# /proc/sys only when the directory itself looks writable, which it never does; but its
# files check nothing beyond "is the writer uid 0 on the host", so a box whose user maps to
# host root could set core_pattern (a host program run as root on any crash) or any sysctl.
PROC_COVER = ["--ro-bind", "/proc/sys", "/proc/sys", "--ro-bind-try", "/proc/sysrq-trigger",
              "/proc/sysrq-trigger"]  # fmt: skip


def build(
    layout: Layout,
    runtime: PythonRuntime,
    pycache: Path,
    *,
    inbox_writable: bool = False,
    tmpfs_bytes: int = TMPFS_BYTES,
) -> list[str]:
    """bwrap's options, without the program name, the supervisor's fd options and the command.

    The supervisor passes these through ``--args FD`` so host paths never show in the box's
    /proc/1/cmdline; bwrap only reads options from there, the command stays on its argv.
    ``tmpfs_bytes``: the size of each scratch tmpfs (/tmp, /var/tmp, /dev/shm).
    """
    args = [*_namespaces(layout.sandbox_id), *NO_NESTED_USERNS]
    args += _system_mounts(tmpfs_bytes)
    args += _bind_all("--ro-bind", etcfiles.binds(layout))
    args += runtime_binds(runtime, pycache)
    args += _sandbox_mounts(layout, inbox_writable)
    args += _read_only_roots()
    args += ["--chdir", etcfiles.SANDBOX_HOME, *environment_args(environment(runtime))]
    return args


def environment_args(env: dict[str, str]) -> list[str]:
    """Exactly ``env``, nothing of ours."""
    return ["--clearenv", *(arg for item in env.items() for arg in ("--setenv", *item))]


def _namespaces(sandbox_id: str) -> list[str]:
    uid = str(etcfiles.SANDBOX_UID)
    return [
        "--unshare-all", "--hostname", sandbox_id, "--uid", uid, "--gid", uid,
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    ]  # fmt: skip


def system_binds() -> list[str]:
    """/usr and the top-level folders (or merged-usr links) programs are found in."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in TOP_LEVEL:
        path = Path("/", name)
        if path.is_symlink():
            args += ["--symlink", str(path.readlink()), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def runtime_binds(runtime: PythonRuntime, pycache: Path) -> list[str]:
    """The host's Python runtime and the guest's bytecode, where the box finds them."""
    return _bind_all("--ro-bind", [*runtime.binds, (str(pycache), PYCACHE)])


def _system_mounts(tmpfs_bytes: int) -> list[str]:
    args = system_binds()
    args += ["--proc", "/proc", *PROC_COVER, "--dev", "/dev"]
    for scratch in ("/dev/shm", "/tmp", "/var/tmp"):
        # sticky, world-writable as usual; sized, else a box fills host RAM when memory falls
        # back to rlimits (with a memory cgroup, tmpfs pages count toward it as well)
        args += ["--size", str(tmpfs_bytes), "--perms", "1777", "--tmpfs", scratch]
    args += ["--symlink", "../run", "/var/run"]
    for extra in HOST_EXTRAS:
        args += ["--ro-bind-try", extra, extra]
    return args


def _sandbox_mounts(layout: Layout, inbox_writable: bool = False) -> list[str]:
    # A read-only inbox is also a mount point, which the box cannot rename or replace.
    inbox = [] if inbox_writable else ["--ro-bind", str(layout.shared / "inbox"), "/shared/inbox"]
    return [
        "--bind", str(layout.home), etcfiles.SANDBOX_HOME,
        "--bind", str(layout.shared), "/shared",
        *inbox,
        "--bind", str(layout.run), "/run/hivecell",
    ]  # fmt: skip


def _read_only_roots() -> list[str]:
    """bwrap's own tmpfs for / and /dev cannot be sized and are writable by the box's user
    (up to half the host's RAM each): once every mount is in place, make them read-only.
    Last, since later mounts would need to create their mount points there."""
    return ["--remount-ro", "/dev", "--remount-ro", "/"]


def _bind_all(option: str, pairs: list[tuple[str, str]]) -> list[str]:
    return [arg for host, guest in pairs for arg in (option, host, guest)]


# For the box's Python only (boot drops it before starting apps): one malloc arena, so what
# the agent's worker threads free (screen grabs, image encoders) lands in the one heap that
# its idle trim hands back (hivecell.guest.memory), not in per-thread heaps of up to 64 MB.
# ~11 MB PSS less per idle sandbox, with the trim. (A fixed mmap threshold saved no more and
# made every screen grab fault in fresh pages.)
MALLOC_TUNABLES = "glibc.malloc.arena_max=1"


def environment(runtime: PythonRuntime) -> dict[str, str]:
    """The box's environment; boot drops the PYTHON*/LD_* entries before starting anything."""
    env = {
        "HOME": etcfiles.SANDBOX_HOME,
        "USER": etcfiles.SANDBOX_USER,
        "LOGNAME": etcfiles.SANDBOX_USER,
        "SHELL": "/bin/bash" if Path("/bin/bash").exists() else "/bin/sh",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "DISPLAY": ":0",
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": XDG_RUNTIME_DIR,
        "HIVECELL_SANDBOX": "local",
        "PYTHONPATH": ":".join(runtime.pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",  # the runtime is read-only; don't even try
        "PYTHONPYCACHEPREFIX": PYCACHE,  # see bytecode.py
        "GLIBC_TUNABLES": MALLOC_TUNABLES,
    }
    if runtime.library_path:
        env["LD_LIBRARY_PATH"] = runtime.library_path
    return env


def boot_command(spec: SandboxSpec, runtime: PythonRuntime, limits: LimitPlan) -> list[str]:
    # -S: no site module, so the interpreter's own site-packages (and .pth hooks) stay out.
    cmd = [runtime.executable, "-S", "-m", BOOT_MODULE]
    cmd += ["--screen", f"{spec.width}x{spec.height}x{spec.depth}"]
    cmd += ["--max-file-bytes", str(spec.max_file_bytes), "--network-mode", spec.network]
    if spec.glx:
        cmd.append("--glx")
    cmd += ["--desktop", spec.desktop]
    if limits.rlimit_nproc is not None:
        cmd += ["--rlimit-nproc", str(limits.rlimit_nproc)]
    if limits.rlimit_data is not None:
        cmd += ["--rlimit-data", str(limits.rlimit_data)]
    if spec.disk_mb is not None:
        # No single file past the disk cap: part of what holds it without root (disk.py).
        cmd += ["--rlimit-fsize", str(spec.disk_mb << 20)]
    return cmd
