"""The accessibility tree over AT-SPI: walk, prune, ids, and element actions (blocking).

Everything here blocks on the accessibility bus and runs on a worker thread; every batch of
calls has a deadline, so an app that hangs or floods costs the walk its time budget only.

Ids are ``<bus>:<object>``, e.g. ``1.9:214`` for object /org/a11y/atspi/accessible/214 of
the app on bus name :1.9: an app keeps an object's path while the object lives, so ids stay
the same across walks.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from hivecell.guest.dbuswire import Bus, BusError, Call, Reply

ACC = "org.a11y.atspi.Accessible"
COMPONENT = "org.a11y.atspi.Component"
ACTION = "org.a11y.atspi.Action"
EDITABLE = "org.a11y.atspi.EditableText"
TEXT = "org.a11y.atspi.Text"
VALUE = "org.a11y.atspi.Value"
PROPS = "org.freedesktop.DBus.Properties"
REGISTRY = ("org.a11y.atspi.Registry", "/org/a11y/atspi/accessible/root")
PATH_PREFIX = "/org/a11y/atspi/accessible/"
SCREEN_COORDS = 0
# AtspiStateType bit numbers (at-spi2-core atspi-constants.h), the ones worth showing.
STATE_BITS = {
    "active": 1, "checked": 4, "collapsed": 5, "defunct": 6, "editable": 7, "enabled": 8,
    "expanded": 10, "focusable": 11, "focused": 12, "modal": 16, "multi_line": 17,
    "pressed": 20, "selected": 23, "sensitive": 24, "showing": 25, "visible": 30,
    "indeterminate": 32, "required": 33, "read_only": 43,
}  # fmt: skip
SHOWN_STATES = ("checked", "editable", "expanded", "collapsed", "focused", "pressed",
                "selected", "indeterminate", "required", "read_only")  # fmt: skip
# Roles that only group others: without a name they are skipped, their children kept.
_CONTAINERS = {
    "panel", "filler", "section", "unknown", "redundant object", "scroll pane", "viewport",
    "layered pane", "internal frame", "root pane", "glass pane", "option pane",
    "split pane", "grouping", "form", "embedded", "invalid", "static", "paragraph",
    "block quote", "article", "landmark", "list item", "table row", "table cell", "frame",
    "window",
}  # fmt: skip
_ID = re.compile(r"^(\d{1,9}\.\d{1,9}):((?:/[A-Za-z0-9_]+)+|[A-Za-z0-9_]{1,64})$")
# Roles whose children only repeat them (a link's or a button's text): not walked into,
# which saves the walk a level on most web pages.
LEAF_ROLES = frozenset(
    {"push button", "link", "entry", "password text", "check box", "radio button", "static",
     "label", "image", "toggle button", "menu item", "check menu item", "radio menu item"}
)  # fmt: skip


# An app that sends no reply for this long (while others do) is taken for frozen and left
# out of the rest of the walk; a busy one answers in far less even under load.
QUIET_S = 0.5


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 300  # nodes returned
    max_depth: int = 40
    budget_s: float = 2.0  # the whole walk
    screen: tuple[int, int] = (1280, 800)

    @property
    def max_visits(self) -> int:
        return self.max_nodes * 8  # objects asked about, shown or not


@dataclass
class Node:
    id: str
    role: str
    name: str
    depth: int
    bounds: tuple[int, int, int, int]  # x, y, width, height in screen pixels
    states: list[str] = field(default_factory=list)
    value: str | None = None
    actions: bool = False
    editable: bool = False


@dataclass
class Tree:
    nodes: list[Node]
    truncated: str | None  # why the walk stopped early, None if it saw everything
    visited: int
    elapsed_ms: float


@dataclass
class _Raw:
    ref: tuple[str, str]
    depth: int  # depth of the nearest returned ancestor + 1
    app: bool = False
    role: str = ""
    states: int = 0
    name: str = ""
    ifaces: tuple[str, ...] = ()
    bounds: tuple[int, int, int, int] | None = None
    children: list[tuple[str, str]] = field(default_factory=list)


def element_id(ref: tuple[str, str]) -> str:
    bus, path = ref
    tail = path[len(PATH_PREFIX) :] if path.startswith(PATH_PREFIX) else path
    return f"{bus.lstrip(':')}:{tail}"


def parse_id(value: str) -> tuple[str, str] | None:
    match = _ID.match(value)
    if match is None:
        return None
    bus, tail = match.groups()
    return f":{bus}", tail if tail.startswith("/") else PATH_PREFIX + tail


# --- the walk ------------------------------------------------------------------------------
@dataclass
class _Walk:
    """One walk's bus, deadline and the apps that stopped answering (left out from then on,
    so a frozen app costs the others one quiet wait, not the budget)."""

    bus: Bus
    deadline: float
    quiet: float
    silent: set[str] = field(default_factory=set)

    def calls(self, calls: list[Call]) -> list[Reply | None]:
        if not calls:
            return []
        replies = self.bus.calls(calls, _left(self.deadline), self.quiet)
        if time.monotonic() < self.deadline:  # cut short by silence, not by the budget
            self.silent |= {c.dest for c, r in zip(calls, replies, strict=True) if r is None}
        return replies

    def answering(self, raws: list[_Raw]) -> list[_Raw]:
        return [raw for raw in raws if raw.ref[0] not in self.silent]


def walk(bus: Bus, limits: Limits) -> Tree:
    started = time.monotonic()
    w = _Walk(bus, started + limits.budget_s, quiet=min(QUIET_S, limits.budget_s / 4))
    apps = _apps(bus, w.deadline)
    frontier = [_Raw(ref, 0, app=True) for ref in apps]
    kept: list[_Raw] = []  # sorted to document order at the end
    truncated: str | None = None
    visited = 0
    order: dict[tuple[str, str], tuple[int, ...]] = {ref: (i,) for i, ref in enumerate(apps)}
    while frontier:
        if time.monotonic() >= w.deadline:
            truncated = f"time budget of {limits.budget_s} s used up"
            break
        room = limits.max_visits - visited
        if len(frontier) > room:
            frontier, truncated = (
                _fair_share(frontier, room),
                f"visited the limit of {limits.max_visits}",
            )
        visited += len(frontier)
        _fetch(w, frontier)
        frontier, too_deep = _expand(w.answering(frontier), kept, order, limits)
        frontier = w.answering(frontier)
        if too_deep:
            truncated = truncated or f"reached the depth limit of {limits.max_depth}"
        if len(kept) >= limits.max_nodes:
            truncated = truncated or f"returned the limit of {limits.max_nodes} nodes"
            break
        if truncated:
            break
    raws = sorted(w.answering(kept), key=lambda raw: order[raw.ref])[: limits.max_nodes]
    nodes = _finish(w, raws)
    if w.silent:
        note = f"{len(w.silent)} app(s) did not answer within {w.quiet:g} s and are left out"
        truncated = f"{truncated}; {note}" if truncated else note
    elapsed = (time.monotonic() - started) * 1000
    return Tree(nodes, truncated, visited, elapsed)


def _fair_share(frontier: list[_Raw], room: int) -> list[_Raw]:
    """At most ``room`` objects, taken in turn from each app: a page with 50 000 elements
    must not crowd a small app's buttons out of the tree."""
    by_app: dict[str, list[_Raw]] = {}
    for raw in frontier:
        by_app.setdefault(raw.ref[0], []).append(raw)
    queues = [iter(raws) for raws in by_app.values()]
    taken: list[_Raw] = []
    while len(taken) < room and queues:
        for queue in list(queues):
            item = next(queue, None)
            if item is None:
                queues.remove(queue)
            elif len(taken) < room:
                taken.append(item)
    return taken


