"""transfer.py on real file trees: what a box plants in /shared is never followed.

``shared`` plays the box's /shared (the box can change anything below it); ``secret`` is a
host file the box must never get copied into the task's outputs.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivecell.errors import NotFound, PathDenied
from hivecell.sandbox.transfer import (
    TransferLimits,
    TransferReport,
    copy_in,
    copy_out,
    ensure_folder,
)
from hivecell.sandbox.unixsock import connect_unix_nofollow

SECRET = b"host-secret-4f1c\n"


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    for name in ("inbox", "outbox", "workspace"):
        (tmp_path / "shared" / name).mkdir(parents=True)
    return tmp_path / "shared"


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    folder = tmp_path / "host-etc"
    folder.mkdir()
    (folder / "shadow").write_bytes(SECRET)
    return folder / "shadow"


def collect(shared: Path, dest: Path, **caps: int) -> TransferReport:
    return copy_out(shared, "outbox", dest, TransferLimits(**caps))


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def reasons(report: TransferReport) -> dict[str, str]:
    return {s.path: s.reason for s in report.skipped}


def test_plain_tree_is_copied_with_its_folders(shared: Path, tmp_path: Path) -> None:
    (shared / "outbox" / "a.txt").write_text("a")
    (shared / "outbox" / "sub" / "deeper").mkdir(parents=True)
    (shared / "outbox" / "sub" / "deeper" / "b.txt").write_text("bb")
    report = collect(shared, tmp_path / "out")
    assert report.copied == ["a.txt", "sub/deeper/b.txt"]
    assert report.bytes == 3 and report.skipped == [] and not report.truncated
    assert files_under(tmp_path / "out") == {"a.txt": b"a", "sub/deeper/b.txt": b"bb"}


@pytest.mark.parametrize("target", ["host-etc", "/"])
def test_outbox_replaced_by_a_link_copies_nothing(
    shared: Path, secret: Path, tmp_path: Path, target: str
) -> None:
    (shared / "outbox").rmdir()
    (shared / "outbox").symlink_to(secret.parent if target == "host-etc" else Path(target))
    report = collect(shared, tmp_path / "out")
    assert report.copied == [] and report.bytes == 0
    assert reasons(report) == {".": "symlink"}
    assert list((tmp_path / "out").iterdir()) == []


def test_file_and_folder_links_deep_inside_are_skipped(
    shared: Path, secret: Path, tmp_path: Path
) -> None:
    deep = shared / "outbox" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "ok.txt").write_text("fine")
    (deep / "shadow").symlink_to(secret)
    (deep / "etc").symlink_to(secret.parent)
    (shared / "outbox" / "root").symlink_to("/")
    (shared / "outbox" / "dangling").symlink_to("/nonexistent/x")
    report = collect(shared, tmp_path / "out")
    assert report.copied == ["a/b/ok.txt"]
    assert reasons(report) == {
        "a/b/etc": "symlink",
        "a/b/shadow": "symlink",
        "dangling": "symlink",
        "root": "symlink",
    }
    assert files_under(tmp_path / "out") == {"a/b/ok.txt": b"fine"}
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*"))


def test_fifos_and_sockets_are_skipped_without_blocking(shared: Path, tmp_path: Path) -> None:
    os.mkfifo(shared / "outbox" / "pipe")  # opening it for reading would block for ever
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(shared / "outbox" / "sock"))
    try:
        report = collect(shared, tmp_path / "out")
    finally:
        listener.close()
    assert reasons(report) == {"pipe": "fifo", "sock": "socket"}
    assert report.copied == []


def test_device_nodes_are_skipped(shared: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")  # the box itself never can
    os.mknod(shared / "outbox" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    report = collect(shared, tmp_path / "out")
    assert reasons(report) == {"null": "device"}


def test_setuid_setgid_and_sticky_bits_are_stripped(shared: Path, tmp_path: Path) -> None:
    tool = shared / "outbox" / "sh"
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o6777)
    folder = shared / "outbox" / "sticky"
    folder.mkdir()
    (folder / "f").write_text("x")
    (folder / "f").chmod(0o1666)
    report = collect(shared, tmp_path / "out")
    assert sorted(report.stripped) == ["sh", "sticky/f"]
    assert stat.S_IMODE((tmp_path / "out" / "sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "sticky" / "f").stat().st_mode) == 0o644


def test_hardlinked_files_are_copied_as_independent_content(shared: Path, tmp_path: Path) -> None:
    (shared / "workspace" / "data").write_text("linked")
    os.link(shared / "workspace" / "data", shared / "outbox" / "one")
    os.link(shared / "workspace" / "data", shared / "outbox" / "two")
    report = collect(shared, tmp_path / "out")
    assert report.copied == ["one", "two"] and report.bytes == 12
    one, two = tmp_path / "out" / "one", tmp_path / "out" / "two"
    assert one.stat().st_nlink == 1 and one.stat().st_ino != two.stat().st_ino
    one.write_text("changed")  # the copies share nothing with the box's inode
    assert (shared / "workspace" / "data").read_text() == "linked"


def test_file_cap_stops_and_says_so(shared: Path, tmp_path: Path) -> None:
    for i in range(12):
        (shared / "outbox" / f"f{i:02d}").write_text("x")
    report = collect(shared, tmp_path / "out", max_files=5)
    assert report.copied == [f"f{i:02d}" for i in range(5)]
    assert report.truncated and reasons(report) == {"f05": "file_cap"}
    assert len(list((tmp_path / "out").iterdir())) == 5


def test_byte_cap_leaves_out_what_does_not_fit(shared: Path, tmp_path: Path) -> None:
    (shared / "outbox" / "a").write_bytes(b"1" * 100)
    (shared / "outbox" / "b").write_bytes(b"2" * 200)
    (shared / "outbox" / "c").write_bytes(b"3" * 100)
    report = collect(shared, tmp_path / "out", max_bytes=250)
    assert report.copied == ["a", "c"] and report.bytes == 200
    assert report.truncated and reasons(report) == {"b": "byte_cap"}
    assert not (tmp_path / "out" / "b").exists()


def test_a_flood_of_links_ends_the_walk_at_the_entry_cap(shared: Path, tmp_path: Path) -> None:
    for i in range(1100):
        (shared / "outbox" / f"link{i:04d}").symlink_to("/")
    report = collect(shared, tmp_path / "out", max_files=0)  # looks at 2 * 0 + 1000 entries
    assert report.copied == [] and report.truncated
    assert report.skipped_count == 1001 and len(report.skipped) == 201  # 200 listed + the cap
    assert report.skipped[-1].reason == "entry_cap"


def test_deep_nesting_is_cut(shared: Path, tmp_path: Path) -> None:
    folder = shared / "outbox"
    for _ in range(70):
        folder = folder / "d"
    folder.mkdir(parents=True)
    (folder / "bottom.txt").write_text("deep")
    report = collect(shared, tmp_path / "out")
    assert report.copied == [] and [s.reason for s in report.skipped] == ["too_deep"]


def test_links_waiting_in_the_destination_are_replaced_not_followed(
    shared: Path, secret: Path, tmp_path: Path
) -> None:
    (shared / "outbox" / "shadow").write_text("from the box")
    (shared / "outbox" / "sub").mkdir()
    (shared / "outbox" / "sub" / "x").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "shadow").symlink_to(secret)
    (out / "sub").symlink_to(secret.parent)
    report = collect(shared, out)
    assert secret.read_bytes() == SECRET and [p.name for p in secret.parent.iterdir()] == ["shadow"]
    assert (out / "shadow").read_text() == "from the box" and not (out / "shadow").is_symlink()
    assert reasons(report) == {"sub": "exists"}


def test_names_that_are_not_utf8_are_reported_as_text(shared: Path, tmp_path: Path) -> None:
    os.mkfifo(os.fsencode(shared / "outbox") + b"/bad\xff")
    report = collect(shared, tmp_path / "out")
    assert report.model_dump_json()  # would raise on a lone surrogate
    assert report.skipped[0].path == "bad\ufffd"


# The box's side, in its own process (a thread would mostly wait for the GIL and rarely hit
# the window): keep replacing a file or folder with a link to the host secret, atomically.
SWAPPER = """
import os, sys
victim, target, kind = sys.argv[1:]
link, plain = victim + ".l", victim + ".p"
while True:
    for path in (link, plain):
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            os.unlink(os.path.join(path, "shadow"))
            os.rmdir(path)
    os.symlink(target, link)
    os.rename(link, victim)
    if kind == "dir":
        os.mkdir(plain)
        with open(os.path.join(plain, "shadow"), "w") as f:
            f.write("harmless")
        os.unlink(victim)  # rename() cannot put a folder over a link
    else:
        with open(plain, "w") as f:
            f.write("harmless")
    os.rename(plain, victim)
