"""The desktop session files as written for a box or a VM template (no display needed)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from hivecell.guest import desktopenv

OB = "{http://openbox.org/3.4/rc}"
MENU = "{http://openbox.org/3.4/menu}"


def test_full_session_files_parse_and_point_at_each_other(tmp_path: Path) -> None:
    session = desktopenv.write_session(tmp_path, "full", "/home/user")
    rc = ET.parse(session.openbox_rc).getroot()
    # Only our menu: Debian's generated menu (with "Exit", which would end the session's
    # window manager) is gone.
    files = [f.text for f in rc.iter(f"{OB}file")]
    assert files == [str(session.openbox_menu)]
    menu = ET.parse(session.openbox_menu).getroot()
    commands = [c.text or "" for c in menu.iter(f"{MENU}command")]
    assert "pcmanfm" in commands and "xterm" in commands
    browser = next(c for c in commands if c.startswith("chromium"))
    assert "--no-sandbox" in browser and "/home/user/.config/chromium-hivecell" in browser
    rc_text = session.tint2rc.read_text()
    items = [line.split("=", 1)[1].strip() for line in rc_text.splitlines()
             if line.startswith("launcher_item_app")]  # fmt: skip
    assert [Path(item).stem for item in items] == [
        launcher.key for launcher in desktopenv.launchers("/home/user")
    ]
    assert all(Path(item).is_file() for item in items)
    assert session.panel() == ["tint2", "-c", str(session.tint2rc)]
    assert "--config-file" in session.window_manager()


def test_minimal_session_writes_nothing_and_runs_plain_openbox(tmp_path: Path) -> None:
    session = desktopenv.write_session(tmp_path / "s", "minimal", "/home/user")
    assert not (tmp_path / "s").exists()
    assert session.window_manager() == ["openbox", "--sm-disable"]
    assert session.panel() is None and not session.wallpaper


def test_cli_for_vm_templates(tmp_path: Path) -> None:
    def run(*args: str) -> str:
        argv = [sys.executable, "-m", "hivecell.guest.desktopenv", *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True).stdout

    assert run("packages").split() == list(desktopenv.PACKAGES["full"])
    started = run("write", str(tmp_path), "--home", "/home/user").splitlines()
    assert started[0].startswith("openbox ") and started[1].startswith("tint2 -c ")
    assert (tmp_path / "openbox" / "rc.xml").is_file()
