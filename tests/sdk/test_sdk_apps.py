"""The SDK drives real apps in a real sandbox and reads back what was typed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hivecell import Sandbox
from hivecell.errors import PathDenied, Timeout

pytestmark = pytest.mark.slow


def wait_for_window(sb: Sandbox, needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for window in sb.windows.list():
            if needle.lower() in (window.title + " " + window.app).lower():
                return window.id
        time.sleep(0.1)
    raise AssertionError(f"no window matching {needle!r}: {sb.windows.list()}")


def test_types_into_a_terminal_and_reads_the_file(short_home: Path) -> None:
    with Sandbox.create(home=short_home) as sb:
        sb.exec("xterm -T typist -e sh -c 'cat > /shared/workspace/typed.txt' >/dev/null 2>&1 &")
        window = wait_for_window(sb, "typist")
        sb.windows.activate(window)
        sb.type("héllo wörld ✓ from hivecell")
        sb.key("Return")
        sb.key("ctrl+d")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = sb.files.read("/shared/workspace/typed.txt")
            if text:
                break
            time.sleep(0.1)
        assert text == "héllo wörld ✓ from hivecell\n"


def test_text_editor_round_trip_through_the_clipboard(short_home: Path) -> None:
    with Sandbox.create(home=short_home) as sb:
        sb.open_app("mousepad")
        window = wait_for_window(sb, "mousepad")
        sb.windows.activate(window)
        sb.wait_for_settle()
        sb.type("typed in mousepad ✓")
        sb.key("ctrl+a")
        sb.key("ctrl+c")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sb.clipboard.read() != "typed in mousepad ✓":
            time.sleep(0.1)
        assert sb.clipboard.read() == "typed in mousepad ✓"


def test_sdk_basics_and_typed_errors(short_home: Path) -> None:
    with Sandbox.create(home=short_home) as sb:
        result = sb.exec(["echo", "hi"])
        assert (result.stdout, result.exit_code) == ("hi\n", 0)
        assert sb.exec("exit 3").exit_code == 3
        png = sb.screenshot()
        assert png.startswith(b"\x89PNG")
        assert sb.screen_size() == (1280, 800)
        sb.files.write("/shared/outbox/a.txt", "data")
        assert (Path(sb.info.shared_dir) / "outbox" / "a.txt").read_text() == "data"
        sb.clipboard.write("clip ✓")
        assert sb.clipboard.read() == "clip ✓"
        with pytest.raises(PathDenied) as denied:
            sb.files.read("/etc/hostname")
        assert denied.value.code == "path_denied" and denied.value.op == "read_file"
        sandbox_id = sb.id
        with Sandbox.connect(sandbox_id, home=short_home) as again:
            assert again.exec(["true"]).exit_code == 0
        assert sb.exec(["true"]).exit_code == 0  # connect's exit only disconnected
    assert not (short_home / "sandboxes" / sandbox_id).exists()


def test_open_app_waits_for_the_window_and_names_the_fix_when_none_comes(
    short_home: Path,
) -> None:
    with Sandbox.create(home=short_home) as sb:
        sb.open_app("xterm")  # returns with the window already listed, no waiting by hand
        assert any("xterm" in (w.title + " " + w.app).lower() for w in sb.windows.list())
        # An app that never maps a window: a .desktop entry of the user's own.
        entry = "[Desktop Entry]\nType=Application\nName=Quiet\nExec=sleep 60\n"
        sb.files.write("/home/user/.local/share/applications/quiet.desktop", entry)
        with pytest.raises(Timeout, match="window_timeout") as late:
            sb.open_app("quiet", window_timeout=0.5)
        assert late.value.code == "timeout" and late.value.op == "open_app"
        assert sb.open_app("quiet", window_timeout=None).pid > 0  # returns at once
