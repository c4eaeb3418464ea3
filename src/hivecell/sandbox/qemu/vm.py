"""The QEMU command line of one VM sandbox.

Direct kernel boot of the template's kernel; the disk is the sandbox's qcow2 overlay; the
guest agent's only channel is a virtio-serial port named ``org.hivecell.agent.0`` whose host
end is a unix socket the supervisor connects to (``wait=on``: the VM starts only once it
has). No display device: the desktop is Xvfb inside the guest, seen through the agent.
QEMU's own seccomp sandbox is on: an escape into the QEMU process cannot spawn or use
obsolete syscalls. Started by root, QEMU opens everything it needs (disks, kernel, sockets,
memory) and then runs as an unprivileged uid of its own (``-runas``), so an escape holds no
capability and can open none of the host's files; see ``under_own_init`` for why it then
runs in a PID namespace.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hivecell.sandbox import supervised
from hivecell.sandbox.qemu import guestctl, machine
from hivecell.sandbox.qemu.layout import STUB_INIT, VmLayout

if TYPE_CHECKING:  # the supervisor imports this module: not the models (~150 ms)
    from hivecell.sandbox.base import SandboxSpec
    from hivecell.sandbox.qemu.template import Template

AGENT_PORT = "org.hivecell.agent.0"
# Under TCG the plain x86-64 model boots faster than "max" (measured here: kernel to init
# 8.9 s instead of 13.1 s, create 32 s instead of 37 s): emulating AVX and friends costs more
# than it saves. It has what Debian 12 and chromium need (SSE3, CX16).
TCG_CPU = "qemu64"
DISK_FDSET = 1  # QEMU's -add-fd set holding the overlay, opened read-only and read-write


def command(
    layout: VmLayout,
    template: Template,
    spec: SandboxSpec,
    accel: str,
    qemu: str,
    *,
    incoming: bool = False,
    runas: int | None = None,
) -> list[str]:
    """QEMU starts paused (``-S``): the supervisor plugs /shared in, then resumes it.
    ``incoming``: it waits for a saved state (``migrate-incoming``) instead of booting.
    ``runas``: the uid (and gid) it drops to once its files are open (when started as root).
    """
    memory = spec.memory_mb or 4096
    cpus = max(1, round(spec.cpus or 2))
    argv = [
        qemu, "-name", layout.sandbox_id,
        "-machine", f"q35,accel={accel}",
        "-cpu", "host" if accel == "kvm" else TCG_CPU,
        "-m", str(memory), "-smp", str(cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
        "-sandbox", seccomp_option(runas),
        "-kernel", str(template.kernel), "-initrd", str(template.initrd),
        "-append", kernel_cmdline(layout, spec),
        "-drive", f"{disk_option(layout, runas)},if=virtio,format=qcow2,discard=unmap",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=agent,path={layout.serial_socket},server=on,wait=on",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
        "-chardev", f"socket,id=ctl,path={layout.control_socket},server=on,wait=off",
        "-device", f"virtserialport,chardev=ctl,name={guestctl.PORT}",
        "-qmp", f"unix:{layout.qmp_socket},server=on,wait=off",
        "-serial", "stdio",
        # /shared over virtio-fs (the cloud kernel has no 9p): its device is hot-plugged
        # into this port (machine.py), as it cannot be migrated.
        "-device", f"pcie-root-port,id={machine.HOTPLUG_PORT},chassis=1",
        "-device", "virtio-rng-pci",
        # the guest hands the pages it frees back to the host (free page reporting), and
        # after a restore squeezes out what loading its state made resident (machine.py)
        "-device", "virtio-balloon-pci,id=balloon,free-page-reporting=on,deflate-on-oom=on",
        # a new generation id on every start: a guest restored from a state others were
        # restored from too reseeds its random pool instead of repeating theirs
        "-device", "vmgenid,guid=auto",
        "-S",
    ]  # fmt: skip
    if incoming:
        argv += ["-incoming", "defer"]
    if runas is not None:
        argv += ["-runas", f"{runas}:{runas}"]
    return argv + network(spec.network)


def memory_options(fd: int, memory_mb: int) -> list[str]:
    """The guest's RAM: the supervisor's memfd ``fd`` (ramfile.py), which QEMU maps shared
    (virtiofsd maps it too, and serves only layout.shared from inside its namespaces). QEMU
    opens it by its /proc path before it drops root."""
    return [
        "-object", f"memory-backend-file,id=mem,size={memory_mb}M,share=on,"
        f"mem-path=/proc/self/fd/{fd}",
        "-numa", "node,memdev=mem",
    ]  # fmt: skip


def disk_option(layout: VmLayout, runas: int | None) -> str:
    """The overlay, or with ``runas`` the descriptors the supervisor passes (``DISK_FDSET``):
    QEMU reopens the disk (read-only, then read-write) around a saved state, by then as a
    uid that cannot reach the file. Its image locks stay off there: they are taken per open
    file, so QEMU's two descriptors of the one file would lock each other out; nothing else
    opens a VM's overlay while its one supervisor runs it."""
    if runas is None:
        return f"file={layout.disk}"
    return f"file=/dev/fdset/{DISK_FDSET},file.locking=off"


