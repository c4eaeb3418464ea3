"""The seccomp filter and the lock on nested user namespaces, tried from inside real sandboxes.

Each blocked call is made for real (ctypes, see seccomp_probe.py) with arguments the kernel
alone would answer differently, so only the filter turns them into EPERM.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from hivecell.sandbox.base import SandboxInfo, SandboxSpec
from hivecell.sandbox.guest_client import GuestClient
from hivecell.sandbox.local.layout import Layout
from hivecell.sandbox.local.provider import LocalProvider
from tests.sandbox.conftest import short_tmp
from tests.sandbox.host import sh_out, shell

# One worker boots the one sandbox all these tests share (under -n N --dist loadgroup).
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.xdist_group("security-seccomp")]
PROBE = Path(__file__).with_name("seccomp_probe.py")
EPERM = "EPERM"
BLOCKED = {
    "unshare_newuser": EPERM,
    "clone_newuser": EPERM,
    "int80_unshare_newuser": EPERM,  # the i386 entry point is filtered too
    "clone3": "ENOSYS",  # its flags are out of a filter's reach: libc falls back to clone
    "mount": EPERM,
    "umount2": EPERM,
    "keyctl": EPERM,
    "add_key": EPERM,
    "bpf": EPERM,
    "perf_event_open": EPERM,
    "kexec_load": EPERM,
    "init_module": EPERM,
    "finit_module": EPERM,
    "io_uring_setup": EPERM,
    "userfaultfd": EPERM,
    "setns": EPERM,
    "open_by_handle_at": EPERM,
    "name_to_handle_at": EPERM,
    "personality_no_aslr": EPERM,
    "tiocsti": EPERM,
    "netlink_netfilter": errno.errorcode[errno.EPROTONOSUPPORT],
    "vsock": errno.errorcode[errno.EAFNOSUPPORT],
}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"  # module scope: one sandbox booted for all tests


@pytest.fixture(scope="module")
def module_home() -> Iterator[Path]:
    path = short_tmp("hc-sec-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
async def box(module_home: Path) -> AsyncIterator[tuple[LocalProvider, SandboxInfo]]:
    provider = LocalProvider(module_home, pycache=module_home / "pycache")
    info = await provider.create(SandboxSpec(network="offline"))
    yield provider, info
    await provider.destroy(info.id)


@pytest.fixture
async def guest(box: tuple[LocalProvider, SandboxInfo]) -> AsyncIterator[GuestClient]:
    provider, info = box
    async with await provider.connect(info.id) as client:
        yield client


@pytest.fixture(scope="module")
async def probed(box: tuple[LocalProvider, SandboxInfo]) -> dict[str, Any]:
    """The probe's report, run once inside the box."""
    provider, info = box
    shutil.copy(PROBE, Path(info.shared_dir) / "workspace" / PROBE.name)
    async with await provider.connect(info.id) as client:
        out = await sh_out(client, f"python3 /shared/workspace/{PROBE.name}")
    report: dict[str, Any] = json.loads(out)
    return report


@pytest.mark.parametrize("probe", sorted(BLOCKED))
async def test_blocked_call_fails(probed: dict[str, Any], probe: str) -> None:
    assert probed["blocked"][probe] == BLOCKED[probe]


async def test_ordinary_calls_still_work(probed: dict[str, Any]) -> None:
    assert probed["ordinary"] == {
        "personality_query": 0,
        "exec": 0,
        "thread": 1,  # pthread_create tries clone3, gets ENOSYS, uses clone
        "socketpair": "ping",
        "tcp": "tcp",
        "netlink_route": "ok",
        "ptrace_child": 0,  # allowed on purpose: debuggers inside the box (see seccomp.py)
    }


async def test_unshare_command_cannot_make_a_user_namespace(guest: GuestClient) -> None:
    result = await shell(guest, "unshare -Urn true")
    assert result["exit_code"] != 0, result
    assert "Operation not permitted" in result["stderr"], result


