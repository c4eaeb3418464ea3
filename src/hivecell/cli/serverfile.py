"""Where the running server is: ``hivecell up`` writes ``$HIVECELL_HOME/server.json`` (its
URL; the token stays in ``token``), and removes it when it stops. CLI commands that talk to
the server read it, or take ``--server URL``."""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path

SERVER_FILE = "server.json"


def client_url(host: str, port: int) -> str:
    """A URL a local client can use for a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write(home: Path, url: str) -> None:
    path = home / SERVER_FILE
    tmp = path.with_name(SERVER_FILE + f".{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "pid": os.getpid()}, f)
    tmp.replace(path)


def remove(home: Path, url: str) -> None:
    """Only our own entry: a second server on the same home may have replaced it."""
    if read(home) == url:
        with suppress(FileNotFoundError):
            (home / SERVER_FILE).unlink()


def read(home: Path) -> str | None:
    try:
        fd = os.open(home / SERVER_FILE, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            url = json.load(f).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return url if isinstance(url, str) else None
