"""Bytecode for the guest agent, compiled on the host, read-only in every box.

The box sees the host's Python and packages at other paths (/opt/hivecell/...) and cannot
write there, so without a cache every boot compiles ~400 modules from source (~0.5 s). The
host compiles the agent's modules once into ``<home>/pycache`` *at the paths the box sees*
and the box runs with ``PYTHONPYCACHEPREFIX`` pointing at it. The cache is written only by
the host: a cache writable by boxes would let one sandbox plant code in another's agent.
It must be readable by them, whatever the umask: as root each box runs as a uid of its own,
and the CLI and server create everything 0700/0600 (homedir.private_umask). A cache the box
cannot read costs every boot a compile of every module (~0.5 s) and its agent ~15 MB more.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import py_compile
import subprocess
import sys
import threading
from pathlib import Path

from hivecell.sandbox.local.pyruntime import PythonRuntime

LISTING = "modules.txt"
# Run by the host's interpreter: the source files the agent imports, at boot or on first
# use, one per line. Libraries import more on first use than at import (pydantic's schema
# builder when the first call builds a validator): building every method's models imports
# those too, and every file of an imported third-party package is listed besides.
_DISCOVER = """
import sys, sysconfig
from pathlib import Path
from hivecell.guest import boot
from hivecell.protocol import methods
boot.preload(boot.AGENT_MODULES + boot.LAZY_MODULES)
for spec in methods.METHODS.values():
    spec.params.model_rebuild(force=True)
    spec.result.model_rebuild(force=True)
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
files = {Path(f) for f in files if f and f.endswith(".py")}
sites = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
for f in list(files):
    for site in sites:
        if site in f.resolve().parents:
            top = site / f.resolve().relative_to(site).parts[0]
            if top.is_dir():
                files.update(top.rglob("*.py"))
print("\\n".join(sorted(map(str, files))))
"""


FILE_MODE = 0o644  # read by the boxes' uids (bound read-only); written by the host only
DIR_MODE = 0o755


def warm(cache: Path, runtime: PythonRuntime) -> None:
    """Bring ``cache`` up to date; cheap (a stat per module) when nothing changed."""
    tag = sys.implementation.cache_tag
    readable: set[Path] = set()  # folders made searchable in this call
    for host_file in _agent_files(cache, runtime):
        guest = runtime.guest_path(host_file)
        if guest is not None and tag is not None:
            cfile = cache / f"{guest.lstrip('/')[:-3]}.{tag}.pyc"
            if _compile(host_file, guest, cfile):
                _open_folders(cache, cfile.parent, readable)


def _open_folders(cache: Path, folder: Path, done: set[Path]) -> None:
    """``folder`` and those above it up to ``cache`` searchable by the boxes' uids."""
    while folder not in done:
        folder.chmod(DIR_MODE)
        done.add(folder)
        if folder == cache or cache not in folder.parents:
            return
        folder = folder.parent


def _agent_files(cache: Path, runtime: PythonRuntime) -> list[Path]:
    listing = cache / LISTING
    key = _fingerprint(runtime)
    try:
        lines = listing.read_text().splitlines()
    except OSError:
        lines = []
    if lines[:1] == [key]:
        return [Path(line) for line in lines[1:]]
    files = _discover()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = listing.with_name(f"{LISTING}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text("\n".join([key, *map(str, files)]) + "\n")
    tmp.replace(listing)
    return files


def _fingerprint(runtime: PythonRuntime) -> str:
    """Changes with the interpreter, any hivecell source file, or packages (un)installed."""
    package = Path(__file__).resolve().parents[2]
    digest = hashlib.sha1(f"{sys.version}|{sys.executable}|{package}".encode())
    for host_dir, _ in runtime.binds:
        digest.update(f"{host_dir}:{Path(host_dir).stat().st_mtime_ns}".encode())
    for source in sorted(package.rglob("*.py")):
        digest.update(f"{source}:{source.stat().st_mtime_ns}".encode())
    return digest.hexdigest()


def _discover() -> list[Path]:
    out = subprocess.run(
        [sys.executable, "-c", _DISCOVER], capture_output=True, text=True, check=True
    ).stdout
    return [Path(line) for line in out.splitlines() if line]


def _compile(source: Path, guest: str, cfile: Path) -> bool:
    """Whether ``cfile`` was (re)written; one the boxes cannot read is written again."""
    try:
        st = cfile.stat()
        if st.st_mtime >= source.stat().st_mtime and st.st_mode & 0o777 == FILE_MODE:
            return False
    except FileNotFoundError:
        pass
    # On failure the box compiles this one itself: slower, still correct.
    with contextlib.suppress(py_compile.PyCompileError, OSError):
        py_compile.compile(
            str(source),
            cfile=str(cfile),
            dfile=guest,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
        )
        cfile.chmod(FILE_MODE)
        return True
    return False
