import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A fresh HIVECELL_HOME with a short path.

    Not tmp_path: sandbox sockets live under the home and unix socket paths must stay under
    108 bytes, which pytest's (and xdist's) temporary paths exceed.
    """
    path = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
