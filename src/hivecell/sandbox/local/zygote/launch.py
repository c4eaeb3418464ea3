"""The provider's side of the zygote: which one a box uses and how it is started.

One zygote (and one supervisor server) serves every home on the host, per version of the
code it would fork and per place it runs in. The key hashes the runtime's paths, every
hivecell source file's size and time and the folders packages are installed in (an
upgrade, or an edited checkout, gets a fresh one and the old one leaves once idle), and
the caller's namespaces, cgroup and umask: a forked supervisor lives where its server does,
so a provider in another mount or network namespace (``ip netns exec``) needs servers of its
own. Only as root: joining a box's namespaces takes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import hivecell
from hivecell.sandbox.local import bwrap, etcfiles
from hivecell.sandbox.local.pyruntime import PythonRuntime

FOLDER = Path("/run/hivecell/zygote")  # root's only; /run is emptied at reboot
IDLE_SECONDS = 600  # ~25 MB held for nothing by a zygote no box asks of
SERVER_MODULE = "hivecell.sandbox.local.zygote.server"
NAMESPACES = ("mnt", "net", "pid", "user", "uts", "ipc", "cgroup")
SUPERVISORS_MODULE = "hivecell.sandbox.local.zygote.supervisors"
# The supervisors' whole environment: tools are found by absolute paths (the plan's), and
# the shells they start (the log copier) by this.
SUPERVISOR_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "LANG": "C.UTF-8"}  # fmt: skip


def plan(
    runtime: PythonRuntime,
    pycache: Path,
    bwrap_path: str,
    *,
    folder: Path = FOLDER,
    idle: int = IDLE_SECONDS,
    code_key: str | None = None,
) -> dict[str, Any] | None:
    """What the supervisor needs to reach (or start) the zygote; None when not root.
    ``folder``: where its socket, lock and log are (root's alone); ``idle``: seconds."""
    if os.geteuid() != 0:
        return None
    base = folder / (code_key or key(runtime))
    lock = f"{base}.lock"
    return {
        "socket": f"{base}.sock",
        "lock": lock,
        "log": f"{base}.log",
        "command": command(runtime, pycache, bwrap_path, lock, idle),
        "uid": etcfiles.SANDBOX_UID,
        "gid": etcfiles.SANDBOX_UID,
    }


def supervisors_plan(
    runtime: PythonRuntime,
    *,
    folder: Path = FOLDER,
    idle: int = IDLE_SECONDS,
    code_key: str | None = None,
) -> dict[str, Any] | None:
    """The supervisor server's (supervisors.py): on the host, with the host's Python."""
    if os.geteuid() != 0:
        return None
    base = folder / f"{code_key or key(runtime)}-supervisors"
    lock = f"{base}.lock"
    return {
        "socket": f"{base}.sock",
        "lock": lock,
        "log": f"{base}.log",
        "command": [sys.executable, "-I", "-m", SUPERVISORS_MODULE, lock, str(idle)],
        "env": SUPERVISOR_ENV,
    }


def command(
    runtime: PythonRuntime, pycache: Path, bwrap_path: str, lock: str, idle: int
) -> list[str]:
    """bwrap with a mount namespace only, so the zygote imports from the box's paths (an
    imported package finds its later imports by those) and still reaches the host's
    cgroups; it stays root with every capability: it must join boxes. Nothing else of the
    host's (no /etc, no home) is in its view: its memory is every box's."""
    return [
        bwrap_path,
        *bwrap.system_binds(),
        "--dev", "/dev", "--proc", "/proc",
        "--bind", "/sys/fs/cgroup", "/sys/fs/cgroup",
        *bwrap.runtime_binds(runtime, pycache),
        "--bind", str(Path(lock).parent), str(Path(lock).parent),
        "--cap-add", "ALL",
        *bwrap.environment_args(bwrap.environment(runtime)),
        "--", runtime.executable, "-S", "-m", SERVER_MODULE, lock, str(idle),
    ]  # fmt: skip


def key(runtime: PythonRuntime) -> str:
    """Both servers' (``code_key``): it walks every source file, so compute it once."""
    digest = hashlib.sha256(json.dumps([runtime.executable, runtime.binds,
                                        runtime.pythonpath]).encode())  # fmt: skip
    package = Path(hivecell.__file__).parent
    for path in sorted(package.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for host, _ in runtime.binds:  # a package installed or removed changes its folder
        digest.update(str(Path(host).stat().st_mtime_ns).encode())
    for ns in NAMESPACES:
        digest.update(str(Path("/proc/self/ns", ns).readlink()).encode())
    digest.update(Path("/proc/self/cgroup").read_bytes())
    # what a forked supervisor creates files with ("Umask:": read without changing it)
    umask = [line for line in Path("/proc/self/status").read_text().splitlines()
             if line.startswith("Umask:")]  # fmt: skip
    digest.update(str(umask).encode())
    return digest.hexdigest()[:16]
