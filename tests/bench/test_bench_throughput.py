"""`hivecell bench server --tasks`: a small throughput run against a real server leaks nothing,
and the leak checker finds each kind of leftover it claims to (planted here), and only the
run's own."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hivecell.bench import leaks
from hivecell.bench.throughput import measure_throughput, plan

pytestmark = [pytest.mark.slow]


@pytest.mark.anyio
@pytest.mark.timeout(900)  # 11 real sandboxes on a shared 2-core host
async def test_small_run_accounts_for_every_task_and_leaks_nothing(short_home: Path) -> None:
    report = await measure_throughput(short_home, tasks=8, concurrent=3)
    assert plan(8).count("cancel") == 1 and plan(8).count("fail") == 1
    assert report.unexpected == []
    assert report.statuses == {"completed": 6, "failed": 1, "cancelled": 1}
    assert report.leaks == leaks.Leaks() and report.leaks_total == 0
    assert report.server_exited_cleanly
    assert report.dispatch.n == 8 and report.dispatch.p50_ms > 0
    assert report.sandboxes >= 8 + 3  # the run's and the warm-up's: the ids were tracked
    assert report.fds_before > 0 and report.fds_after > 0  # growth: only the db pool's
    assert report.memory.run_processes_peak_rss_mb > 0
    assert not list((short_home / "sandboxes").iterdir())


# --- the checker finds what it claims -------------------------------------------------------
def test_a_sandbox_left_running_is_found_in_every_kind(short_home: Path) -> None:
    """A real one, as a run that forgot it would leave it (made and removed with the CLI)."""
    hivecell = [sys.executable, "-m", "hivecell.cli.main", "sandbox"]
    network = "nat" if leaks.nft_available() else "offline"
    made = subprocess.run(
        [*hivecell, "create", "--home", str(short_home), "--network", network, "--disk-mb", "64"],
        capture_output=True,
        text=True,
        check=True,
    )
    sandbox_id = re.findall(r"sb-[0-9a-f]{8}", made.stdout)[0]
    try:
        found = leaks.find_leaks(short_home, set())
        commands = "\n".join(found.processes)
        for part in ("hivecell.sandbox.local.supervisor", "bwrap", "Xvfb", "hivecell.guest.boot"):
            assert part in commands
        assert found.sandbox_folders == [sandbox_id]
        assert found.cgroups and all(c.endswith(f"/hivecell/{sandbox_id}") for c in found.cgroups)
        assert found.mounts == [str(short_home / "sandboxes" / sandbox_id / "disk")]
        assert len(found.loop_devices) == 1
        if network == "nat":
            assert "slirp4netns" in commands
            assert [e for e in found.nft_entries if f"({sandbox_id})" in e]
    finally:
        subprocess.run([*hivecell, "rm", "--home", str(short_home), sandbox_id], check=True)
    assert leaks.find_leaks(short_home, {sandbox_id}) == leaks.Leaks()


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _sleeper(argv: list[str], started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv)
    started.append(process)
    return process


def _listed(pid: int, found: list[str]) -> bool:
    return any(line.startswith(f"pid {pid} ") for line in found)


def test_processes_naming_the_home_seen_in_the_run_or_in_its_cgroups_are_found(
    short_home: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    # $0 of the shell is the home: named on the command line; its sleep child is a descendant
    named = _sleeper(["sh", "-c", "sleep 600", str(short_home)], spawned)
    seen = _sleeper(["sleep", "601"], spawned)
    unrelated = _sleeper(["sleep", "602"], spawned)
    tracked = leaks.processes()
    key = tracked[seen.pid].key
    _wait_for_child(named.pid)
    found = leaks.find_leaks(short_home, set(), seen={key: "seen"}).processes
    assert _listed(named.pid, found) and _listed(seen.pid, found)
    assert any("sleep 600" in line for line in found)  # the descendant
    assert not _listed(unrelated.pid, found)
    assert not _listed(os.getpid(), found)  # the checker's own process names the home


def _wait_for_child(pid: int) -> None:
    """Until ``sh`` has forked its ``sleep`` (state, not time: polls /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for _ in range(100_000):
        if children.read_text().strip():
            return
    raise AssertionError(f"pid {pid} never started its child")


def test_sandbox_folder_and_cgroup_are_found(
    short_home: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    sandbox_id = "sb-t" + secrets.token_hex(4)
    (short_home / "sandboxes" / sandbox_id).mkdir(parents=True)
    subtrees = leaks.cgroup_parents()
    assert subtrees, "no cgroup hierarchy to hold sandbox cgroups: limits.py needs one"
    planted = subtrees[0] / sandbox_id
    planted.mkdir(parents=True)
    boxed = _sleeper(["sleep", "603"], spawned)
    try:
        (planted / "cgroup.procs").write_text(str(boxed.pid))
        found = leaks.find_leaks(short_home, set())  # the id comes from the folder
        assert found.sandbox_folders == [sandbox_id]
        assert str(planted) in found.cgroups
        assert _listed(boxed.pid, found.processes)  # inside the sandbox's cgroup
        assert leaks.leaked_cgroups({"sb-someone-else"}) == []
    finally:
        boxed.kill()
        boxed.wait()
        _remove_cgroup(planted)


def _remove_cgroup(path: Path) -> None:
    for _ in range(10_000):  # the killed process leaves the cgroup when it is reaped
        try:
            path.rmdir()
            return
        except OSError:
            continue
    raise AssertionError(f"cannot remove the planted cgroup {path}")


def test_nft_entries_of_the_run_are_found(short_home: Path) -> None:
    """In a table of its own (the real one is shared with sandboxes running now); no chains,
    so it filters nothing."""
    nft = shutil.which("nft", path="/usr/sbin:/sbin")
    assert nft is not None, "nft is not installed: apt install nftables"
    table = "hctest_" + secrets.token_hex(4)
    ours, theirs, freed = 2_113_990_001, 2_113_990_002, 2_113_990_003
    definition = (
        f"table inet {table} {{\n"
        "  map slirp { type gid : mark; }\n  set open { type gid; }\n}\n"
        f'add element inet {table} slirp {{ {ours} comment "sb-ours" : {ours}, '
        f'{theirs} comment "sb-theirs" : {theirs} }}\n'
        f"add element inet {table} open {{ {ours}, {theirs}, {freed} }}\n"
    )
    subprocess.run([nft, "-f", "-"], input=definition, text=True, check=True)
    try:
        found = leaks.leaked_nft({"sb-ours"}, {ours, freed}, table)
        assert f"{table} slirp {ours} (sb-ours)" in found
        assert f"{table} open {freed}" in found  # a group the run held, held by nobody now
        assert not [line for line in found if str(theirs) in line]
    finally:
        subprocess.run([nft, "delete", "table", "inet", table], check=True)


def test_mounts_and_loop_devices_under_the_home_are_found(short_home: Path) -> None:
    point = short_home / "sandboxes" / "sb-mnt" / "disk"
    point.mkdir(parents=True)
    image = short_home / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], check=True)
    device = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        found = leaks.find_leaks(short_home, set())
        assert found.mounts == [str(point)]
        assert found.loop_devices == [f"{device} -> {image}"]
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
        subprocess.run(["umount", str(point)], check=True)
    assert leaks.leaked_mounts(short_home) == [] and leaks.leaked_loop_devices(short_home) == []


