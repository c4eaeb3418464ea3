"""The terminal framing, tested like an attacker would feed it."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hivecell.sessions import framing
from hivecell.sessions.framing import BadFrame, FrameType


def test_round_trip_of_each_type() -> None:
    for kind in FrameType:
        payload = b"x" if kind not in (FrameType.RESIZE, FrameType.CONTROL) else b""
        if kind is FrameType.RESIZE:
            payload = struct.pack("!HH", 80, 24)
        if kind is FrameType.CONTROL:
            payload = b'{"op":"status"}'
        frame = framing.decode(framing.encode(kind, payload, agent=0))
        assert (frame.type, frame.payload, frame.agent) == (kind, payload, 0)
    assert framing.decode(framing.resize(100, 30)).size() == (100, 30)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"", "truncated header"),
        (b"\x01\x00", "truncated header"),
        (struct.pack("!BHI", 1, 0, 5) + b"abc", "says 5 payload bytes"),  # truncated payload
        (struct.pack("!BHI", 1, 0, 1) + b"ab", "says 1 payload bytes"),  # trailing bytes
        (struct.pack("!BHI", 9, 0, 0), "unknown frame type 9"),
        (struct.pack("!BHI", 0, 0, 0), "unknown frame type 0"),
        (struct.pack("!BHI", 1, 0, 0xFFFFFFFF), "over"),  # oversized length, no payload read
        (struct.pack("!BHI", 4, 0, 3) + b"abc", "resize payload is 3 bytes"),
        (struct.pack("!BHI", 4, 0, 4) + struct.pack("!HH", 0, 24), "each side"),
        (struct.pack("!BHI", 4, 0, 4) + struct.pack("!HH", 80, 60000), "each side"),
        (struct.pack("!BHI", 3, 0, 4) + b"\xff\xfe{}", "not JSON"),
        (struct.pack("!BHI", 3, 0, 2) + b"[]", "JSON object"),
        (struct.pack("!BHI", 3, 0, 2) + b"{}", "JSON object"),
    ],
)
def test_malformed_frames_are_rejected(message: bytes, why: str) -> None:
    with pytest.raises(BadFrame, match=why):
        framing.decode(message)


def test_oversized_payload_cannot_be_encoded_either() -> None:
    with pytest.raises(BadFrame):
        framing.encode(FrameType.STDOUT, b"x" * (framing.MAX_PAYLOAD + 1))
    deep = b'{"op":"x","a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(BadFrame):
        framing.decode(framing.HEADER.pack(3, 0, len(deep)) + deep)


@given(st.binary(max_size=64))
def test_random_bytes_decode_or_raise_bad_frame_only(data: bytes) -> None:
    try:
        frame = framing.decode(data)
    except BadFrame:
        return
    assert framing.encode(frame.type, frame.payload, frame.agent) == data
