"""The finder and system domains of the catalogue, through the real dispatcher."""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from hivecell.errors import InvalidParams, NotFound, NotSupported, PathDenied, ToolFailed
from tests.guest.xdisplay import Guest, guest_services

pytestmark = pytest.mark.anyio
DATE = re.compile(r"^DeletionDate=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$", re.M)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return home


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Path]:
    """A second root on another file system (tmpfs), as /shared is to the home in a box."""
    folder = Path("/dev/shm") / f"hc-finder-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fguest(display: str, home: Path, shm: Path) -> Iterator[Guest]:
    with guest_services(display, home) as services:
        services.config.roots = [home, shm]
        yield Guest(services)


def trashinfo(info: Path) -> dict[str, str]:
    lines = info.read_text().splitlines()
    assert lines[0] == "[Trash Info]"
    return dict(line.split("=", 1) for line in lines[1:])


async def test_trash_follows_the_freedesktop_spec(fguest: Guest, home: Path, shm: Path) -> None:
    doc = home / "my report ✓.txt"
    doc.write_text("v1")
    result = await fguest("trash_file", path=str(doc))
    trash = home / ".local/share/Trash"
    assert result == {
        "path": str(trash / "files" / doc.name),
        "info": str(trash / "info" / f"{doc.name}.trashinfo"),
    }
    assert not doc.exists() and (trash / "files" / doc.name).read_text() == "v1"
    info = trashinfo(trash / "info" / f"{doc.name}.trashinfo")
    assert info["Path"] == urllib.parse.quote(str(doc)) and "%20" in info["Path"]
    assert DATE.search((trash / "info" / f"{doc.name}.trashinfo").read_text())
    # the same name again gets a free one; files/ and info/ stay paired
    doc.write_text("v2")
    again = await fguest("trash_file", path=str(doc))
    assert again["path"].endswith("my report ✓.2.txt")
    assert Path(again["info"]).name == "my report ✓.2.txt.trashinfo"
    # a folder from another file system (copied, then removed)
    folder = shm / "dir"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("x")
    moved = await fguest("trash_file", path=str(folder))
    assert not await anyio.Path(folder).exists()
    assert await anyio.Path(moved["path"], "sub", "f").read_text() == "x"
    assert trashinfo(Path(moved["info"]))["Path"] == str(folder)
    emptied = await fguest("empty_trash")
    assert emptied == {"removed": 3}
    assert not any((trash / "files").iterdir()) and not any((trash / "info").iterdir())


async def test_trash_refuses_roots_the_trash_and_follows_no_link(
    fguest: Guest, home: Path, shm: Path, tmp_path: Path
) -> None:
    with pytest.raises(PathDenied):
        await fguest("trash_file", path=str(home))
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    with pytest.raises(PathDenied):
        await fguest("trash_file", path=str(outside))
    link = home / "link"
    link.symlink_to(outside)
    trashed = await fguest("trash_file", path=str(link))
    assert await anyio.Path(trashed["path"]).is_symlink()
    assert await anyio.Path(outside).read_text() == "keep"
    with pytest.raises(InvalidParams, match="already in the trash"):
        await fguest("trash_file", path=trashed["path"])
    with pytest.raises(NotFound):
        await fguest("trash_file", path=str(home / "missing"))


async def test_copy_mkdir_and_search(fguest: Guest, home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "passwords.txt").write_text("hunter2")
    made = await fguest("make_directory", path=str(home / "a/b/c"))
    assert made == {"path": str(home / "a/b/c")} and (home / "a/b/c").is_dir()
    src = home / "src"
    src.mkdir()
    (src / "Report.PDF").write_text("pdf")
    (src / "escape").symlink_to(secret)  # a link out of the roots
    copied = await fguest("copy_file", source=str(src), destination=str(home / "a"))
    assert copied["destination"] == str(home / "a/src")
    assert (home / "a/src/Report.PDF").read_text() == "pdf"
    assert (home / "a/src/escape").is_symlink()  # copied as a link, not secret's files
    with pytest.raises(ToolFailed, match="overwrite=true"):
        await fguest("copy_file", source=str(src / "Report.PDF"), destination=str(home / "a/src"))
    (home / "new.pdf").write_text("new")
    await fguest(
        "copy_file", source=str(home / "new.pdf"), destination=str(home / "a/src/Report.PDF"),
        overwrite=True,
    )  # fmt: skip
    assert (home / "a/src/Report.PDF").read_text() == "new"
    with pytest.raises(PathDenied):
        await fguest("copy_file", source=str(secret / "passwords.txt"), destination=str(home))
    found = await fguest("search_files", pattern="*.pdf", folder=str(home))
    assert sorted(found["paths"]) == sorted(
        [str(src / "Report.PDF"), str(home / "a/src/Report.PDF"), str(home / "new.pdf")]
    )
    # links into folders are not followed: nothing of secret/ is found
    assert (await fguest("search_files", pattern="pass*", folder=str(home)))["paths"] == []
    few = await fguest("search_files", pattern="*", folder=str(home), max_results=2)
    assert len(few["paths"]) == 2 and few["truncated"]
    with pytest.raises(PathDenied):
        await fguest("search_files", pattern="*", folder=str(secret))


async def test_processes_and_signals(fguest: Guest) -> None:
    child = await anyio.open_process(["sleep", "60"])
    try:
        procs = {p["pid"]: p for p in (await fguest("list_processes"))["processes"]}
        assert procs[child.pid]["name"] == "sleep" and procs[child.pid]["command"] == "sleep 60"
        assert procs[os.getpid()]["rss_kb"] > 0
        await fguest("kill_process", pid=child.pid, signal="KILL")
        with anyio.fail_after(10):
            assert await child.wait() == -9
        with pytest.raises(NotFound):
            await fguest("kill_process", pid=child.pid)
        with pytest.raises(InvalidParams, match="guest agent itself"):
            await fguest("kill_process", pid=os.getpid())
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


async def test_missing_desktop_services_are_named(
    fguest: Guest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sandbox without the notification and sound tools: nothing on PATH.
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(NotSupported, match="libnotify-bin"):
        await fguest("notify", title="hello")
    with pytest.raises(NotSupported, match="sound server"):
        await fguest("set_volume", percent=50)


async def test_reveal_opens_the_file_manager(fguest: Guest, home: Path) -> None:
    folder = home / "reveal-me"
    folder.mkdir()
    (folder / "f.txt").write_text("x")
    launched = await fguest("reveal_file", path=str(folder / "f.txt"))
    assert launched["command"][-1] == str(folder)
    window = await fguest.wait_window(lambda w: w["pid"] == launched["pid"], timeout=30)
    assert "reveal-me" in window["title"]
