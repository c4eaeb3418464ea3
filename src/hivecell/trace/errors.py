"""Trace errors, in the shared hivecell error shape."""

from __future__ import annotations

from hivecell.errors import HivecellError, NotFound


class TraceNotFound(NotFound):
    code = "trace_not_found"


class TraceCorrupt(HivecellError):
    """A line other than the last is not a valid record: the file was edited or damaged."""

    code = "trace_corrupt"
