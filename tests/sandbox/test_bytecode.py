"""The guest's bytecode cache: compiled on the host at the paths the box sees."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import hivecell.guest.run
from hivecell.sandbox.local import bytecode
from hivecell.sandbox.local.pyruntime import PythonRuntime


def test_warm_compiles_the_agent_at_its_sandbox_paths(tmp_path: Path) -> None:
    runtime = PythonRuntime.detect()
    bytecode.warm(tmp_path, runtime)
    guest = runtime.guest_path(Path(hivecell.guest.run.__file__).resolve())
    assert guest is not None and guest.startswith("/opt/hivecell/")
    pyc = tmp_path / f"{guest.lstrip('/')[:-3]}.{sys.implementation.cache_tag}.pyc"
    assert pyc.read_bytes()[16:]  # header + marshalled code


def test_a_second_warm_reuses_the_module_list(tmp_path: Path) -> None:
    runtime = PythonRuntime.detect()
    bytecode.warm(tmp_path, runtime)
    listing = tmp_path / bytecode.LISTING
    before = listing.stat().st_mtime_ns
    bytecode.warm(tmp_path, runtime)
    assert listing.stat().st_mtime_ns == before
    modules = listing.read_text().splitlines()[1:]
    assert any(m.endswith("hivecell/guest/tools/shell.py") for m in modules)
    assert any("/pydantic/" in m for m in modules)


def test_modules_the_agent_loads_after_boot_are_precompiled_too(tmp_path: Path) -> None:
    """A module missing from the cache is compiled from source in every box, at every boot
    or first call (the box cannot write bytecode). Those imported late must be listed: the
    Xlib extensions a Display loads once connected, the screenshot path (Pillow and its PNG
    plugin, mss's backend), and pydantic's schema builder, which the first call needs."""
    runtime = PythonRuntime.detect()
    bytecode.warm(tmp_path, runtime)
    modules = (tmp_path / bytecode.LISTING).read_text().splitlines()[1:]
    for late in (
        "Xlib/ext/randr.py",
        "Xlib/ext/xinput.py",
        "PIL/PngImagePlugin.py",
        "mss/linux/xshmgetimage.py",
        "pydantic/_internal/_generate_schema.py",
        "hivecell/guest/tools/a11y.py",  # the tools imported on their first call
        "hivecell/guest/a11ytree.py",
        "jeepney/io/blocking.py",
    ):
        assert any(m.endswith(late) for m in modules), late


def test_the_cache_is_readable_by_the_boxes_whatever_the_umask(tmp_path: Path) -> None:
    """The CLI and server run with umask 077 (a private home); as root every box runs as a
    uid of its own and must still read the cache, or each boot compiles every module."""
    runtime = PythonRuntime.detect()
    cache = tmp_path / "cache"
    old = os.umask(0o077)
    try:
        bytecode.warm(cache, runtime)
    finally:
        os.umask(old)
    pycs = list(cache.rglob("*.pyc"))
    assert len(pycs) > 100
    assert {stat.S_IMODE(p.stat().st_mode) for p in pycs} == {0o644}
    folders = [cache, *(p for p in cache.rglob("*") if p.is_dir())]
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o755}


def test_an_unreadable_cache_left_by_an_older_version_is_repaired(tmp_path: Path) -> None:
    runtime = PythonRuntime.detect()
    bytecode.warm(tmp_path, runtime)
    pyc = next(tmp_path.rglob("*.pyc"))
    pyc.chmod(0o600)
    pyc.parent.chmod(0o700)
    bytecode.warm(tmp_path, runtime)
    assert stat.S_IMODE(pyc.stat().st_mode) == 0o644
    assert stat.S_IMODE(pyc.parent.stat().st_mode) == 0o755