def _apps(bus: Bus, deadline: float) -> list[tuple[str, str]]:
    reply = bus.call(Call(*REGISTRY, ACC, "GetChildren"), _left(deadline))
    if reply is None or not reply.ok:
        raise BusError("the accessibility registry did not answer")
    return _refs(reply.body[0])


def _left(deadline: float) -> float:
    return max(0.01, deadline - time.monotonic())


def _fetch(w: _Walk, raws: list[_Raw]) -> None:
    """Two pipelined batches per level: every object's states, then where the shown ones
    are and what they hold (hidden subtrees cost one call per object, not six)."""
    states = w.calls([Call(*raw.ref, ACC, "GetState") for raw in raws])
    for raw, reply in zip(raws, states, strict=True):
        raw.states = _state_bits(_first(reply, []))
    shown = [raw for raw in w.answering(raws) if raw.app or _shown(raw)]
    calls: list[Call] = []
    for raw in shown:
        calls += [
            Call(*raw.ref, COMPONENT, "GetExtents", "u", (SCREEN_COORDS,)),
            Call(*raw.ref, ACC, "GetChildren"),
            Call(*raw.ref, ACC, "GetRoleName"),
        ]
    replies = w.calls(calls)
    for i, raw in enumerate(shown):
        extents, children, role = replies[i * 3 : i * 3 + 3]
        raw.bounds = _box(_first(extents, None))
        raw.children = _refs(_first(children, []))
        name = _first(role, "")
        raw.role = name if isinstance(name, str) else ""


