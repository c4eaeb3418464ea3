"""The sandbox's own /etc files (users, host names, DNS) and the host /etc entries it may see.

Only a curated part of the host's /etc is visible: what desktop apps need to find fonts,
certificates, MIME types and libraries. Never passwd/shadow/sudoers/ssh keys, and not
/etc/ssl/private: any file the box's host user can read and that we bind would be readable
inside (that user is the one running hivecell, or as root an unprivileged uid of the box's own).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from hivecell.sandbox.base import NetworkMode
from hivecell.sandbox.local.layout import Layout

SANDBOX_UID = 1000
SANDBOX_USER = "user"
SANDBOX_HOME = "/home/user"
NAT_DNS = "127.0.0.53"  # our forwarder (dnsproxy.py), in the box's own namespace

HOST_ETC = (
    "alternatives", "bash.bashrc", "ca-certificates", "ca-certificates.conf", "chromium",
    "chromium.d", "crypto-policies", "dbus-1", "dconf", "debian_version", "drirc", "fonts",
    "gai.conf", "glvnd", "gtk-2.0", "gtk-3.0", "host.conf", "inputrc", "issue", "ld.so.cache",
    "ld.so.conf", "ld.so.conf.d", "locale.alias", "localtime", "lsb-release", "magic",
    "magic.mime", "mailcap", "mime.types", "os-release", "pki/tls/certs", "profile",
    "profile.d", "protocols", "pulse", "services", "shells", "ssl/certs", "ssl/openssl.cnf",
    "terminfo", "timezone", "vulkan", "X11", "xdg",
)  # fmt: skip


def write(layout: Layout, sandbox_id: str, network: NetworkMode) -> None:
    """(Re)write the generated files; the machine id is kept across restarts."""
    etc = layout.etc
    etc.mkdir(parents=True, exist_ok=True)
    for name, text in _generated(sandbox_id, network).items():
        (etc / name).write_text(text)
    machine_id = etc / "machine-id"
    if not machine_id.exists():
        machine_id.write_text(uuid.uuid4().hex + "\n")
    # The box's user is not their owner (as root it is a uid of its own): whatever the
    # umask, it must be able to read them.
    for path in etc.iterdir():
        path.chmod(0o644)


def _generated(sandbox_id: str, network: NetworkMode) -> dict[str, str]:
    files = {
        "passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox user:{SANDBOX_HOME}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
        "hostname": f"{sandbox_id}\n",
        "hosts": f"127.0.0.1 localhost\n127.0.1.1 {sandbox_id}\n::1 localhost ip6-localhost\n",
        "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\nnetworks: files\n"
        "protocols: files\nservices: files\n",
    }
    # Offline boxes get no resolver at all so lookups fail fast instead of timing out.
    files["resolv.conf"] = f"nameserver {NAT_DNS}\n" if network == "nat" else ""
    return files


def binds(layout: Layout) -> list[tuple[str, str]]:
    """(host, sandbox) read-only binds for /etc: curated host entries, then our files."""
    host = [(f"/etc/{name}", f"/etc/{name}") for name in HOST_ETC if Path("/etc", name).exists()]
    ours = sorted(p.name for p in layout.etc.iterdir())
    return host + [(str(layout.etc / name), f"/etc/{name}") for name in ours]
