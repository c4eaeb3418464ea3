"""hivecell: fleets of AI agents in isolated Linux desktop sandboxes.

from hivecell import Sandbox
with Sandbox.create() as sb:
    print(sb.exec(["echo", "hi"]).stdout)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["AsyncSandbox", "Sandbox", "__version__"]

if TYPE_CHECKING:
    from hivecell.sdk.async_sandbox import AsyncSandbox
    from hivecell.sdk.sync_sandbox import Sandbox


def __getattr__(name: str) -> Any:
    # Lazy so the guest agent (which imports hivecell.*) does not pay for the SDK at boot.
    if name == "Sandbox":
        from hivecell.sdk.sync_sandbox import Sandbox

        return Sandbox
    if name == "AsyncSandbox":
        from hivecell.sdk.async_sandbox import AsyncSandbox

        return AsyncSandbox
    raise AttributeError(f"module 'hivecell' has no attribute {name!r}")
