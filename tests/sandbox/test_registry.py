from __future__ import annotations

from pathlib import Path

import pytest

from hivecell.errors import ConfigError
from hivecell.sandbox.base import SandboxProvider
from hivecell.sandbox.local.provider import LocalProvider
from hivecell.sandbox.registry import get_provider


def test_local_is_the_local_provider(tmp_path: Path) -> None:
    provider = get_provider("local", tmp_path)
    assert isinstance(provider, LocalProvider)
    assert isinstance(provider, SandboxProvider)
    assert (provider.name, provider.home) == ("local", tmp_path)


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown sandbox provider 'nope'; available: local"):
        get_provider("nope", tmp_path)
