"""The terminal side of ``session attach`` and ``session logs --follow``: frames from the
server's WebSocket to stdout, keystrokes and window sizes back."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import termios
import threading
import tty
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from hivecell.sessions import framing
from hivecell.sessions.framing import FrameType


def _print_frames(ws: ClientConnection) -> None:
    out = sys.stdout.buffer
    with contextlib.suppress(ConnectionClosed):
        for message in ws:
            if not isinstance(message, bytes):
                continue
            frame = framing.decode(message)
            if frame.type in (FrameType.STDOUT, FrameType.STDERR):
                out.write(frame.payload)
                out.flush()


def follow(url: str, headers: dict[str, str]) -> None:
    with (
        connect(url, additional_headers=headers, max_size=2 * framing.MAX_PAYLOAD) as ws,
        contextlib.suppress(KeyboardInterrupt),
    ):
        _print_frames(ws)


def attach(url: str, headers: dict[str, str], detach: bytes) -> None:
    """Raw mode first (what is typed from then on goes to the session), then connect."""
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    try:
        if saved is not None:
            tty.setraw(stdin)
        with connect(url, additional_headers=headers, max_size=2 * framing.MAX_PAYLOAD) as ws:
            reader = threading.Thread(target=_print_frames, args=(ws,), daemon=True)
            reader.start()
            previous = signal.signal(signal.SIGWINCH, lambda *_: _send_size(ws))
            try:
                _send_size(ws)
                _pump_keys(ws, stdin, detach, reader)
            finally:
                signal.signal(signal.SIGWINCH, previous)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)


def _send_size(ws: Any) -> None:
    cols, rows = shutil.get_terminal_size((120, 40))
    with contextlib.suppress(ConnectionClosed):
        ws.send(framing.resize(min(cols, framing.MAX_CELLS), min(rows, framing.MAX_CELLS)))


def _pump_keys(ws: Any, stdin: int, detach: bytes, reader: threading.Thread) -> None:
    while reader.is_alive():
        data = os.read(stdin, 4096)
        if not data:
            return
        if detach in data:
            before = data.split(detach, 1)[0]
            if before:
                ws.send(framing.encode(FrameType.STDIN, before))
            return
        try:
            ws.send(framing.encode(FrameType.STDIN, data))
        except ConnectionClosed:
            return
