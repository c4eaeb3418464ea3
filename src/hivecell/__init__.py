"""hivecell: fleets of AI agents in isolated Linux desktop sandboxes."""

from __future__ import annotations

__version__ = "0.1.0"