async def test_threads_and_subprocesses_of_real_programs(guest: GuestClient) -> None:
    # glibc tries clone3 first for both; a filter killing or failing it hard would show here.
    script = (
        "import concurrent.futures as f, subprocess; "
        "print(sum(f.ThreadPoolExecutor(8).map(lambda n: n, range(100))), "
        "subprocess.run(['sh', '-c', 'echo sub'], capture_output=True, text=True).stdout.strip())"
    )
    assert (await sh_out(guest, f'python3 -c "{script}"')).split() == ["4950", "sub"]


async def test_every_process_in_the_box_is_filtered(guest: GuestClient) -> None:
    """bwrap's own init (pid 1) included: tracing it (ptrace is allowed) gains nothing."""
    out = await sh_out(guest, "grep -H '^Seccomp:' /proc/[0-9]*/status")
    modes = {line.rsplit(None, 1)[-1] for line in out.splitlines()}
    assert len(out.splitlines()) >= 3, out  # init, the guest, this shell at least
    assert modes == {"2"}, out  # 2 = SECCOMP_MODE_FILTER


async def test_the_box_cannot_raise_its_user_namespace_limit(guest: GuestClient) -> None:
    result = await shell(guest, "echo 1000 > /proc/sys/user/max_user_namespaces")
    assert result["exit_code"] != 0, result
    result = await shell(guest, "unshare -U true")
    assert result["exit_code"] != 0, result


def test_nested_user_namespaces_are_locked_without_the_filter(
    box: tuple[LocalProvider, SandboxInfo], module_home: Path
) -> None:
    """The second lock alone: the box's own bwrap options, run without ``--seccomp``, still
    refuse a new user namespace (bwrap --disable-userns: ENOSPC, not the filter's EPERM)."""
    _, info = box
    plan = json.loads(Layout.of(module_home, info.id).plan.read_text())
    proc = subprocess.run(
        [plan["bwrap"], *plan["bwrap_args"], "--", "unshare", "-U", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0, proc
    assert "No space left on device" in proc.stderr, proc.stderr


def test_the_filter_lives_where_the_box_cannot_write(
    box: tuple[LocalProvider, SandboxInfo], module_home: Path
) -> None:
    _, info = box
    layout = Layout.of(module_home, info.id)
    plan = json.loads(layout.plan.read_text())
    assert plan["seccomp"] == str(layout.seccomp)
    assert layout.seccomp.stat().st_size % 8 == 0 and layout.seccomp.stat().st_size > 0
    bound = {arg for arg in plan["bwrap_args"] if arg.startswith(str(layout.root))}
    assert not any(layout.root == Path(b) or layout.seccomp.is_relative_to(b) for b in bound)


async def _wait_window_title(guest: GuestClient, prefix: str, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while True:
            listed = await guest.call("list_windows", {})
            if any(w["title"].startswith(prefix) for w in listed["windows"]):
                return
            await anyio.sleep(0.2)  # polling the window list, the state we wait on


async def test_chromium_starts_under_the_filter(
    box: tuple[LocalProvider, SandboxInfo], guest: GuestClient
) -> None:
    """Chromium's own sandbox wants user namespaces; open_url starts it without (--no-sandbox)."""
    _, info = box
    (Path(info.shared_dir) / "workspace" / "chromium.html").write_text(
        "<title>under seccomp</title>"
    )
    launched = await guest.call("open_url", {"url": "file:///shared/workspace/chromium.html"})
    assert "--no-sandbox" in launched["command"]
    await _wait_window_title(guest, "under seccomp")


async def test_firefox_starts_under_the_filter(
    box: tuple[LocalProvider, SandboxInfo], guest: GuestClient
) -> None:
    """Firefox probes user namespaces for its content sandbox and falls back on EPERM."""
    _, info = box
    (Path(info.shared_dir) / "workspace" / "firefox.html").write_text(
        "<title>fox under seccomp</title>"
    )
    command = (
        'firefox --no-remote --profile "$(mktemp -d)" file:///shared/workspace/firefox.html '
        ">/tmp/firefox.log 2>&1 &"
    )
    await sh_out(guest, command)
    await _wait_window_title(guest, "fox under seccomp", timeout=90)
