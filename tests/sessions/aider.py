"""Aider (``aider-chat`` from PyPI) in a venv cached under ``$XDG_CACHE_HOME/hivecell``,
built once under a file lock: test workers share it, none sees it half-built."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

AIDER = "aider-chat==0.86.2"
INSTALL_TIMEOUT_S = 900


def cache_dir(environ: dict[str, str]) -> Path:
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hivecell" / "test-aider"


def ensure_aider(environ: dict[str, str]) -> Path:
    """The bin folder of a venv with Aider in it."""
    root = cache_dir(environ)
    root.mkdir(parents=True, exist_ok=True)
    venv = root.absolute() / AIDER.replace("==", "-")
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if not _works(venv):
            _install(venv)
        assert _works(venv), f"{venv} has no working aider after the install"
    finally:
        os.close(fd)
    return venv / "bin"


def _works(venv: Path) -> bool:
    try:
        done = subprocess.run(
            [str(venv / "bin" / "aider"), "--version"], capture_output=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _install(venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)  # half-built or other pins: start over
    python = str(venv / "bin" / "python")
    if shutil.which("uv"):
        commands = [
            ["uv", "venv", "--quiet", "--python", sys.executable, str(venv)],
            ["uv", "pip", "install", "--quiet", "--python", python, AIDER],
        ]
    else:  # no uv on PATH (pytest run by hand): the standard library's venv and pip
        commands = [
            [sys.executable, "-m", "venv", str(venv)],
            [python, "-m", "pip", "install", "--quiet", AIDER],
        ]
    for cmd in commands:
        subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, timeout=INSTALL_TIMEOUT_S)
