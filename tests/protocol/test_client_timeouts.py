"""The host waits at least as long as the guest's own timeout for a call, plus a margin."""

from hivecell.sandbox.guest_client import GUEST_TIMEOUT_MARGIN, _effective_timeout


def test_long_guest_timeouts_extend_the_wait() -> None:
    assert _effective_timeout(120.0, {"argv": ["x"], "timeout": 600}) == 600 + GUEST_TIMEOUT_MARGIN
    assert _effective_timeout(120.0, {"seconds": 300}) == 300 + GUEST_TIMEOUT_MARGIN
    # a launch that waits 120 s for its window: the guest's "showed no window" comes back,
    # not the host's vaguer "no answer"
    assert _effective_timeout(120.0, {"window_timeout": 120}) == 120 + GUEST_TIMEOUT_MARGIN


def test_short_or_missing_timeouts_keep_the_default() -> None:
    assert _effective_timeout(120.0, {"timeout": 5}) == 120.0
    assert _effective_timeout(120.0, None) == 120.0
    assert _effective_timeout(None, {"timeout": 5}) is None
    assert _effective_timeout(120.0, {"timeout": "soon"}) == 120.0
