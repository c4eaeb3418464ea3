"""The desktop a person (or a model) sees: which packages make it, its session config, and
the programs that start it.

Two profiles. ``minimal`` is Xvfb and openbox on a black root window (the cheapest box).
``full`` adds what people recognise from a desktop: a gradient wallpaper, a tint2 panel
along the bottom (launcher for terminal, browser and file manager; task list; clock),
pcmanfm as the file manager (started on demand, from the launcher, the menu or
``open_app``), an openbox menu (right-click on the desktop) and fonts for common scripts.

The local sandbox boot (``guest/boot.py``) uses this module; a VM template can too:
``python -m hivecell.guest.desktopenv packages`` prints what to install and
``python -m hivecell.guest.desktopenv write DIR`` writes the session files and prints the
commands that start the session.

Stdlib only at import time: the boot process imports it and must stay small (see boot.py).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

TYPE_CHECKING = False  # not typing's: it stays out of the boot process (hivecell/__init__)
if TYPE_CHECKING:
    from typing import Any, Literal, TypeAlias

    DesktopProfile: TypeAlias = Literal["full", "minimal"]

PROFILES: tuple[DesktopProfile, ...] = ("full", "minimal")
DEFAULT_PROFILE: DesktopProfile = "full"

# Debian 12 packages, --no-install-recommends. scripts/setup.sh installs the same list (a
# test checks it does). Fonts: Noto core covers Latin, Greek, Cyrillic, Arabic, Hebrew,
# Devanagari, Thai and most other scripts (43 MB); Noto CJK (91 MB, one set of TTC files
# mapped on demand) is the CJK font Debian's own desktops use. Both are files on the host,
# shared read-only by every box, so they cost disk once and no memory per idle box.
PACKAGES: dict[DesktopProfile, tuple[str, ...]] = {
    "minimal": ("xvfb", "openbox"),
    "full": (
        "xvfb", "openbox", "tint2", "pcmanfm", "adwaita-icon-theme", "fonts-dejavu-core",
        "fonts-noto-core", "fonts-noto-cjk", "xterm",
        # notifications: notify-send, and a daemon the session bus starts on the first one
        "libnotify-bin", "dunst",
    ),
}  # fmt: skip

# The wallpaper: a vertical gradient, top to bottom (RGB). Drawn as a narrow tile the X
# server repeats, so it costs a few KB, not a full-screen pixmap (4 MB at 1280x800).
WALLPAPER_TOP = (0x3A, 0x60, 0x86)
WALLPAPER_BOTTOM = (0x19, 0x2A, 0x42)
WALLPAPER_TILE_WIDTH = 8

# Panel geometry, shared with the tests that click its launcher.
PANEL_HEIGHT = 32
PANEL_PADDING = 4  # left/right, before the launcher
LAUNCHER_PADDING = 4
LAUNCHER_ICON = 22
LAUNCHER_SPACING = 6
CLOCK_COLOR = (0xFF, 0xFF, 0xFF)

# Chromium's own sandbox cannot start inside the box's user namespace (the box is the
# boundary); same flags and profile as the guest's open_url (guest/tools/desktop.py).
CHROMIUM_FLAGS = (
    "--no-sandbox --no-first-run --disable-gpu --disable-background-networking "
    "--disable-component-update --disable-sync --user-data-dir=%h/.config/chromium-hivecell"
)


class Launcher:
    """One launcher entry: in the panel, in the menu, as a .desktop file."""

    def __init__(self, key: str, name: str, command: str, icon: str, program: str) -> None:
        self.key, self.name, self.command, self.icon, self.program = (
            key, name, command, icon, program,
        )  # fmt: skip

    def installed(self) -> bool:
        return shutil.which(self.program) is not None


def launchers(home: str) -> list[Launcher]:
    """Terminal, browser, file manager, text editor: those installed, in panel order."""
    browser = CHROMIUM_FLAGS.replace("%h", home)
    every = [
        Launcher("terminal", "Terminal", "xterm", "utilities-terminal", "xterm"),
        Launcher("browser", "Web browser", f"chromium {browser}", "chromium", "chromium"),
        Launcher("files", "File manager", "pcmanfm", "folder", "pcmanfm"),
        Launcher("editor", "Text editor", "mousepad", "org.xfce.mousepad", "mousepad"),
    ]
    return [item for item in every if item.installed()]


def launcher_centre(index: int) -> tuple[int, int]:
    """Where the index-th launcher icon sits, from the panel's left end (x) and top (y)."""
    x = PANEL_PADDING + LAUNCHER_PADDING + index * (LAUNCHER_ICON + LAUNCHER_SPACING)
    return x + LAUNCHER_ICON // 2, PANEL_HEIGHT // 2