def test_fd_growth_names_the_new_fds(short_home: Path) -> None:
    before = leaks.open_fds(os.getpid())
    with (short_home / "held").open("w") as held:
        grown = leaks.fd_growth(before, leaks.open_fds(os.getpid()))
        assert grown == [f"fd {held.fileno()} -> {short_home / 'held'}"]
        ignored = leaks.open_fds(os.getpid(), ignore={str(short_home / "held")})
        assert leaks.fd_growth(before, ignored) == []
    assert leaks.fd_growth(before, leaks.open_fds(os.getpid())) == []


def test_database_pool_growth_is_allowed_up_to_the_pool_and_no_further() -> None:
    db = "/h/hivecell.db"
    before = {3: "socket:[1]", 4: db, 5: db + "-wal"}
    pooled = before | {6: db, 7: db + "-wal", 8: db, 9: db + "-wal"}  # 3 connections
    assert leaks.fd_growth_pooled(before, pooled, db, pool_idle=5) == []
    assert leaks.fd_growth_pooled(before, pooled, db, pool_idle=2) == [
        f"fd {fd} -> {t}" for fd, t in sorted(pooled.items()) if fd > 5
    ]
    other = pooled | {10: "/h/sandboxes/sb-1/sandbox.log"}
    assert leaks.fd_growth_pooled(before, other, db, pool_idle=5) == [
        "fd 10 -> /h/sandboxes/sb-1/sandbox.log"
    ]


def test_a_zombie_is_not_a_leak_but_its_live_parent_is(
    short_home: Path, spawned: list[subprocess.Popen[bytes]]
) -> None:
    # the shell becomes `sleep` (its environment names the home) and never reaps its child
    parent = subprocess.Popen(
        ["sh", "-c", "true & exec sleep 600"], env={**os.environ, "HOME_OF_RUN": str(short_home)}
    )
    spawned.append(parent)
    zombie = _wait_for_zombie_child(parent.pid)
    found = leaks.find_leaks(short_home, set()).processes
    assert _listed(parent.pid, found) and not _listed(zombie, found)


def _wait_for_zombie_child(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for _ in range(100_000):
        for child in children.read_text().split():
            stat = Path(f"/proc/{child}/stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                return int(child)
    raise AssertionError(f"pid {pid} has no zombie child")
