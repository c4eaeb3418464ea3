"""The scrollback on disk is capped (``[sessions] scrollback_max_bytes``) and keeps the
newest output; offsets keep counting every byte ever printed, so a viewer's offset stays
valid across a trim."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from hivecell.sessions.scrollback import Scrollback, read_base, read_range
from hivecell.sessions.spec import SCROLLBACK
from tests.server.helpers import TOKEN, serve
from tests.sessions.helpers import cli, make_repo, stop_all, viewer

pytestmark = [pytest.mark.anyio]
CAP = 64 * 1024


def test_trim_keeps_the_newest_and_offsets_stay(tmp_path: Path) -> None:
    log = Scrollback(tmp_path, CAP)
    written = b"".join(b"line %06d\r\n" % i for i in range(40000))  # ~520 KB
    for start in range(0, len(written), 5000):
        log.write(written[start : start + 5000])
    size = (tmp_path / SCROLLBACK).stat().st_size
    assert size <= CAP
    assert log.tell() == len(written)
    assert log.base == read_base(tmp_path) == len(written) - size
    data, end = read_range(tmp_path, len(written) - 24, 1 << 20)
    assert (data, end) == (written[-24:], len(written))
    data, _ = read_range(tmp_path, 0, 1 << 20)  # older than what is kept: from the oldest kept
    assert data == written[log.base :] and data.startswith(b"line ")
    data, _ = read_range(tmp_path, None, 12)
    assert data == b"line 039999\r\n"[-12:]
    # A new supervisor for the same folder carries on counting.
    again = Scrollback(tmp_path, CAP)
    assert again.tell() == len(written)


async def test_a_session_scrollback_is_capped_and_replays_the_newest(home: Path) -> None:
    (home / "token").write_text(TOKEN + "\n")
    (home / "config.toml").write_text(f"[sessions]\nscrollback_max_bytes = {CAP}\n")
    repo = make_repo(home / "r")
    try:
        async with serve(home) as running:
            body = {"name": "sb1", "agent": "shell", "repo": str(repo), "isolation": "none"}
            made = await running.post("/sessions", json=body)
            assert made.status_code == 201, made.text
            await cli(home, running, "send", "sb1", "seq -f 'n%06g' 1 30000; echo end-$((6*7))")
            with anyio.fail_after(30):
                while True:  # the shell prints when it prints; logs show what it printed
                    if b"end-42" in (await running.get("/sessions/sb1/logs")).content:
                        break
                    await anyio.sleep(0.1)
            assert (home / "sessions" / "sb1" / SCROLLBACK).stat().st_size <= CAP
            view = (await running.get("/sessions/sb1")).json()
            assert view["scrollback_bytes"] > 30000 * 8  # every byte ever printed
            logs = await running.get("/sessions/sb1/logs", params={"offset": 0})
            assert b"n030000" in logs.content and b"n000001" not in logs.content
            assert int(logs.headers["x-next-offset"]) == view["scrollback_bytes"]
            async with viewer(running, "sb1", "?offset=0") as v:
                await v.until(b"end-42")
                assert v.controls[0]["offset"] > 0  # replay starts at the oldest kept byte
                assert b"n000001" not in v.seen
            await cli(home, running, "destroy", "sb1")
    finally:
        stop_all(home)


def test_bad_settings_name_the_setting(tmp_path: Path) -> None:
    from hivecell.errors import ConfigError
    from hivecell.sessions.settings import load_settings

    assert load_settings(tmp_path).scrollback_max_bytes == 32 * 1024 * 1024
    (tmp_path / "config.toml").write_text("[sessions]\nscrollback_max_bytes = 10\n")
    with pytest.raises(ConfigError, match="scrollback_max_bytes"):
        load_settings(tmp_path)
    (tmp_path / "config.toml").write_text("[sessions]\nscrollbak = 1\n")
    with pytest.raises(ConfigError, match="scrollbak"):
        load_settings(tmp_path)
