"""hivecell: fleets of AI agents in isolated Linux desktop sandboxes.

from hivecell import Sandbox
with Sandbox.create() as sb:
    print(sb.exec(["echo", "hi"]).stdout)
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: every sandbox's boot process imports this
# package, and typing costs it ~0.5 MB (type checkers treat this constant the same way).
TYPE_CHECKING = False
__version__ = "0.1.0"
__all__ = ["AsyncSandbox", "Sandbox", "__version__"]

if TYPE_CHECKING:
    from typing import Any

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