class Session:
    """The files of one desktop session and the commands that start it."""

    def __init__(self, folder: Path, profile: DesktopProfile) -> None:
        self.folder = folder
        self.profile = profile
        self.openbox_rc = folder / "openbox" / "rc.xml"
        self.openbox_menu = folder / "openbox" / "menu.xml"
        self.tint2rc = folder / "tint2" / "tint2rc"

    def window_manager(self) -> list[str]:
        argv = ["openbox", "--sm-disable"]
        if self.profile == "full":
            argv += ["--config-file", str(self.openbox_rc)]
        return argv

    def panel(self) -> list[str] | None:
        """tint2, when this profile has a panel and tint2 is installed."""
        if self.profile != "full" or shutil.which("tint2") is None:
            return None
        return ["tint2", "-c", str(self.tint2rc)]

    @property
    def wallpaper(self) -> bool:
        return self.profile == "full"


def write_session(folder: Path, profile: DesktopProfile, home: str) -> Session:
    """Write the session's config files under folder (the minimal profile has none)."""
    session = Session(folder, profile)
    if profile == "minimal":
        return session
    items = launchers(home)
    apps = folder / "applications"
    for path in (apps, session.openbox_rc.parent, session.tint2rc.parent):
        path.mkdir(parents=True, exist_ok=True)
    for item in items:
        (apps / f"{item.key}.desktop").write_text(_desktop_entry(item))
    session.openbox_menu.write_text(_openbox_menu(items))
    session.openbox_rc.write_text(_openbox_rc(session.openbox_menu))
    session.tint2rc.write_text(_tint2rc([apps / f"{item.key}.desktop" for item in items]))
    return session


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _desktop_entry(item: Launcher) -> str:
    return (
        "[Desktop Entry]\nType=Application\n"
        f"Name={item.name}\nExec={item.command}\nIcon={item.icon}\nTerminal=false\n"
    )


def _openbox_menu(items: list[Launcher]) -> str:
    # "_" marks each entry's key: with the menu open, one key press starts it.
    rows = "".join(
        f'    <item label="_{_xml(item.name)}"><action name="Execute">'
        f"<command>{_xml(item.command)}</command></action></item>\n"
        for item in items
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<openbox_menu xmlns="http://openbox.org/3.4/menu">\n'
        '  <menu id="root-menu" label="Applications">\n'
        f"{rows}"
        "    <separator />\n"
        '    <menu id="client-list-combined-menu" />\n'
        "  </menu>\n"
        "</openbox_menu>\n"
    )


# The menu section's files (Debian's rc.xml lists its generated menu, then menu.xml); only
# <menu> sections hold <file> elements.
_MENU_FILES = re.compile(r"[ \t]*<file>[^<]*</file>\n?")
_FALLBACK_RC = """<?xml version="1.0" encoding="UTF-8"?>
<openbox_config xmlns="http://openbox.org/3.4/rc">
  <menu><file>menu.xml</file></menu>
  <mouse><context name="Root">
    <mousebind button="Right" action="Press"><action name="ShowMenu"><menu>root-menu</menu></action></mousebind>
  </context></mouse>
</openbox_config>
"""  # noqa: E501  (used only where openbox's own rc.xml is missing)


def _openbox_rc(menu: Path, system_rc: Path = Path("/etc/xdg/openbox/rc.xml")) -> str:
    """openbox's own defaults (key and mouse bindings, theme), with our menu file alone."""
    try:
        text = system_rc.read_text()
    except OSError:
        text = _FALLBACK_RC
    ours = f"  <file>{_xml(str(menu))}</file>\n"
    placed = False

    def first_is_ours(match: re.Match[str]) -> str:
        nonlocal placed
        keep, placed = ("" if placed else ours), True
        return keep

    text = _MENU_FILES.sub(first_is_ours, text)
    if not placed:  # a menu section of our own
        text = text.replace("</openbox_config>", f"<menu>{ours}</menu>\n</openbox_config>")
    return text


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _tint2rc(apps: list[Path]) -> str:
    items = "".join(f"launcher_item_app = {path}\n" for path in apps)
    return f"""# hivecell desktop panel (written at boot; see hivecell/guest/desktopenv.py)
# background 1: panel
rounded = 0
border_width = 0
background_color = #15191f 100
border_color = #000000 0
# background 2: task
rounded = 3
border_width = 0
background_color = #ffffff 8
border_color = #000000 0
background_color_hover = #ffffff 16
# background 3: active task
rounded = 3
border_width = 1
background_color = #ffffff 20
border_color = #ffffff 35

panel_items = LTC
panel_size = 100% {PANEL_HEIGHT}
panel_margin = 0 0
panel_padding = {PANEL_PADDING} 2 {PANEL_PADDING}
panel_background_id = 1
panel_position = bottom center horizontal
panel_layer = top
panel_monitor = all
panel_dock = 0
wm_menu = 1
autohide = 0
strut_policy = follow_size
panel_window_name = tint2
disable_transparency = 1
mouse_effects = 1
font_shadow = 0

taskbar_mode = single_desktop
taskbar_padding = 4 0 4
taskbar_background_id = 0
taskbar_name = 0
task_text = 1
task_icon = 1
task_centered = 0
task_maximum_size = 220 {PANEL_HEIGHT - 6}
task_padding = 6 2 6
task_font = Sans 9
task_font_color = #dfe3e8 100
task_active_font_color = #ffffff 100
task_background_id = 2
task_active_background_id = 3
task_tooltip = 1
mouse_left = toggle_iconify
mouse_right = close
mouse_scroll_up = toggle
mouse_scroll_down = iconify

launcher_padding = {LAUNCHER_PADDING} {(PANEL_HEIGHT - 4 - LAUNCHER_ICON) // 2} {LAUNCHER_SPACING}
launcher_background_id = 0
launcher_icon_background_id = 0
launcher_icon_size = {LAUNCHER_ICON}
launcher_icon_theme = Adwaita
launcher_icon_theme_override = 0
launcher_tooltip = 1
startup_notifications = 0
{items}
time1_format = %H:%M
time1_font = Sans Bold 10
time2_format = %a %d %b
time2_font = Sans 7
clock_font_color = {_hex(CLOCK_COLOR)} 100
clock_padding = 8 0
clock_background_id = 0
clock_tooltip = %A %d %B %Y
"""


