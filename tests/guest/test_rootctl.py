"""The root end of a VM's control port, without a VM: how it parses and answers lines (its
commands change the clock, the hostname and mounts, so they run in test_qemu_vm.py)."""

from __future__ import annotations

import os
import threading
import tty
from pathlib import Path

import pytest

from hivecell.guest import rootctl


def test_lines_are_answered_with_their_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []

    def fine(*args: str) -> None:
        calls.append(args)

    def broken() -> None:
        raise rootctl.Failed("cannot mount /shared: No such device")

    monkeypatch.setitem(rootctl.COMMANDS, "come-back", fine)
    monkeypatch.setitem(rootctl.COMMANDS, "mount", broken)
    assert rootctl.handle("c1 come-back 1.5 vm-1 ab") == "c1 ok"
    assert calls == [("1.5", "vm-1", "ab")]
    assert rootctl.handle("c2 mount") == "c2 error mount: cannot mount /shared: No such device"
    assert rootctl.handle("c3 reboot-the-host") == "c3 error unknown command reboot-the-host"
    assert rootctl.handle("c4") == "c4 error no command"
    assert rootctl.handle("") == "? error no command"
    # wrong arity is an error reply, not a dead control process
    assert rootctl.handle("c5 drop-caches now please").startswith("c5 error drop-caches")


def test_a_seed_that_is_not_hex_is_refused_before_anything_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed: list[str] = []
    monkeypatch.setattr(rootctl.time, "clock_settime", lambda *a: changed.append("clock"))
    monkeypatch.setattr(rootctl.socket, "sethostname", lambda *a: changed.append("name"))
    assert rootctl.handle("c1 come-back not-a-time vm-1 zz").startswith("c1 error")
    assert changed == []


def test_it_serves_a_port_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(rootctl.COMMANDS, "mount", lambda: None)
    host, guest = os.openpty()  # a character device, as a virtio-serial port is
    tty.setraw(guest)
    server = threading.Thread(target=rootctl.serve, args=(os.ttyname(guest),), daemon=True)
    server.start()
    got = b""
    while not got.endswith(b"ready\n"):
        got += os.read(host, 100)
    os.write(host, b"c1 mount\n" + b"x" * 5000 + b"\nc2 mount\n")
    replies = b""
    while b"c2 ok" not in replies:
        replies += os.read(host, 4096)
    assert b"c1 ok" in replies and b"c2 ok" in replies
