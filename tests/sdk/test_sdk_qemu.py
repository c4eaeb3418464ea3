"""A VM driven as a user drives one after ``hivecell template build``: the SDK's
``Sandbox.create("qemu")`` and the CLI's ``hivecell sandbox create --provider qemu``, then
the same calls and commands as for a local box (every command finds a sandbox by its id,
whatever its provider). Its kernel is the template's, not the host's."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from hivecell import Sandbox
from tests.cli.test_cli_sandbox import hivecell, processes_mentioning
from tests.sandbox import qemu_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("qemu"),  # with the other VM tests: one boot at a time
    pytest.mark.timeout(1800),
]
# test_qemu_vm.py's shape: these start from the warm state its first VM saved
SHAPE = {"resolution": (800, 600), "memory_mb": 1024, "cpus": 1.0}


def test_the_sdk_drives_a_vm_like_a_local_box(home: Path) -> None:
    kernel = qemu_env.as_users_default(home).manifest.kernel
    with Sandbox.create("qemu", home=home, **SHAPE) as sb:  # type: ignore[arg-type]
        assert sb.id.startswith("vm-") and sb.info.provider == "qemu"
        assert sb.exec("uname -r").stdout.strip() == kernel != os.uname().release
        sb.files.write("/shared/workspace/note.txt", "from the SDK\n")
        assert sb.exec("cat /shared/workspace/note.txt").stdout == "from the SDK\n"
        assert (Path(sb.info.shared_dir) / "workspace" / "note.txt").read_text() == (
            "from the SDK\n"
        )
        image = Image.open(io.BytesIO(sb.screenshot()))
        assert image.size == (800, 600)
        vm_id = sb.id
    assert processes_mentioning(vm_id) == []  # leaving `with` destroyed it, QEMU and all


def test_the_cli_creates_and_drives_a_vm_by_its_id(home: Path, tmp_path: Path) -> None:
    kernel = qemu_env.as_users_default(home).manifest.kernel
    made = hivecell(
        home, "sandbox", "create", "--provider", "qemu", "--resolution", "800x600",
        "--memory-mb", "1024", "--cpus", "1", "--json",
    )  # fmt: skip
    vm_id = json.loads(made.stdout)["id"]
    try:
        assert vm_id.startswith("vm-")
        listed = json.loads(hivecell(home, "sandbox", "ls", "--json").stdout)
        assert [(s["id"], s["provider"], s["status"]) for s in listed] == [
            (vm_id, "qemu", "running")
        ]
        assert hivecell(home, "sandbox", "exec", vm_id, "--", "uname", "-r").stdout == (
            kernel + "\n"
        )
        shot = tmp_path / "vm.png"
        hivecell(home, "sandbox", "screenshot", vm_id, "-o", str(shot))
        assert Image.open(io.BytesIO(shot.read_bytes())).size == (800, 600)
    finally:
        hivecell(home, "sandbox", "rm", vm_id)
    assert processes_mentioning(vm_id) == []
    assert json.loads(hivecell(home, "sandbox", "ls", "--json").stdout) == []