def paint_wallpaper(display: Any) -> None:
    """Set the root window's background to the gradient (python-xlib Display).

    A tile as tall as the screen and WALLPAPER_TILE_WIDTH wide: the server repeats it
    across. The pixmap is freed at once; the root window keeps its own reference.
    """
    screen = display.screen()
    root, depth, height = screen.root, screen.root_depth, screen.height_in_pixels
    visual = next(
        v for d in screen.allowed_depths if d.depth == depth for v in d.visuals
        if v.visual_id == screen.root_visual
    )  # fmt: skip
    bpp = next(f.bits_per_pixel for f in display.display.info.pixmap_formats if f.depth == depth)
    if bpp not in (16, 32):  # unusual formats: one flat colour, no image needed
        colour = screen.default_colormap.alloc_color(*(c << 8 for c in WALLPAPER_TOP))
        root.change_attributes(background_pixel=colour.pixel)
    else:
        masks = (visual.red_mask, visual.green_mask, visual.blue_mask)
        lsb_first = display.display.info.image_byte_order == 0
        order: Literal["little", "big"] = "little" if lsb_first else "big"
        data = _gradient_rows(height, bpp, masks, order)
        pixmap = root.create_pixmap(WALLPAPER_TILE_WIDTH, height, depth)
        gc = pixmap.create_gc()
        rows_per_request = max(1, 200_000 // len(data[0]))  # stay under the request size
        for top in range(0, height, rows_per_request):
            chunk = data[top : top + rows_per_request]
            pixmap.put_image(
                gc, 0, top, WALLPAPER_TILE_WIDTH, len(chunk), 2, depth, 0, b"".join(chunk)
            )  # fmt: skip  (2 = ZPixmap)
        gc.free()
        root.change_attributes(background_pixmap=pixmap)
        pixmap.free()
    root.clear_area(0, 0, 0, 0)  # repaint the whole root with the new background
    display.sync()


def _gradient_rows(
    height: int, bpp: int, masks: tuple[int, int, int], order: Literal["little", "big"]
) -> list[bytes]:
    rows = []
    for y in range(height):
        t = y / max(1, height - 1)
        rgb = [round(a + (b - a) * t) for a, b in zip(WALLPAPER_TOP, WALLPAPER_BOTTOM, strict=True)]
        pixel = 0
        for value, mask in zip(rgb, masks, strict=True):
            pixel |= _scale_to_mask(value, mask)
        rows.append(pixel.to_bytes(bpp // 8, order) * WALLPAPER_TILE_WIDTH)
    return rows


def _scale_to_mask(value: int, mask: int) -> int:
    shift = (mask & -mask).bit_length() - 1
    width = (mask >> shift).bit_length()
    return ((value * ((1 << width) - 1) + 127) // 255) << shift


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hivecell.guest.desktopenv", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("packages", help="print the Debian packages of a profile")
    pk.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE)
    wr = sub.add_parser("write", help="write the session files; print the start commands")
    wr.add_argument("folder", type=Path)
    wr.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE)
    wr.add_argument("--home", default=str(Path.home()))
    sub.add_parser("wallpaper", help="paint the wallpaper on $DISPLAY (needs python-xlib)")
    args = p.parse_args(argv)
    if args.command == "wallpaper":
        from Xlib.display import Display

        display = Display()
        paint_wallpaper(display)
        display.close()
        return 0
    if args.command == "packages":
        print(" ".join(PACKAGES[args.profile]))
        return 0
    session = write_session(args.folder, args.profile, args.home)
    for argv_ in (session.window_manager(), session.panel()):
        if argv_ is not None:
            print(" ".join(argv_))
    return 0


if __name__ == "__main__":
    sys.exit(main())
