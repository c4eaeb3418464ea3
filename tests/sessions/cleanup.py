"""Stop every session supervisor of a test's home, and everything its agent started: a
failed test (or a killed server) must not leave terminals running on the machine."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from hivecell.sessions.recorders import process_tree
from hivecell.sessions.supervisor import running_supervisors


def supervisors(home: Path) -> list[int]:
    return running_supervisors(home)


def stop_sessions(home: Path) -> None:
    """SIGKILL each supervisor's whole tree, agents' background jobs included (a job that
    ignores SIGHUP would outlive its terminal closing)."""
    for supervisor in supervisors(home):
        tree = set(process_tree(supervisor))
        for pid in list(tree):  # an agent leads its terminal's session: take all of it
            with contextlib.suppress(ProcessLookupError):
                if os.getsid(pid) == pid:
                    tree |= set(process_tree(pid))
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
