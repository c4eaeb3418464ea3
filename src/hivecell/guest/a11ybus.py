"""The sandbox's D-Bus session bus and AT-SPI registry, for the accessibility tree.

One dbus-daemon serves as both the session bus and the accessibility bus: apps find the
latter through AT_SPI_BUS_ADDRESS before they ask the session bus for org.a11y.Bus, so the
at-spi-bus-launcher and its second dbus-daemon are never started (~3 MB and a few ms less
per box). at-spi2-registryd lists the apps that register (GTK through atk-bridge, Chromium
with ACCESSIBILITY_ENABLED=1, Qt with QT_LINUX_ACCESSIBILITY_ALWAYS_ON=1).

Imported by the boot process, so only the standard library at module level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger("hivecell.guest.a11ybus")
READY_TIMEOUT_S = 5.0
REGISTRY_NAME = "org.a11y.atspi.Registry"
REGISTRYD = ("/usr/libexec/at-spi2-registryd", "/usr/lib/at-spi2-core/at-spi2-registryd")


class SessionBus:
    # A plain class, not a dataclass: this module runs in every sandbox's boot process,
    # where importing dataclasses (inspect, ast, ...) cost ~1 MB per sandbox.
    def __init__(self, daemon: subprocess.Popen[bytes], address: str, ready_fd: int) -> None:
        self.daemon = daemon
        self.address = address
        self.ready_fd = ready_fd  # dbus-daemon prints its address here once it listens

    @classmethod
    def start(cls, runtime_dir: Path) -> SessionBus | None:
        exe = shutil.which("dbus-daemon")
        if exe is None:
            log.warning("dbus-daemon is not installed; no accessibility tree in this sandbox")
            return None
        address = f"unix:path={runtime_dir / 'bus'}"  # where sd-bus/GDBus look by default too
        ready_r, ready_w = os.pipe()
        argv = [exe, "--session", "--nofork", "--nopidfile", f"--address={address}"]
        daemon = subprocess.Popen(
            [*argv, f"--print-address={ready_w}"], pass_fds=(ready_w,), stdin=subprocess.DEVNULL
        )
        os.close(ready_w)
        return cls(daemon, address, ready_r)

    def environment(self) -> dict[str, str]:
        return {
            "DBUS_SESSION_BUS_ADDRESS": self.address,
            "AT_SPI_BUS_ADDRESS": self.address,
            "ACCESSIBILITY_ENABLED": "1",  # Chromium's switch for its AT-SPI bridge
            "QT_LINUX_ACCESSIBILITY_ALWAYS_ON": "1",
        }

    def start_registry(self, display: str) -> list[subprocess.Popen[bytes]]:
        """Once the bus listens: the registry (not waited for here; agents wait for it)."""
        if not self._wait_ready():
            return []
        exe = next((p for p in REGISTRYD if Path(p).exists()), None)
        if exe is None:
            log.warning("at-spi2-registryd is not installed (apt install at-spi2-core)")
            return []
        env = {**os.environ, "DISPLAY": display}
        argv = [exe, "--use-gnome-session=false"]
        quiet = subprocess.DEVNULL  # stdout carries only a start-up banner
        return [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=quiet, env=env)]

    def close_ready(self) -> None:
        if self.ready_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.ready_fd)
            self.ready_fd = -1

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if not select.select([self.ready_fd], [], [], deadline - time.monotonic())[0]:
                    break
                if not os.read(self.ready_fd, 256):
                    log.warning("dbus-daemon exited with code %s", self.daemon.poll())
                    return False
                return True
            log.warning("dbus-daemon did not listen within %.0f s", READY_TIMEOUT_S)
            return False
        finally:
            self.close_ready()

    def wait_for_registry(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """In the agent: block until the registry owns its name, so apps started from now on
        register with it (an app that starts before it is missing from the tree for good)."""
        from hivecell.guest.dbuswire import Bus, BusError, Call

        deadline = time.monotonic() + timeout
        try:
            bus = Bus(self.address, timeout=timeout)
        except BusError as exc:
            log.warning("no accessibility bus: %s", exc)
            return False
        try:
            ask = Call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                       "NameHasOwner", "s", (REGISTRY_NAME,))  # fmt: skip
            while time.monotonic() < deadline:
                reply = bus.call(ask, max(0.01, deadline - time.monotonic()))
                if reply is not None and reply.ok and reply.body[0]:
                    return True
                time.sleep(0.005)  # the registry starts within tens of ms
            log.warning("the accessibility registry did not start within %.0f s", timeout)
            return False
        finally:
            bus.close()
