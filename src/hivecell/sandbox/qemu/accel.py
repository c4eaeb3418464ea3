"""KVM or TCG: decided by a real tiny boot, never by ``/dev/kvm`` existing.

Some hosts offer a ``/dev/kvm`` on which a stock kernel hangs (a PVM host, nested setups
without the right CPU flags): opening the device works, booting does not. So the probe boots
the template's own kernel with no root filesystem and ``panic=-1``: under working KVM it
panics and QEMU exits (``-no-reboot``) within a second or two; a hang or any failure means
TCG. The answer is cached per host boot and kernel (a reboot or new kernel may change it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from pathlib import Path

from pydantic import BaseModel

PROBE_TIMEOUT = 20.0  # KVM panics in ~1 s; TCG would need ~5 s, a hang never ends


class AccelChoice(BaseModel):
    accel: str  # "kvm" or "tcg"
    reason: str


def choose(kernel: Path, cache_dir: Path, qemu: str = "qemu-system-x86_64") -> AccelChoice:
    """``kvm`` when a probe boot of ``kernel`` under KVM finishes, else ``tcg`` (cached)."""
    key = _cache_key(kernel)
    cache = cache_dir / f"accel-{key}.json"
    with contextlib.suppress(OSError, ValueError):
        return AccelChoice.model_validate_json(cache.read_bytes())
    choice = probe(kernel, qemu)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(choice.model_dump_json())
    tmp.replace(cache)
    return choice


def probe(kernel: Path, qemu: str = "qemu-system-x86_64") -> AccelChoice:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice(accel="tcg", reason="no usable /dev/kvm")
    argv = [
        qemu, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio", "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return AccelChoice(
            accel="tcg", reason=f"a KVM probe boot did not finish in {PROBE_TIMEOUT:.0f} s"
        )
    except OSError as exc:
        return AccelChoice(accel="tcg", reason=f"cannot run {qemu}: {exc}")
    if b"Kernel panic" in done.stdout or b"VFS: Unable to mount root" in done.stdout:
        return AccelChoice(accel="kvm", reason="a KVM probe boot reached the kernel's end")
    detail = (done.stderr or done.stdout).decode(errors="replace").strip()[-200:]
    return AccelChoice(accel="tcg", reason=f"the KVM probe boot failed: {detail}")


def _cache_key(kernel: Path) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    stat = kernel.stat()
    raw = json.dumps([boot_id, str(kernel), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
