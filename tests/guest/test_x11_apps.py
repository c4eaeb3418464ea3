"""Window and app tools with real apps (xterm, mousepad, chromium) on Xvfb + openbox."""

from __future__ import annotations

import shlex
from pathlib import Path

import anyio
import pytest

from hivecell.errors import InvalidParams, NotFound, PathDenied, ToolFailed
from hivecell.guest.tools import desktop
from tests.guest.xdisplay import Guest, Probe, guest_services, x_display

pytestmark = pytest.mark.anyio
# More distinct characters than the keymap has spare keycodes, so bindings get reused.
UNICODE_TEXT = "héllo wörld ✓ 日本 日本語のテキストを入力する時に漢字も使います ✗★☆→← αβγδ ÆØÅ"


async def _wait_file(path: Path, expected: str, timeout: float = 10.0) -> str:
    text = ""
    with anyio.move_on_after(timeout):
        while True:
            text = await anyio.Path(path).read_text() if await anyio.Path(path).exists() else ""
            if text == expected:
                return text
            await anyio.sleep(0.05)
    return text


async def _wait_dead(pid: int, timeout: float = 10.0) -> bool:
    with anyio.move_on_after(timeout):
        while True:
            if not desktop.alive(pid):
                return True
            await anyio.sleep(0.05)
    return False


async def test_type_unicode_into_xterm_reaches_the_program(guest: Guest, tmp_path: Path) -> None:
    out = tmp_path / "typed.txt"
    command = f"xterm -e sh -c {shlex.quote(f'cat > {out}')}"
    launched = await guest("open_app", name=command)
    assert launched["command"][:3] == ["xterm", "-e", "sh"]
    window = await guest.wait_window(lambda w: w["pid"] == launched["pid"])
    await guest("activate_window", window_id=window["id"])
    await guest("mouse_click", x=window["x"] + 20, y=window["y"] + 20)
    typed = await guest("keyboard_type", text=UNICODE_TEXT + "\n")
    assert typed == {"characters": len(UNICODE_TEXT) + 1}
    await guest("keyboard_key", keys="ctrl+d")  # end of input: cat exits, so does xterm
    assert await _wait_file(out, UNICODE_TEXT + "\n") == UNICODE_TEXT + "\n"
    assert await _wait_dead(launched["pid"])


async def test_typing_with_a_delay(guest: Guest, tmp_path: Path) -> None:
    out = tmp_path / "slow.txt"
    launched = await guest("open_app", name=f"xterm -e sh -c 'cat > {out}'")
    window = await guest.wait_window(lambda w: w["pid"] == launched["pid"])
    await guest("activate_window", window_id=window["id"])
    start = anyio.current_time()
    await guest("keyboard_type", text="ab✓\n", delay_ms=50)
    assert anyio.current_time() - start >= 0.15
    await guest("keyboard_key", keys="ctrl+d")
    assert await _wait_file(out, "ab✓\n") == "ab✓\n"


async def test_open_app_by_name_and_manage_its_window(guest: Guest) -> None:
    launched = await guest("open_app", name="XTerm")  # Name= of debian-xterm.desktop
    assert launched["command"] == ["xterm"]
    pid = launched["pid"]
    # The window is listed as soon as openbox manages it; its final size may come a moment
    # later on a loaded machine.
    window = await guest.wait_window(lambda w: w["pid"] == pid and w["width"] > 100)
    assert window["app"] == "xterm"
    await guest("activate_window", window_id=window["id"])
    front = await guest("get_frontmost_app")
    assert front["app"]["pid"] == pid and front["app"]["name"] == "xterm"
    assert front["window_title"] == window["title"]
    apps = (await guest("list_running_apps"))["apps"]
    assert {"pid": pid, "name": "xterm", "command": "xterm", "windows": 1} in apps
    assert await guest("close_window", window_id=window["id"]) == {"ok": True}
    await guest.wait_gone(window["id"])
    assert await _wait_dead(pid)
    assert pid not in {app["pid"] for app in (await guest("list_running_apps"))["apps"]}


async def test_move_resize_and_activate_a_window(guest: Guest, display: str) -> None:
    probe = Probe(display, 50, 60, 200, 150, 0x00FF00)
    try:
        await guest.wait_window(lambda w: w["id"] == probe.id)
        await guest("move_resize_window", window_id=probe.id, x=150, y=120, width=500, height=350)
        moved = await guest.wait_window(
            lambda w: w["id"] == probe.id and (w["x"], w["y"], w["width"]) == (150, 120, 500)
        )
        assert (moved["height"], moved["title"]) == (350, "hivecell-probe")
        await guest("activate_window", window_id=probe.id, settle=True)
        assert (await guest("get_frontmost_app"))["window_title"] == "hivecell-probe"
    finally:
        probe.close()


async def test_window_ids_are_checked(guest: Guest) -> None:
    with pytest.raises(InvalidParams, match="list_windows"):
        await guest("activate_window", window_id="not-a-window")
    with pytest.raises(NotFound, match="list_windows"):
        await guest("close_window", window_id="0x7fffffff")


