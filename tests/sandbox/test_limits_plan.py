"""Which limit mechanism the planner picks, on cgroup trees laid out in a temporary folder.

The planner only reads files, so a folder with the same files as a cgroup2 mount is a
faithful stand-in for hosts we cannot boot here (this machine has cgroup v1 memory/pids).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.sandbox.local.limits import Hierarchies, LimitsUnavailable, plan, setup

GIB = 1 << 30


def _v2_tree(root: Path, *, own: str, own_procs: str, root_subtree: str) -> Hierarchies:
    for folder, subtree, procs in ((root, root_subtree, "1\n"), (root / own, "", own_procs)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cgroup.controllers").write_text("cpu io memory pids\n")
        (folder / "cgroup.subtree_control").write_text(subtree)
        (folder / "cgroup.procs").write_text(procs)
    mountinfo = f"41 31 0:38 / {root} rw,relatime - cgroup2 cgroup2 rw\n"
    return Hierarchies.parse(mountinfo, f"0::/{own}\n")


def test_v2_uses_a_hivecell_subtree_of_our_own_cgroup(tmp_path: Path) -> None:
    found = _v2_tree(tmp_path, own="user.slice", own_procs="", root_subtree="memory pids")
    result = plan(GIB, 100, "sb-1", hierarchies=found, cpus=1.5)
    cgroup = tmp_path / "user.slice" / "hivecell" / "sb-1"
    assert (result.memory, result.pids, result.cpu) == ("cgroup2", "cgroup2", "cgroup2")
    assert result.cgroups == [str(cgroup)]
    assert result.settings == [
        (str(cgroup / "memory.max"), str(GIB)),
        (str(cgroup / "memory.swap.max?"), "0"),
        (str(cgroup / "pids.max"), "100"),
        (str(cgroup / "cpu.max"), "150000 100000"),  # a ceiling of 1.5 CPUs
        (str(cgroup / "cpu.weight"), "150"),  # and the weight of 1.5 default processes
    ]


def test_v2_never_falls_back_to_the_hierarchy_root(tmp_path: Path) -> None:
    # Our cgroup holds processes (a login session): it cannot delegate, and a box at the
    # root would escape the limits the host puts on us.
    found = _v2_tree(tmp_path, own="session.scope", own_procs="42\n", root_subtree="")
    with pytest.raises(LimitsUnavailable, match="holds processes"):
        plan(GIB, None, "sb-2", backend="cgroup2", hierarchies=found)
    result = plan(GIB, None, "sb-2", hierarchies=found, box_is_host_root=False)
    assert (result.memory, result.cgroups) == ("rlimit", [])
    with pytest.raises(LimitsUnavailable, match="cannot cap the sandbox's processes"):
        plan(GIB, 64, "sb-2", hierarchies=found, box_is_host_root=True)


def test_v2_a_delegated_service_subgroup_uses_the_service(tmp_path: Path) -> None:
    # systemd Delegate=yes + DelegateSubgroup=main: we run in <unit>/main, the unit hands
    # the controllers down; boxes go to <unit>/hivecell, still inside the unit's limits.
    unit = "system.slice/hivecell.service"
    found = _v2_tree(tmp_path, own=f"{unit}/main", own_procs="42\n", root_subtree="memory")
    for name, text in (("controllers", "memory pids"), ("subtree_control", "memory pids")):
        (tmp_path / unit / f"cgroup.{name}").write_text(text)
    (tmp_path / unit / "cgroup.procs").write_text("")
    result = plan(GIB, 64, "sb-7", hierarchies=found)
    assert result.cgroups == [str(tmp_path / unit / "hivecell" / "sb-7")]
    # A login session's scope is not a unit we may leave: refused, as above.
    scope = _v2_tree(
        tmp_path / "s", own="user.slice/session-1.scope/x", own_procs="1\n", root_subtree=""
    )
    (tmp_path / "s/user.slice/session-1.scope/cgroup.subtree_control").write_text("memory\n")
    with pytest.raises(LimitsUnavailable, match="holds processes"):
        plan(GIB, None, "sb-8", backend="cgroup2", hierarchies=scope)


def test_setup_creates_the_subtree_and_enables_controllers_on_the_way(tmp_path: Path) -> None:
    found = _v2_tree(tmp_path, own="svc", own_procs="", root_subtree="memory pids cpu")
    result = plan(None, 64, "sb-5", hierarchies=found, cpus=2.0)
    for level in ("svc", "svc/hivecell", "svc/hivecell/sb-4"):  # cgroupfs makes these files
        (tmp_path / level).mkdir(exist_ok=True)
        (tmp_path / level / "cgroup.subtree_control").write_text("")
        (tmp_path / level / "cpu.weight").write_text("100\n")
    setup(result)
    assert (tmp_path / "svc/cgroup.subtree_control").read_text() == "+cpu +pids"
    assert (tmp_path / "svc/hivecell/cgroup.subtree_control").read_text() == "+cpu +pids"
    assert (tmp_path / "svc/hivecell/sb-5/cpu.max").read_text() == "200000 100000"
    # The subtree competes with its siblings as one: it weighs as much as its boxes together.
    assert (tmp_path / "svc/hivecell/cpu.weight").read_text() == "300"


def test_v1_hybrid_uses_each_controllers_hierarchy(tmp_path: Path) -> None:
    for controller in ("memory", "pids"):
        (tmp_path / controller / "job").mkdir(parents=True)
    mountinfo = (
        "".join(
            f"3{i} 31 0:3{i} / {tmp_path / c} rw - cgroup cgroup rw,{c}\n"
            for i, c in enumerate(("memory", "pids"))
        )
        + f"41 31 0:38 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw\n"
    )
    found = Hierarchies.parse(mountinfo, "5:pids:/job\n4:memory:/job\n0::/\n")
    result = plan(GIB, 64, "sb-3", hierarchies=found, cpus=0.5)
    assert (result.memory, result.pids, result.cpu) == ("cgroup1", "cgroup1", "unenforced")
    expected = [tmp_path / c / "job" / "hivecell" / "sb-3" for c in ("memory", "pids")]
    assert result.cgroups == [str(cg) for cg in expected]
    assert result.settings[1] == (result.cgroups[0] + "/memory.memsw.limit_in_bytes?", str(GIB))


def test_v1_cpu_ceiling_uses_the_cfs_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    mountinfo = f"30 31 0:30 / {tmp_path / 'cpu'} rw - cgroup cgroup rw,cpu,cpuacct\n"
    found = Hierarchies.parse(mountinfo, "2:cpu,cpuacct:/\n")
    result = plan(None, None, "sb-6", hierarchies=found, cpus=0.5)
    cgroup = tmp_path / "cpu" / "hivecell" / "sb-6"  # under our cgroup (here the root's)
    assert (result.cpu, result.cgroups) == ("cgroup1", [str(cgroup)])
    assert result.settings == [
        (str(cgroup / "cpu.cfs_period_us"), "100000"),
        (str(cgroup / "cpu.cfs_quota_us"), "50000"),
        (str(cgroup / "cpu.shares"), "512"),
    ]


def test_without_cgroups_memory_falls_back_to_rlimit() -> None:
    result = plan(GIB, None, "sb-4", hierarchies=Hierarchies([], {}))
    assert (result.memory, result.rlimit_data, result.cgroups) == ("rlimit", GIB, [])


def test_without_cgroups_the_cpu_ceiling_is_reported_unenforced() -> None:
    result = plan(None, None, "sb-4", hierarchies=Hierarchies([], {}), cpus=2.0)
    assert result.describe() == "memory=none pids=none cpu=unenforced"


def test_without_cgroups_a_process_cap_never_silently_disappears() -> None:
    empty = Hierarchies([], {})
    # The box's user is host root: RLIMIT_NPROC is never applied to root, so refuse.
    for backend in ("auto", "rlimit"):
        with pytest.raises(LimitsUnavailable, match="RLIMIT_NPROC does not bind"):
            plan(None, 64, "x", backend, hierarchies=empty, box_is_host_root=True)
    assert plan(None, None, "x", hierarchies=empty, box_is_host_root=True).pids == "none"
    # Its own unprivileged user (or hivecell not running as root): the rlimit binds.
    limited = plan(None, 64, "x", hierarchies=empty, box_is_host_root=False)
    assert (limited.pids, limited.rlimit_nproc) == ("rlimit", 64)


def test_without_cgroups_pids_fall_back_to_rlimit_even_as_root() -> None:
    # As root each box runs as its own unprivileged uid, to which RLIMIT_NPROC applies.
    empty = Hierarchies([], {})
    assert plan(None, 64, "x", hierarchies=empty).rlimit_nproc == 64
    assert plan(None, 64, "x", backend="rlimit", hierarchies=empty).pids == "rlimit"


def test_an_explicit_backend_that_is_missing_is_refused() -> None:
    with pytest.raises(LimitsUnavailable, match="cgroup2 cannot limit memory here"):
        plan(GIB, None, "x", backend="cgroup2", hierarchies=Hierarchies([], {}))