def seccomp_option(runas: int | None) -> str:
    """QEMU's seccomp filter. ``elevateprivileges=deny`` would also forbid the setuid of
    ``-runas`` (its filter is on before it drops): an unprivileged QEMU that may call setuid
    (it has no capability left to use it) is the smaller risk than one that stays root."""
    elevate = "allow" if runas is not None else "deny"
    return f"on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"


def under_own_init(argv: list[str], unshare: str, sh: str) -> list[str]:
    """``argv`` in a PID namespace of its own whose init is a shell that only waits for it.

    The supervisor makes QEMU die with it (``PR_SET_PDEATHSIG``), but the kernel clears that
    when a process changes its uid, which ``-runas`` does. The namespace's init keeps it (it
    stays root): when the supervisor dies, ``unshare`` dies, its child the init gets SIGKILL,
    and the kernel kills everything else in the namespace, QEMU included.
    """
    return [unshare, "--pid", "--fork", "--kill-child=SIGKILL", sh, "-c", '"$@" & wait $!',
            "sh", *argv]  # fmt: skip


def find_qemu(pid: int) -> int | None:
    """The QEMU process below ``pid`` (a supervisor, or the ``unshare`` of its init)."""
    for candidate in sorted(p for p, _ in supervised.descendants(pid)):
        try:
            if Path(f"/proc/{candidate}/exe").resolve().name.startswith("qemu-system"):
                return candidate
        except OSError:
            continue
    return None


def network(mode: str) -> list[str]:
    """``offline``: no network device at all. ``nat``: QEMU's user-mode network, whose
    sockets are made in a network namespace of QEMU's own that slirp4netns connects to the
    host behind the host filter (supervisor.py). The guest reaches our DNS as its gateway
    (10.0.2.2 is the namespace's 127.0.0.1, where nothing else listens)."""
    if mode != "nat":
        return ["-nic", "none"]
    return [
        "-netdev", "user,id=net0,ipv6=off",
        "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip


def kernel_cmdline(layout: VmLayout, spec: SandboxSpec) -> str:
    settings = {
        "hostname": layout.sandbox_id,
        "screen": f"{spec.width}x{spec.height}x{spec.depth}",
        "desktop": spec.desktop,
        "network": spec.network,
        "max_file_bytes": str(spec.max_file_bytes),
    }
    words = [
        "root=/dev/vda", "rw", "console=ttyS0", "quiet", "panic=-1",
        f"init={STUB_INIT}", "random.trust_cpu=on",
    ]  # fmt: skip
    words += [f"hivecell.{key}={value}" for key, value in settings.items()]
    return " ".join(words)


def virtiofsd_command(layout: VmLayout, virtiofsd: str) -> list[str]:
    """The file server for /shared: it pivots into ``layout.shared`` in namespaces of its
    own, so nothing the guest names (links included) resolves outside that folder. It runs as
    root (files keep the guest's owners); of the capabilities it keeps, ``mknod`` and
    ``setfcap`` go: a guest root could otherwise plant device nodes or file capabilities in
    a folder the host reads."""
    return [
        virtiofsd, f"--socket-path={layout.virtiofs_socket}",
        "-o", f"source={layout.shared}", "-o", "cache=auto", "-o", "sandbox=namespace",
        "-o", "modcaps=-mknod:-setfcap", "-o", "log_level=warn",
    ]  # fmt: skip
