"""The full desktop (wallpaper, tint2 panel, pcmanfm, menu, fonts) and the minimal one, in
real sandboxes: what a person sees, read back through the guest's own screenshot."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from hivecell.guest import desktopenv
from hivecell.sandbox.base import SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from tests.sandbox.conftest import MakeProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
WIDTH, HEIGHT = 1024, 700
DEADLINE_S = 20.0


async def _until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll check() until it returns something truthy (the state, not the time, decides)."""
    with anyio.fail_after(DEADLINE_S):
        while not (found := await check()):  # noqa: ASYNC110 - guest state, polled
            await anyio.sleep(0.05)
    assert found, what
    return found


async def _shot(guest: GuestClient) -> Image.Image:
    result = await guest.call("screenshot", {"format": "png"})
    return Image.open(io.BytesIO(base64.b64decode(result["data"]))).convert("RGB")


async def _shell(guest: GuestClient, command: str) -> str:
    result = await guest.call("run_shell", {"command": command})
    assert result["exit_code"] == 0, result
    return str(result["stdout"])


async def _window_type(guest: GuestClient, window_id: str) -> str:
    out = await _shell(guest, f"xprop -id {window_id} _NET_WM_WINDOW_TYPE")
    return out.split("=", 1)[1].strip()


async def _windows(guest: GuestClient, app: str) -> list[dict[str, Any]]:
    listed = (await guest.call("list_windows", {}))["windows"]
    return [w for w in listed if w["app"].lower() == app]  # WM_CLASS until _NET_WM_PID is set


# The panel as X sees it: list_windows leaves the desktop's furniture out on purpose.
PANEL_SCRIPT = r"""
for w in $(xprop -root _NET_CLIENT_LIST | sed 's/.*# //; s/,//g'); do
  xprop -id "$w" WM_CLASS | grep -q '"tint2"' || continue
  xwininfo -id "$w" | awk -v id="$w" '/Absolute upper-left X/ {x=$NF}
    /Absolute upper-left Y/ {y=$NF} /Width:/ {w=$NF} /Height:/ {h=$NF}
    END {print id, x, y, w, h}'
done
"""


async def _panels(guest: GuestClient) -> list[dict[str, Any]]:
    rows = [line.split() for line in (await _shell(guest, PANEL_SCRIPT)).splitlines()]
    keys = ("id", "x", "y", "width", "height")
    return [dict(zip(keys, [row[0], *map(int, row[1:])], strict=True)) for row in rows]


