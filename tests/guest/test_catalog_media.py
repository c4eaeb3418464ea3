"""The media domain against a real dbus-daemon and a small real MPRIS player on it.

The player is a D-Bus service written here with jeepney (Debian's MPRIS players need audio
and a desktop session); it answers the org.mpris.MediaPlayer2.Player methods and properties
the tools use, over the real bus protocol.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jeepney import HeaderFields, MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import open_dbus_connection

from hivecell.errors import NotFound, NotSupported
from tests.guest.xdisplay import Guest

pytestmark = pytest.mark.anyio
TRACKS = [("First Song", "Ada"), ("Second Song", "Grace"), ("Third Song", "Linus")]


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[str]:
    socket = tmp_path / "bus"
    daemon = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1",
         f"--address=unix:path={socket}"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert daemon.stdout is not None
    address = daemon.stdout.readline().decode().strip()  # printed once it listens
    assert address.startswith("unix:"), address
    yield address
    daemon.terminate()
    daemon.wait(10)


class Player:
    """An MPRIS player: PlaybackStatus, Metadata and the transport methods."""

    def __init__(self, address: str, name: str) -> None:
        self.conn = open_dbus_connection(bus=address)
        self.conn.send_and_get_reply(message_bus.RequestName(f"org.mpris.MediaPlayer2.{name}"))
        self.status, self.track = "Stopped", 0
        self.calls: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.conn.receive(timeout=0.1)
            except TimeoutError:
                continue
            if msg.header.message_type == MessageType.method_call:
                self.conn.send(self._answer(msg))

    def _answer(self, msg: Any) -> Any:
        member = msg.header.fields[HeaderFields.member]
        if member == "Get":
            return self._get(msg, msg.body[1])
        self.calls.append(member)
        transitions = {"Play": "Playing", "Pause": "Paused", "Stop": "Stopped"}
        if member in transitions:
            self.status = transitions[member]
        elif member == "PlayPause":
            self.status = "Paused" if self.status == "Playing" else "Playing"
        elif member in ("Next", "Previous"):
            self.track = (self.track + (1 if member == "Next" else -1)) % len(TRACKS)
        else:
            return new_error(msg, "org.freedesktop.DBus.Error.UnknownMethod")
        return new_method_return(msg)

    def _get(self, msg: Any, prop: str) -> Any:
        if prop == "PlaybackStatus":
            return new_method_return(msg, "v", (("s", self.status),))
        title, artist = TRACKS[self.track]
        metadata = {"xesam:title": ("s", title), "xesam:artist": ("as", [artist])}
        return new_method_return(msg, "v", (("a{sv}", metadata),))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


@pytest.fixture
def player(bus: str) -> Iterator[Player]:
    found = Player(bus, "testplayer")
    yield found
    found.close()


@pytest.fixture
def mguest(guest: Guest, bus: str) -> Guest:
    guest.services.config.env = {"DBUS_SESSION_BUS_ADDRESS": bus}
    return guest


async def test_control_and_status_of_a_real_player(mguest: Guest, player: Player) -> None:
    status = await mguest("media_status")
    assert status == {
        "players": [
            {"name": "testplayer", "status": "Stopped", "title": "First Song", "artist": "Ada"}
        ]
    }
    played = await mguest("media_control", action="play")
    assert played["players"][0]["status"] == "Playing"
    skipped = await mguest("media_control", action="next", player="test")
    assert (skipped["players"][0]["title"], skipped["players"][0]["artist"]) == (
        "Second Song", "Grace",
    )  # fmt: skip
    toggled = await mguest("media_control", action="play_pause")
    assert toggled["players"][0]["status"] == "Paused"
    await mguest("media_control", action="previous")
    assert player.calls == ["Play", "Next", "PlayPause", "Previous"]
    assert player.track == 0


async def test_no_player_and_no_bus_are_told_apart(
    mguest: Guest, bus: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NotFound, match="no media player on the session bus"):
        await mguest("media_status")
    other = Player(bus, "vlc")
    try:
        with pytest.raises(NotFound, match="named 'spotify'"):
            await mguest("media_control", action="play", player="spotify")
    finally:
        other.close()
    mguest.services.config.env = {}
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS", raising=False)
    with pytest.raises(NotSupported, match="no D-Bus session bus"):
        await mguest("media_status")
    mguest.services.config.env = {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"}
    with pytest.raises(NotSupported, match="cannot reach"):
        await mguest("media_status")
