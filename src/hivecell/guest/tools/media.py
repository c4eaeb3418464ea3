"""Guest tools of the catalogue's media domain: MPRIS players on the D-Bus session bus.

Every player that implements MPRIS 2 (vlc, mpv with mpv-mpris, Chromium's media session,
rhythmbox...) owns a bus name ``org.mpris.MediaPlayer2.<name>``. The session bus address
comes from the agent's environment (DBUS_SESSION_BUS_ADDRESS); without a bus, or with no
player on it, the calls say so.
"""

from __future__ import annotations

import os
from typing import Any

import anyio.to_thread

from hivecell.errors import NotFound, NotSupported, ToolFailed
from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.protocol import catalog as c

router = Router()
PREFIX = "org.mpris.MediaPlayer2."
PATH = "/org/mpris/MediaPlayer2"
PLAYER = "org.mpris.MediaPlayer2.Player"
TIMEOUT_S = 5.0
_ACTIONS = {
    "play": "Play", "pause": "Pause", "play_pause": "PlayPause", "stop": "Stop",
    "next": "Next", "previous": "Previous",
}  # fmt: skip


@router.method("media_status")
async def media_status(p: c.MediaStatusParams, ctx: CallContext) -> c.MediaStatus:
    return await anyio.to_thread.run_sync(_status_sync, _address(ctx), p.player)


@router.method("media_control")
async def media_control(p: c.MediaParams, ctx: CallContext) -> c.MediaStatus:
    address = _address(ctx)
    await anyio.to_thread.run_sync(_control_sync, address, p.player, _ACTIONS[p.action])
    return await anyio.to_thread.run_sync(_status_sync, address, p.player)


def _address(ctx: CallContext) -> str:
    address = ctx.config.env.get("DBUS_SESSION_BUS_ADDRESS") or os.environ.get(
        "DBUS_SESSION_BUS_ADDRESS", ""
    )
    if not address:
        raise NotSupported(
            "no D-Bus session bus in the sandbox (DBUS_SESSION_BUS_ADDRESS is unset), so no "
            "media player on the session bus can be reached"
        )
    return address


def _connect(address: str) -> Any:
    from jeepney.io.blocking import open_dbus_connection  # on first use: not at boot

    try:
        return open_dbus_connection(bus=address)
    except (OSError, ValueError) as exc:
        raise NotSupported(f"cannot reach the D-Bus session bus at {address!r}: {exc}") from None


def _players(conn: Any, wanted: str | None) -> list[str]:
    from jeepney import DBusAddress, new_method_call

    bus = DBusAddress("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
    names = conn.send_and_get_reply(new_method_call(bus, "ListNames"), timeout=TIMEOUT_S).body[0]
    players = sorted(n for n in names if n.startswith(PREFIX))
    if wanted:
        players = [n for n in players if n.removeprefix(PREFIX).lower().startswith(wanted.lower())]
    if not players:
        which = f" named {wanted!r}" if wanted else ""
        raise NotFound(f"no media player{which} on the session bus (MPRIS); start one first")
    return players


def _call(conn: Any, message: Any) -> Any:
    from jeepney.wrappers import DBusErrorResponse

    try:
        return conn.send_and_get_reply(message, timeout=TIMEOUT_S).body
    except DBusErrorResponse as exc:
        raise ToolFailed(f"the media player refused: {exc}") from None
    except TimeoutError:
        raise ToolFailed(f"the media player did not answer within {TIMEOUT_S:g} s") from None


def _control_sync(address: str, wanted: str | None, action: str) -> None:
    from jeepney import DBusAddress, new_method_call

    conn = _connect(address)
    with conn:
        for name in _players(conn, wanted)[:1]:  # the first match, as playerctl does
            _call(conn, new_method_call(DBusAddress(PATH, name, PLAYER), action))


def _status_sync(address: str, wanted: str | None) -> c.MediaStatus:
    conn = _connect(address)
    with conn:
        return c.MediaStatus(players=[_player(conn, n) for n in _players(conn, wanted)])


def _player(conn: Any, name: str) -> c.Player:
    from jeepney import DBusAddress, Properties

    props = Properties(DBusAddress(PATH, name, PLAYER))
    status = _call(conn, props.get("PlaybackStatus"))[0][1]
    metadata = _call(conn, props.get("Metadata"))[0][1]
    title = metadata.get("xesam:title", ("s", ""))[1]
    artists = metadata.get("xesam:artist", ("as", []))[1]
    return c.Player(
        name=name.removeprefix(PREFIX), status=str(status), title=str(title),
        artist=", ".join(map(str, artists)),
    )  # fmt: skip