"""


@pytest.fixture
def swapper(shared: Path, secret: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    kind = request.param
    victim = shared / "outbox" / ("sub" if kind == "dir" else "shadow")
    target = secret.parent if kind == "dir" else secret
    process = subprocess.Popen([sys.executable, "-c", SWAPPER, str(victim), str(target), kind])
    yield victim.name
    process.kill()
    process.wait()


@pytest.mark.parametrize("swapper", ["file", "dir"], indirect=True)
def test_racing_link_swaps_never_leak_the_secret(
    shared: Path, tmp_path: Path, swapper: str
) -> None:
    seen: set[str] = set()
    for i in range(1000):
        out = tmp_path / f"out{i}"
        report = collect(shared, out)
        for name, data in files_under(out).items():
            assert SECRET not in data, f"iteration {i}: {name} holds the host secret"
        seen.update(p.split("/")[0] for p in report.copied)
        seen.update(s.reason for s in report.skipped)
    assert swapper in seen and "symlink" in seen  # both sides of the race were hit


def test_copy_in_refuses_an_inbox_replaced_by_a_link(
    shared: Path, secret: Path, tmp_path: Path
) -> None:
    (shared / "inbox").rmdir()
    (shared / "inbox").symlink_to(secret.parent)
    source = tmp_path / "notes.txt"
    source.write_text("input")
    with pytest.raises(PathDenied):
        copy_in([source], shared, "inbox")
    assert [p.name for p in secret.parent.iterdir()] == ["shadow"]
    assert secret.read_bytes() == SECRET


def test_copy_in_replaces_a_planted_link_and_makes_copies_readable(
    shared: Path, secret: Path, tmp_path: Path
) -> None:
    (shared / "inbox" / "notes.txt").symlink_to(secret)
    source = tmp_path / "notes.txt"
    source.write_text("input")
    source.chmod(0o4700)
    report = copy_in([source], shared, "inbox")
    assert report.copied == ["notes.txt"] and report.stripped == ["notes.txt"]
    copied = shared / "inbox" / "notes.txt"
    assert not copied.is_symlink() and copied.read_text() == "input"
    assert stat.S_IMODE(copied.stat().st_mode) == 0o755
    assert secret.read_bytes() == SECRET


def test_copy_in_remakes_a_removed_inbox_and_checks_sources(shared: Path, tmp_path: Path) -> None:
    (shared / "inbox").rmdir()
    source = tmp_path / "a.txt"
    source.write_text("a")
    assert copy_in([source], shared, "inbox").copied == ["a.txt"]
    assert (shared / "inbox" / "a.txt").read_text() == "a"
    with pytest.raises(NotFound):
        copy_in([tmp_path / "missing"], shared, "inbox")


def test_ensure_folder_removes_a_planted_link_without_following_it(
    shared: Path, secret: Path
) -> None:
    (shared / "inbox").rmdir()
    (shared / "inbox").symlink_to(secret.parent)
    ensure_folder(shared, "inbox")
    assert (shared / "inbox").is_dir() and not (shared / "inbox").is_symlink()
    assert [p.name for p in secret.parent.iterdir()] == ["shadow"]
    (shared / "inbox").rmdir()
    (shared / "inbox").write_text("a file")
    ensure_folder(shared, "inbox")
    assert (shared / "inbox").is_dir()


@pytest.mark.anyio
async def test_unix_connect_refuses_links_and_non_sockets(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "real.sock"))
    listener.listen()
    (tmp_path / "link.sock").symlink_to(tmp_path / "real.sock")
    (tmp_path / "file.sock").write_text("")
    try:
        stream = await connect_unix_nofollow(tmp_path / "real.sock")
        await stream.aclose()
        with pytest.raises(OSError, match="symbolic link"):
            await connect_unix_nofollow(tmp_path / "link.sock")
        with pytest.raises(OSError, match="not a socket"):
            await connect_unix_nofollow(tmp_path / "file.sock")
    finally:
        listener.close()


@pytest.mark.parametrize("folder", ["../host-etc", "/etc", "outbox/../..", ""])
def test_the_untrusted_part_only_goes_down(shared: Path, tmp_path: Path, folder: str) -> None:
    with pytest.raises(PathDenied):
        copy_out(shared, folder, tmp_path / "out")
