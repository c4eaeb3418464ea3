"""The provider conformance suite, run against the local (bubblewrap) provider."""

from __future__ import annotations

import pytest

from hivecell.sandbox.base import SandboxProvider
from tests.sandbox.conformance import ProviderConformance
from tests.sandbox.conftest import MakeProvider


class TestLocalConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, make_provider: MakeProvider) -> SandboxProvider:
        return make_provider()