def _describe(w: _Walk, raws: list[_Raw]) -> None:
    """Name and interfaces of the objects the tree returns."""
    calls: list[Call] = []
    for raw in raws:
        calls += [
            Call(*raw.ref, PROPS, "Get", "ss", (ACC, "Name")),
            Call(*raw.ref, ACC, "GetInterfaces"),
        ]
    replies = w.calls(calls)
    for i, raw in enumerate(raws):
        name, ifaces = replies[i * 2 : i * 2 + 2]
        text, names = _first(name, ""), _first(ifaces, [])
        raw.name = text if isinstance(text, str) else ""
        raw.ifaces = (
            tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else ()
        )


def _shown(raw: _Raw) -> bool:
    return _has(raw, "showing") and _has(raw, "visible")


def _first(reply: Reply | None, default: object) -> object:
    return reply.body[0] if reply is not None and reply.ok and reply.body else default


# Replies come from apps, which may be hostile: anything of the wrong shape counts as absent.
def _state_bits(words: object) -> int:
    bits = 0
    for i, word in enumerate(words[:2] if isinstance(words, list) else []):
        bits |= (word if isinstance(word, int) else 0) << (32 * i)
    return bits


def _box(value: object) -> tuple[int, int, int, int] | None:
    if isinstance(value, tuple) and len(value) == 4 and all(isinstance(v, int) for v in value):
        return (value[0], value[1], value[2], value[3])
    return None


def _refs(value: object) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return []
    return [
        item
        for item in value
        if isinstance(item, tuple) and len(item) == 2 and all(isinstance(v, str) for v in item)
    ]


def _has(raw: _Raw, state: str) -> bool:
    return bool(raw.states >> STATE_BITS[state] & 1)


def _expand(
    level: list[_Raw],
    kept: list[_Raw],
    order: dict[tuple[str, str], tuple[int, ...]],
    limits: Limits,
) -> tuple[list[_Raw], bool]:
    """The next level's objects, and whether some were left out for the depth limit."""
    nxt: list[_Raw] = []
    too_deep = False
    for raw in level:
        if not raw.app and not _shown(raw):
            continue  # hidden: so is everything inside it
        keep = not raw.app and _on_screen(raw, limits.screen)
        if keep:
            kept.append(raw)
        if raw.role in LEAF_ROLES:
            continue
        if raw.depth >= limits.max_depth:
            too_deep = too_deep or bool(raw.children)
            continue
        child_depth = raw.depth + 1 if keep else raw.depth
        for index, ref in enumerate(raw.children):
            if ref in order:
                continue  # a cycle or an object listed twice
            order[ref] = (*order[raw.ref], index)
            nxt.append(_Raw(ref, child_depth))
    return nxt, too_deep


def _on_screen(raw: _Raw, screen: tuple[int, int]) -> bool:
    if raw.bounds is None:
        return False
    x, y, w, h = raw.bounds
    return w > 0 and h > 0 and x < screen[0] and y < screen[1] and x + w > 0 and y + h > 0


def _finish(w: _Walk, raws: list[_Raw]) -> list[Node]:
    _describe(w, raws)
    nodes = [_node(raw) for raw in w.answering(raws)]
    shown = [n for n in nodes if _worth_showing(n)]
    _fill_values(w, shown)
    return shown


def _node(raw: _Raw) -> Node:
    states = [s for s in SHOWN_STATES if _has(raw, s)]
    return Node(
        id=element_id(raw.ref),
        role=raw.role or "unknown",
        name=raw.name[:200],
        depth=raw.depth,
        bounds=raw.bounds or (0, 0, 0, 0),
        states=states,
        actions=ACTION in raw.ifaces,
        editable=_has(raw, "editable"),
    )


def _worth_showing(node: Node) -> bool:
    """Unnamed grouping objects are noise to the model; what they hold is kept."""
    return bool(node.name) or node.editable or node.role not in _CONTAINERS


def _fill_values(w: _Walk, nodes: list[Node]) -> None:
    """Text of editable fields: what the model needs to see before it types."""
    wanted = [n for n in nodes if n.editable]
    calls = [Call(*_ref(n.id), TEXT, "GetText", "ii", (0, 500)) for n in wanted]
    for node, reply in zip(wanted, w.calls(calls), strict=True):
        text = _first(reply, None)
        if isinstance(text, str):
            node.value = text