async def test_quit_app_by_pid_by_name_and_by_force(
    guest: Guest, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = (await guest("open_app", name="xterm"))["pid"]
    second = (await guest("open_app", name="org.xfce.mousepad"))["pid"]
    stubborn = (await guest("open_app", name="sh -c \"trap '' TERM; sleep 600\""))["pid"]
    await guest.wait_window(lambda w: w["pid"] == first)
    await guest.wait_window(lambda w: w["pid"] == second)
    assert await guest("quit_app", pid=first) == {"pids": [first]}
    assert await guest("quit_app", name="Mousepad") == {"pids": [second]}
    assert not desktop.alive(first) and not desktop.alive(second)
    apps = (await guest("list_running_apps"))["apps"]
    windowless = next(app for app in apps if app["pid"] == stubborn)  # launched, no window
    assert (windowless["name"], windowless["windows"]) == ("sh", 0)
    monkeypatch.setattr(desktop, "QUIT_GRACE_S", 0.5)  # it ignores SIGTERM: spare us 2x3 s
    with pytest.raises(ToolFailed, match="force=true"):
        await guest("quit_app", pid=stubborn)
    assert await guest("quit_app", pid=stubborn, force=True) == {"pids": [stubborn]}
    assert guest.services.launched == {}
    with pytest.raises(NotFound, match="no running app named 'nothing-like-this'"):
        await guest("quit_app", name="nothing-like-this")
    with pytest.raises(InvalidParams, match="name or pid"):
        await guest("quit_app")


async def test_open_app_unknown_lists_installed_apps(guest: Guest) -> None:
    with pytest.raises(NotFound, match=r"installed apps include .*Mousepad"):
        await guest("open_app", name="no-such-app-anywhere")
    with pytest.raises(ToolFailed, match="exited with code 2"):
        await guest("open_app", name="sh -c 'exit 2'")


async def test_open_file_in_mousepad_type_and_save(guest: Guest, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("first line\n")
    await guest("open_file", path="note.txt")
    window = await guest.wait_window(lambda w: "note.txt" in w["title"], timeout=20)
    await guest("activate_window", window_id=window["id"])
    await guest("keyboard_key", keys="ctrl+End")
    await guest("keyboard_type", text=UNICODE_TEXT + "\n")
    await guest("keyboard_key", keys="ctrl+s")
    expected = f"first line\n{UNICODE_TEXT}\n"
    assert await _wait_file(note, expected) == expected
    with pytest.raises(PathDenied):
        await guest("open_file", path="/etc/hostname")
    with pytest.raises(NotFound, match="does not exist"):
        await guest("open_file", path="missing.txt")


async def test_open_url_in_chromium(
    guest: Guest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the browser profile goes there
    page = tmp_path / "page.html"
    page.write_text("<title>hivecell test page</title><h1>hello</h1>")
    launched = await guest("open_url", url=page.as_uri(), settle=True)
    assert launched["command"][0] == "chromium" and launched["command"][-1] == page.as_uri()
    assert "--no-sandbox" in launched["command"]  # tests run as root
    await guest.wait_window(lambda w: w["title"].startswith("hivecell test page"), timeout=30)
    assert (tmp_path / ".config" / "chromium-hivecell").is_dir()
    second = tmp_path / "second.html"
    second.write_text("<title>second page</title>")
    with anyio.fail_after(8):  # the running browser takes it: no new window to wait for
        await guest("open_url", url=second.as_uri(), settle=True)
    await guest.wait_window(lambda w: w["title"].startswith("second page"), timeout=30)


def test_urls_are_normalised_and_never_become_flags() -> None:
    assert desktop.normalize_url("example.com/a") == "https://example.com/a"
    assert desktop.normalize_url("localhost:8080") == "https://localhost:8080"
    assert desktop.normalize_url("--renderer-cmd-prefix=x") == "https://--renderer-cmd-prefix=x"
    assert desktop.normalize_url("about:blank") == "about:blank"
    assert desktop.normalize_url("http://x.test/") == "http://x.test/"


def test_desktop_entries_and_exec_field_codes() -> None:
    entries = desktop.desktop_entries()
    by_id = {e.id: e for e in entries}
    mousepad = by_id["org.xfce.mousepad"]
    assert mousepad.name == "Mousepad" and "text/plain" in mousepad.mime_types
    assert desktop.entry_argv(mousepad, []) == ["mousepad"]
    assert desktop.entry_argv(mousepad, ["/a b.txt"]) == ["mousepad", "/a b.txt"]
    assert desktop.resolve_app("mousepad", entries) == ["mousepad"]
    assert desktop.resolve_app("chromium", entries) == ["/usr/bin/chromium"]
    assert desktop.resolve_app("vim", entries) == ["xterm", "-e", "vim"]  # Terminal=true


def test_files_get_the_app_for_their_mime_type(tmp_path: Path) -> None:
    """The path open_file takes when xdg-open is missing."""
    entries = desktop.desktop_entries()
    notes, page, blob = tmp_path / "a b.txt", tmp_path / "p.html", tmp_path / "blob"
    notes.write_text("hi")
    page.write_text("<p>hi</p>")
    blob.write_bytes(b"\0\1\2")
    assert desktop.handler_argv(notes, entries) == ["mousepad", str(notes)]  # not vim
    assert desktop.handler_argv(page, entries) == ["/usr/bin/chromium", str(page)]
    with pytest.raises(NotFound, match="application/octet-stream"):
        desktop.handler_argv(blob, entries)


async def test_fresh_display_has_no_windows_and_no_frontmost_app(tmp_path: Path) -> None:
    with x_display() as fresh, guest_services(fresh, tmp_path) as services:
        guest = Guest(services)
        assert await guest("list_windows") == {"windows": []}
        assert await guest("get_frontmost_app") == {"app": None, "window_title": None}
        assert await guest("list_running_apps") == {"apps": []}
