import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.helpers import destroy_all, short_tmp
from tests.server.helpers import TOKEN
from tests.sessions.cleanup import stop_sessions


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def short_home(pycache: Path) -> Iterator[Path]:
    """A fresh HIVECELL_HOME with a short path.

    Not tmp_path: sandbox sockets live under the home and unix socket paths must stay under
    108 bytes, which pytest's (and xdist's) temporary paths exceed. Sandboxes left under it
    (a server killed while its pool booted one) are destroyed and session supervisors (with
    their agents) stopped, not orphaned by the rmtree.
    """
    path = short_tmp("hc-")
    yield path
    stop_sessions(path)
    destroy_all(path, pycache)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pycache() -> Iterator[Path]:
    """One guest bytecode cache per session (per xdist worker): a fresh home compiles ~1 s."""
    path = short_tmp("hc-pyc-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def home(pycache: Path) -> Iterator[Path]:
    """A fresh short state folder whose ``pycache`` is the session's, so CLI and server runs
    started on it (which cannot be handed a cache folder) skip the compile too. Sandboxes
    left behind (e.g. by a killed process) are destroyed afterwards."""
    path = short_tmp("hc-")
    (path / "pycache").symlink_to(pycache)
    yield path
    stop_sessions(path)
    destroy_all(path, pycache)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def shome(home: Path) -> Path:
    """``home`` with the token file the CLI and the server read (its sessions are stopped
    with it, as ``home``'s are)."""
    (home / "token").write_text(TOKEN + "\n")
    return home
