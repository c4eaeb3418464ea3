"""Which limit mechanism the planner picks, on cgroup trees laid out in a temporary folder.

The planner only reads files, so a folder with the same files as a cgroup2 mount is a
faithful stand-in for hosts we cannot boot here (this machine has cgroup v1 memory/pids).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.sandbox.local.limits import Hierarchies, LimitsUnavailable, plan

GIB = 1 << 30


def _v2_tree(root: Path, *, own: str, own_procs: str, root_subtree: str) -> Hierarchies:
    for folder, subtree, procs in ((root, root_subtree, "1\n"), (root / own, "", own_procs)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cgroup.controllers").write_text("cpu io memory pids\n")
        (folder / "cgroup.subtree_control").write_text(subtree)
        (folder / "cgroup.procs").write_text(procs)
    mountinfo = f"41 31 0:38 / {root} rw,relatime - cgroup2 cgroup2 rw\n"
    return Hierarchies.parse(mountinfo, f"0::/{own}\n")


def test_v2_uses_our_own_cgroup_when_it_can_delegate(tmp_path: Path) -> None:
    found = _v2_tree(tmp_path, own="user.slice", own_procs="", root_subtree="memory pids")
    result = plan(GIB, 100, "hivecell-sb-1", hierarchies=found)
    cgroup = tmp_path / "user.slice" / "hivecell-sb-1"
    assert (result.memory, result.pids, result.cgroups) == ("cgroup2", "cgroup2", [str(cgroup)])
    assert result.settings == [
        (str(cgroup / "memory.max"), str(GIB)),
        (str(cgroup / "memory.swap.max?"), "0"),
        (str(cgroup / "pids.max"), "100"),
    ]


def test_v2_falls_back_to_the_root_when_our_cgroup_has_processes(tmp_path: Path) -> None:
    found = _v2_tree(tmp_path, own="session.scope", own_procs="42\n", root_subtree="")
    result = plan(GIB, None, "hivecell-sb-2", backend="cgroup2", hierarchies=found)
    assert (result.memory, result.pids) == ("cgroup2", "none")
    assert result.cgroups == [str(tmp_path / "hivecell-sb-2")]


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
    result = plan(GIB, 64, "hivecell-sb-3", hierarchies=found)
    assert (result.memory, result.pids) == ("cgroup1", "cgroup1")
    expected = [tmp_path / c / "job" / "hivecell-sb-3" for c in ("memory", "pids")]
    assert result.cgroups == [str(cg) for cg in expected]
    assert result.settings[1] == (result.cgroups[0] + "/memory.memsw.limit_in_bytes?", str(GIB))


def test_without_cgroups_memory_falls_back_to_rlimit() -> None:
    result = plan(GIB, None, "hivecell-sb-4", hierarchies=Hierarchies([], {}))
    assert (result.memory, result.rlimit_data, result.cgroups) == ("rlimit", GIB, [])


def test_without_cgroups_pids_fall_back_to_rlimit_even_as_root() -> None:
    # As root each box runs as its own unprivileged uid, to which RLIMIT_NPROC applies.
    empty = Hierarchies([], {})
    assert plan(None, 64, "x", hierarchies=empty).rlimit_nproc == 64
    assert plan(None, 64, "x", backend="rlimit", hierarchies=empty).pids == "rlimit"


def test_an_explicit_backend_that_is_missing_is_refused() -> None:
    with pytest.raises(LimitsUnavailable, match="cgroup2 has no writable memory controller"):
        plan(GIB, None, "x", backend="cgroup2", hierarchies=Hierarchies([], {}))