def _brightest(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    return max(sum(px) for px in image.crop(box).get_flattened_data())


def _full_spec() -> SandboxSpec:
    return SandboxSpec(width=WIDTH, height=HEIGHT)  # desktop="full" is the default


async def test_full_desktop_has_wallpaper_dock_panel_clock_and_fonts(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()
    info = await provider.create(_full_spec())
    assert info.spec.desktop == "full"
    async with await provider.connect(info.id) as guest:
        panels = await _until(lambda: _panels(guest), "no tint2 window")
        (panel,) = panels
        assert await _window_type(guest, panel["id"]) == "_NET_WM_WINDOW_TYPE_DOCK"
        # furniture, not an app: a model listing windows or apps never sees it to close it
        assert await _windows(guest, "tint2") == []
        apps = (await guest.call("list_running_apps", {}))["apps"]
        assert "tint2" not in {app["name"] for app in apps}, apps
        assert (panel["x"], panel["y"]) == (0, HEIGHT - desktopenv.PANEL_HEIGHT)
        assert (panel["width"], panel["height"]) == (WIDTH, desktopenv.PANEL_HEIGHT)

        # The panel draws once mapped: wait until its clock shows, then read the screen.
        clock = (WIDTH - 90, HEIGHT - desktopenv.PANEL_HEIGHT, WIDTH, HEIGHT)

        async def clock_drawn() -> Image.Image | None:
            image = await _shot(guest)
            return image if _brightest(image, clock) >= 3 * 230 else None

        image = await _until(clock_drawn, "the clock never showed")
        # Wallpaper: the gradient, not black, lighter at the top than just above the panel.
        top = image.getpixel((WIDTH // 2, 2))
        bottom = image.getpixel((WIDTH // 2, HEIGHT - desktopenv.PANEL_HEIGHT - 2))
        assert top == pytest.approx(desktopenv.WALLPAPER_TOP, abs=3)
        assert sum(bottom) < sum(top) and sum(bottom) > 3 * 20
        assert all(image.getpixel((x, 300)) != (0, 0, 0) for x in range(0, WIDTH, 97))
        # The clock is text in the clock colour on the dark panel, and reads the time.
        panel_bg = image.getpixel((WIDTH // 2, HEIGHT - 2))
        assert sum(panel_bg) < 3 * 40

        # Fonts for CJK (中文) and Arabic (عربي) scripts, as fontconfig in the box sees them.
        for chars in ("4e2d 6587", "639 631 628 64a"):
            families = await _shell(guest, f"fc-list ':charset={chars}' family")
            assert "Noto" in families, chars
        matched = await _shell(guest, "fc-match -f '%{family}' 'sans:lang=zh-cn'")
        assert "CJK" in matched

        # Notifications: the session bus starts dunst on the first one, which shows it.
        await guest.call("notify", {"title": "Build finished", "body": "3 warnings"})

        async def shown() -> bool:
            return (await _shell(guest, "dunstctl count displayed")).strip() == "1"

        await _until(shown, "the notification was not displayed")


async def test_file_manager_opens_from_launcher_menu_and_open_app(
    make_provider: MakeProvider,
) -> None:
    provider = make_provider()
    info = await provider.create(_full_spec())
    async with await provider.connect(info.id) as guest:
        await _until(lambda: _panels(guest), "no panel")
        assert await _windows(guest, "pcmanfm") == []  # started on demand, not at boot

        # 1. The panel's launcher: the file manager's icon (terminal, browser, files, ...),
        # clicked once tint2 has drawn it.
        keys = [item.key for item in desktopenv.launchers("/home")]
        x, y = desktopenv.launcher_centre(keys.index("files"))
        y += HEIGHT - desktopenv.PANEL_HEIGHT
        icon = (x - 4, y - 4, x + 4, y + 4)
        await _until(lambda: _drawn(guest, icon, 3 * 120), "the launcher never drew its icons")
        await guest.call("mouse_click", {"x": x, "y": y})
        await _file_manager_opens_then_close(guest, bottom=HEIGHT - desktopenv.PANEL_HEIGHT)

        # 2. The desktop menu: right-click an empty spot, then F (the "_File manager" key).
        spot = (WIDTH // 2, HEIGHT // 2)
        before = (await _shot(guest)).getpixel((spot[0] + 20, spot[1] + 8))

        async def menu_open() -> bool:
            return (await _shot(guest)).getpixel((spot[0] + 20, spot[1] + 8)) != before

        await guest.call("mouse_click", {"x": spot[0], "y": spot[1], "button": "right"})
        await _until(menu_open, "the desktop menu did not open")
        await guest.call("keyboard_key", {"keys": "f"})
        await _file_manager_opens_then_close(guest)

        # 3. open_app, as a model would.
        await guest.call("open_app", {"name": "pcmanfm", "window_timeout": DEADLINE_S})
        await _file_manager_opens_then_close(guest)


async def _drawn(guest: GuestClient, box: tuple[int, int, int, int], brightness: int) -> bool:
    return _brightest(await _shot(guest), box) >= brightness


async def _file_manager_opens_then_close(guest: GuestClient, bottom: int = HEIGHT) -> None:
    """One pcmanfm window, a normal one, above the panel; closed again (pcmanfm is one
    process per session: a second start while it runs only raises its window)."""
    (window,) = await _until(lambda: _windows(guest, "pcmanfm"), "no file manager window")
    assert await _window_type(guest, window["id"]) == "_NET_WM_WINDOW_TYPE_NORMAL"
    assert window["y"] + window["height"] <= bottom
    await guest.call("close_window", {"window_id": window["id"]})

    async def gone() -> bool:
        live = await _shell(guest, "ps -eo stat=,comm= | grep -v '^Z' || true")
        return not await _windows(guest, "pcmanfm") and "pcmanfm" not in live.split()

    await _until(gone, "the file manager did not close")


async def test_minimal_desktop_is_a_bare_openbox_on_black(make_provider: MakeProvider) -> None:
    provider = make_provider()
    info = await provider.create(SandboxSpec(width=WIDTH, height=HEIGHT, desktop="minimal"))
    async with await provider.connect(info.id) as guest:
        assert (await guest.call("list_windows", {}))["windows"] == []
        image = await _shot(guest)
        assert set(image.get_flattened_data()) == {(0, 0, 0)}  # no wallpaper, no panel
        processes = await _shell(guest, "ps -eo comm=")
        assert "openbox" in processes.split()
        assert "tint2" not in processes.split()


def test_setup_script_installs_the_full_desktop_packages() -> None:
    """A fresh Debian 12 box gets the full desktop from scripts/setup.sh."""
    script = (Path(__file__).parents[2] / "scripts" / "setup.sh").read_text()
    listed = re.search(r"APT_PACKAGES=\(\n(.*?)\n\)", script, re.S)
    assert listed is not None
    packages = set(re.sub(r"#[^\n]*", "", listed.group(1)).split())
    assert set(desktopenv.PACKAGES["full"]) <= packages
