"""Bounded JSON decoding for frames from an untrusted peer.

Both ends read frames the other side chose: the guest reads whatever any process in the box
writes to its socket, the host reads whatever the (untrusted) box sends back. ``json.loads``
alone is not safe for that: deep nesting raises RecursionError, ``NaN``/``1e999`` become
floats no JSON peer can read back, duplicate keys silently keep the last value, and a
frame of nothing but ``[]`` builds millions of lists (gigabytes) before anyone can refuse it.

``decode`` refuses all of these with ``DecodeError`` and a short message of its own; it never
echoes the input or Python's internal wording. Costs (measured on this project's 2-core CI
machine, 64 MiB frames): a frame with at most ``max_containers`` brackets goes straight to
``json.loads``; one with more is first scanned by a regular expression (~30 MB/s, up to ~9 s
for 64 MiB of tiny strings) that stops at the first container over either limit, so a
hostile frame never reaches ``json.loads`` with more than the budget.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 128
MAX_CONTAINERS = 100_000

# Up to the next bracket that is not inside a string, consumed inside the regex engine
# (possessive, so a long string costs no backtracking).
_NEXT_BRACKET = re.compile(rb'(?:[^"\[\]{}]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+([\[\]{}])', re.DOTALL)
_OPENERS = (ord("["), ord("{"))


class DecodeError(ValueError):
    """The frame is not JSON this protocol accepts; ``message`` is safe to send back."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def decode(
    frame: bytes, *, max_depth: int = MAX_DEPTH, max_containers: int = MAX_CONTAINERS
) -> Any:
    """Parse one frame of strict UTF-8 JSON within the nesting and container limits."""
    try:
        text = frame.decode("utf-8")  # strict: json.loads would also guess UTF-16/32
    except UnicodeDecodeError as exc:
        raise DecodeError(f"frame is not valid UTF-8 (byte {exc.start})") from None
    openers = frame.count(b"[") + frame.count(b"{")  # an upper bound: strings count too
    if openers > max_containers:
        _scan(frame, max_depth, max_containers)
    try:
        doc = json.loads(
            text,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError(f"nesting deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    except ValueError:  # e.g. an integer over Python's digit limit
        raise DecodeError("not valid JSON: a number is too long") from None
    if max_depth < openers <= max_containers and _depth_over(doc, max_depth):
        raise DecodeError(f"nesting deeper than {max_depth} levels")
    return doc


def _no_constant(name: str) -> Any:
    raise DecodeError(f"{name} is not JSON")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if value - value != 0:  # inf or nan
        raise DecodeError("number out of range for a 64-bit float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise DecodeError("duplicate key in an object")
    return doc


def _scan(frame: bytes, max_depth: int, max_containers: int) -> None:
    """Refuse a frame whose brackets outside strings nest too deep or are too many."""
    depth = containers = 0
    for match in _NEXT_BRACKET.finditer(frame):
        if frame[match.end() - 1] in _OPENERS:
            depth += 1
            containers += 1
            if depth > max_depth:
                raise DecodeError(f"nesting deeper than {max_depth} levels")
            if containers > max_containers:
                raise DecodeError(f"more than {max_containers} arrays and objects")
        else:
            depth -= 1


def _depth_over(doc: Any, max_depth: int) -> bool:
    """Iterative, so it cannot itself recurse; visits containers only."""
    if not isinstance(doc, dict | list):
        return False
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > max_depth:
                    return True
                stack.append((child, depth + 1))
    return False