def _ref(element: str) -> tuple[str, str]:
    ref = parse_id(element)
    if ref is None:
        raise ValueError(element)
    return ref


# --- the text form -------------------------------------------------------------------------
def render(tree: Tree, scale: float = 1.0) -> str:
    """One line per node, indented by depth: ``[id] role "name" =value (x,y wxh) states``;
    coordinates multiplied by ``scale`` (to a scaled screenshot's pixels)."""
    lines = [_line(node, scale) for node in tree.nodes]
    if tree.truncated:
        lines.append(f"(truncated: {tree.truncated}; {len(tree.nodes)} nodes shown)")
    return "\n".join(lines) if lines else "(no visible accessible elements)"


def _line(node: Node, scale: float) -> str:
    x, y, w, h = (round(v * scale) for v in node.bounds)
    parts = [f"{'  ' * min(node.depth, 12)}[{node.id}] {node.role}"]
    if node.name:
        parts.append(_quote(node.name))
    if node.value is not None:
        parts.append("=" + _quote(node.value[:100]))
    parts.append(f"({x},{y} {w}x{h})")
    parts += node.states
    return " ".join(parts)


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return '"' + (flat[:80] + "…" if len(flat) > 80 else flat).replace('"', "'") + '"'


# --- acting on one element -------------------------------------------------------------------
class StaleElement(Exception):
    """The id names no live element (the app closed it, or it never existed)."""


@dataclass
class Element:
    ref: tuple[str, str]
    ifaces: tuple[str, ...]
    bounds: tuple[int, int, int, int] | None
    states: int

    def has(self, state: str) -> bool:
        return bool(self.states >> STATE_BITS[state] & 1)


def lookup(bus: Bus, element: str, timeout: float) -> Element:
    """The element behind an id from a tree, checked to be alive in a registered app."""
    ref = parse_id(element)
    if ref is None:
        raise ValueError(element)
    deadline = time.monotonic() + timeout
    if ref[0] not in {b for b, _ in _apps(bus, deadline)}:
        raise StaleElement(element)
    dest, path = ref
    states, ifaces, extents = bus.calls(
        [
            Call(dest, path, ACC, "GetState"),
            Call(dest, path, ACC, "GetInterfaces"),
            Call(dest, path, COMPONENT, "GetExtents", "u", (SCREEN_COORDS,)),
        ],
        _left(deadline),
    )
    if states is None:
        raise TimeoutError(element)
    if not states.ok:
        raise StaleElement(element)
    names = _first(ifaces, [])
    found = Element(
        ref,
        tuple(n for n in names if isinstance(n, str)) if isinstance(names, list) else (),
        None,
        _state_bits(_first(states, [])),
    )
    found.bounds = _box(_first(extents, None))
    if found.has("defunct"):
        raise StaleElement(element)
    return found


def do_default_action(bus: Bus, element: Element, timeout: float) -> str | None:
    """Runs the element's first action (click, press, activate, jump); its name, or None if
    the element has no action or the app refused it."""
    if ACTION not in element.ifaces:
        return None
    dest, path = element.ref
    names = bus.call(Call(dest, path, ACTION, "GetActions"), timeout)
    actions = _first(names, [])
    if not isinstance(actions, list) or not actions:
        return None
    done = bus.call(Call(dest, path, ACTION, "DoAction", "i", (0,)), timeout)
    first = actions[0]
    name = first[0] if isinstance(first, tuple) and first and isinstance(first[0], str) else ""
    return (name or "default") if _first(done, False) is True else None


def set_text(bus: Bus, element: Element, text: str, timeout: float) -> bool:
    """EditableText.SetTextContents; False when the element cannot take text that way."""
    if EDITABLE not in element.ifaces:
        return False
    dest, path = element.ref
    done = bus.call(Call(dest, path, EDITABLE, "SetTextContents", "s", (text,)), timeout)
    return bool(_first(done, False))


def grab_focus(bus: Bus, element: Element, timeout: float) -> bool:
    dest, path = element.ref
    return bool(_first(bus.call(Call(dest, path, COMPONENT, "GrabFocus"), timeout), False))


def read_text(bus: Bus, element: Element, timeout: float) -> str | None:
    if TEXT not in element.ifaces:
        return None
    dest, path = element.ref
    text = _first(bus.call(Call(dest, path, TEXT, "GetText", "ii", (0, 500)), timeout), None)
    return text if isinstance(text, str) else None
