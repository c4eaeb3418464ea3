"""GLX (Mesa in Xvfb, ~55 MB) is off unless a sandbox asks for it."""

from __future__ import annotations

import pytest

from hivecell.sandbox.base import SandboxSpec
from tests.sandbox.conftest import MakeProvider

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.mark.parametrize("glx", [False, True])
async def test_glx_follows_the_spec(make_provider: MakeProvider, glx: bool) -> None:
    provider = make_provider()
    info = await provider.create(SandboxSpec(glx=glx))
    async with await provider.connect(info.id) as guest:
        result = await guest.call("run_shell", {"command": "xdpyinfo -queryExtensions"})
    assert result["exit_code"] == 0
    assert ("GLX" in result["stdout"]) is glx
