"""The CLI acceptance path: create --json, exec, screenshot, rm leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def hivecell(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "hivecell.cli.main", *args, "--home", str(home)]
    if "--" in args:  # options must precede the command's own arguments
        cut = args.index("--")
        cmd = [
            sys.executable,
            "-m",
            "hivecell.cli.main",
            *args[:cut],
            "--home",
            str(home),
            *args[cut:],
        ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)


def processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


def test_create_exec_screenshot_rm(short_home: Path, tmp_path: Path) -> None:
    home = short_home
    created = json.loads(hivecell(home, "sandbox", "create", "--json").stdout)
    sandbox_id = created["id"]
    listed = json.loads(hivecell(home, "sandbox", "ls", "--json").stdout)
    assert [s["id"] for s in listed] == [sandbox_id] and listed[0]["status"] == "running"

    assert hivecell(home, "sandbox", "exec", sandbox_id, "--", "echo", "hi").stdout == "hi\n"
    failing = hivecell(home, "sandbox", "exec", sandbox_id, "--", "sh", "-c", "exit 7", check=False)
    assert failing.returncode == 7
    killed = hivecell(
        home, "sandbox", "exec", sandbox_id, "--", "sh", "-c", "kill -9 $$", check=False
    )
    assert killed.returncode == 128 + 9

    shot = tmp_path / "s.png"
    hivecell(home, "sandbox", "screenshot", sandbox_id, "-o", str(shot))
    image = Image.open(io.BytesIO(shot.read_bytes()))
    assert (image.format, image.size) == ("PNG", (1280, 800))

    sandbox_dir = home / "sandboxes" / sandbox_id
    assert processes_mentioning(sandbox_id)
    hivecell(home, "sandbox", "rm", sandbox_id)
    assert not sandbox_dir.exists()
    assert processes_mentioning(sandbox_id) == []
    assert str(sandbox_dir) not in Path("/proc/self/mountinfo").read_text()
    assert json.loads(hivecell(home, "sandbox", "ls", "--json").stdout) == []


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    missing = hivecell(tmp_path, "sandbox", "exec", "sb-nothere", "--", "true", check=False)
    assert missing.returncode == 2
    assert "sandbox_not_found" in missing.stderr and "Traceback" not in missing.stderr
    bad = hivecell(tmp_path, "sandbox", "create", "--resolution", "big", check=False)
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr


def test_doctor_smoke_creates_runs_and_removes_a_real_sandbox(home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hivecell.cli.main", "doctor", "--smoke", "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bubblewrap" in proc.stdout and "namespaces" in proc.stdout
    assert "1280x800 screenshot" in proc.stdout and "sandboxes can start here" in proc.stdout
    assert "seccomp" in proc.stdout  # the filter every sandbox runs under compiles here
    assert not list((home / "sandboxes").iterdir())


def test_doctor_fails_where_sandboxes_cannot_start() -> None:
    # A host without user namespaces: inside a user namespace of our own whose limit for
    # further ones is 0, bubblewrap cannot build a sandbox, so doctor must not say all is well.
    script = "echo 0 > /proc/sys/user/max_user_namespaces && exec " + shlex.join(
        [sys.executable, "-m", "hivecell.cli.main", "doctor"]
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "namespaces" in proc.stdout and "failed" in proc.stdout
    assert "sandboxes cannot start here" in proc.stdout
