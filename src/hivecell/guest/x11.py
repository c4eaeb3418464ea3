"""The guest agent's one X connection: XTest input, the keymap, and screen grabs.

python-xlib is not thread-safe and every request blocks on the X socket, so all work runs
in a worker thread under one lock (``XSession.run``). Methods ending in ``_sync`` are the
blocking building blocks; call them only from a function passed to ``run``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from Xlib import XK, X, Xatom
from Xlib import error as xerror
from Xlib.display import Display
from Xlib.ext import damage, xtest
from Xlib.protocol import event as xevent

from hivecell.errors import NotSupported, ToolFailed

T = TypeVar("T")

BUTTONS = {"left": 1, "middle": 2, "right": 3}
_KEYSYM_GROUPS = (
    "latin2", "latin3", "latin4", "greek", "cyrillic", "technical", "special",
    "publishing", "xkb", "xf86",
)  # fmt: skip
_CONTROL_KEYSYMS = {"\n": 0xFF0D, "\t": 0xFF09, "\b": 0xFF08, "\x1b": 0xFF1B}
# Before a scratch keycode is rebound, the focused app must have looked up the keys sent
# with the old binding. Apps without _NET_WM_PING get a quiet-screen heuristic instead.
_POINTER_TIMEOUT_S = 2.0
_BUTTON_MASKS = X.Button1Mask | X.Button2Mask | X.Button3Mask | X.Button4Mask | X.Button5Mask
_CATCH_UP_TIMEOUT_S = 2.0
_HANDLED_TIMEOUT_S = 1.0  # an app that does not answer a ping within this is not waited for
_MIN_CATCH_UP_S = 0.25
_QUIET_S = 0.1
_QUIET_POLL_S = 0.025
# Screen epochs are unique in the process: a grab made through one session (or connection)
# never vouches for another's screen.
_EPOCHS = itertools.count(1)


@dataclass(frozen=True)
class Frame:
    """One screen grab: BGRA pixels, 4 bytes each, rows top to bottom.

    ``epoch``: which stretch of an unchanged screen it was grabbed in (``XSession.still_shows``),
    or None when changes cannot be told (the X server lacks DAMAGE).
    """

    bgra: bytes | bytearray
    width: int
    height: int
    epoch: int | None = None


def display_env(display: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process that must talk to the agent's X display."""
    env = {**os.environ, **(extra or {})}
    if display:
        env["DISPLAY"] = display
    if not (env.get("LANG") or env.get("LC_ALL")):
        env["LANG"] = "C.UTF-8"  # without a UTF-8 locale X apps cannot input non-Latin text
    return env


def char_keysym(char: str) -> int | None:
    """The keysym that types ``char``, or None for control characters without a key."""
    if char in _CONTROL_KEYSYMS:
        return _CONTROL_KEYSYMS[char]
    code = ord(char)
    if 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xFF:
        return code  # Latin-1 keysyms equal their code point
    if code < 0x20 or 0x7F <= code < 0xA0:
        return None
    return 0x01000000 | code


def keysym_from_name(name: str) -> int | None:
    """X keysym by name ("Return", "page_down", "F4"); exact case wins over case-insensitive."""
    return XK.string_to_keysym(name) or _lowercase_names().get(name.lower())


@functools.cache
def _lowercase_names() -> dict[str, int]:
    for group in _KEYSYM_GROUPS:
        XK.load_keysym_group(group)
    names = sorted((n[3:] for n in vars(XK) if n.startswith("XK_")), key=lambda n: n != n.lower())
    table: dict[str, int] = {}
    for name in names:  # lowercase spellings first, so "aacute" beats "Aacute"
        table.setdefault(name.lower(), XK.string_to_keysym(name))
    return table


class Keymap:
    """Which keycode and shift level produce each keysym; scratch keycodes for the rest.

    Keysyms missing from the layout are bound to unused keycodes, as xdotool does, two per
    keycode (plain and shifted): every rebinding makes each X client, the window manager
    included, reload its keymap (openbox stalls ~0.1 s per change), so fewer is better. A
    binding stays until its keycode is needed again: reverting right after the key press
    would race clients that read the new mapping only when the key event arrives. The
    scratch keycodes are listed in a root window property, so an agent that restarts after
    a crash can reuse the ones its predecessor left bound.
    """

    def __init__(self, display: Display) -> None:
        self._display = display
        self._claim_atom = display.intern_atom("_HIVECELL_SCRATCH_KEYCODES")
        self.codes: dict[int, tuple[int, int]] = {}
        self.spare: list[int] = []
        self.bound: dict[int, tuple[int, int]] = {}  # keysym -> (scratch keycode, level)
        self.slots: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # keycode -> keysyms, LRU
        self.shift = 0
        self.reload()

    def reload(self) -> None:
        rows = self._rows()
        reusable = set(self.slots) | self._claimed()
        self.spare = [code for code, row in rows if code in reusable or not any(row)]
        self._adopt([(code, row) for code, row in rows if code in reusable])
        self.codes = {}
        for level in (0, 1):
            for code, row in rows:
                if code not in reusable and len(row) > level and row[level]:
                    self.codes.setdefault(row[level], (code, level))
        self.shift = self.codes.get(XK.XK_Shift_L, (0, 0))[0]
        root = self._display.screen().root
        root.change_property(self._claim_atom, Xatom.CARDINAL, 32, self.spare)

    def _adopt(self, rows: list[tuple[int, tuple[int, ...]]]) -> None:
        """Take over scratch bindings already on the server: reusing them costs no remap."""
        self.slots.clear()
        self.bound = {}
        for code, row in rows:
            keysyms = tuple(dict.fromkeys(k for k in row[:2] if k))
            if keysyms:
                self.slots[code] = keysyms
                self.bound.update({k: (code, level) for level, k in enumerate(keysyms)})

    def _claimed(self) -> set[int]:
        root = self._display.screen().root
        prop = root.get_full_property(self._claim_atom, Xatom.CARDINAL)
        return set() if prop is None else {int(code) for code in prop.value}

    def _rows(self) -> list[tuple[int, tuple[int, ...]]]:
        info = self._display.display.info
        first = info.min_keycode
        rows = self._display.get_keyboard_mapping(first, info.max_keycode - first + 1)
        return [(first + i, tuple(row)) for i, row in enumerate(rows)]

    def needs_scratch(self, keysym: int) -> bool:
        return keysym not in self.codes and keysym not in self.bound

    def all_busy(self, busy: set[int]) -> bool:
        return all(code in busy for code in self.spare)

    def resolve(self, keysym: int) -> tuple[int, int]:
        """(keycode, level) of a keysym in the layout or bound by ``bind``."""
        if keysym in self.codes:
            return self.codes[keysym]
        code, level = self.bound[keysym]
        self.slots.move_to_end(code)
        return code, level

    def bind(self, keysyms: tuple[int, ...], busy: set[int]) -> None:
        """Bind one or two keysyms to a scratch keycode that is not in ``busy``."""
        code = self._free_code(busy)
        for old in self.slots.pop(code, ()):
            del self.bound[old]
        row = (keysyms[0], keysyms[-1])  # a single keysym on both levels ignores Shift
        self._display.change_keyboard_mapping(code, [row])
        self.slots[code] = keysyms
        for level, keysym in enumerate(keysyms):
            self.bound[keysym] = (code, level)

    def _free_code(self, busy: set[int]) -> int:
        if not self.spare:
            raise NotSupported("the keyboard map has no unused keycode to type this character")
        unused = [code for code in self.spare if code not in self.slots]
        if unused:
            return unused[0]
        code = next((code for code in self.slots if code not in busy), None)
        if code is None:
            raise NotSupported(f"more than {len(self.spare)} keys outside the layout in one combo")
        return code


def _partner(keysym: int, rest: list[int], keymap: Keymap) -> tuple[int, ...]:
    """keysym plus the next other keysym that also needs binding: one remap for both."""
    other = next((k for k in rest if k != keysym and keymap.needs_scratch(k)), None)
    return (keysym,) if other is None else (keysym, other)


class XSession:
    """The agent's connection to the X display, shared by every X tool."""

    def __init__(self, name: str, display: Display) -> None:
        self.name = name
        self._lock = anyio.Lock()
        self._broken = False
        self._grabber: Any = None
        self._token = 0
        self._keymap_stale = False
        self._attach(display)

    @classmethod
    def open(cls, display: str | None) -> XSession:
        name = display or os.environ.get("DISPLAY")
        if not name:
            raise ToolFailed(
                "no X display: set DISPLAY or start the agent with --display (e.g. :0)", op="x11"
            )
        return cls(name, _connect(name))

    def _attach(self, display: Display) -> None:
        self.display = display
        self.root = display.screen().root
        self.xtest = display.has_extension("XTEST")
        self._keymap: Keymap | None = None
        self._damage: int | None = None  # created on the first grab
        self._damage_event = -1
        self._epoch = next(_EPOCHS)

    @property
    def keymap(self) -> Keymap:
        """Loaded on first keyboard use, inside ``run``: it costs a few round trips."""
        if self._keymap is None:
            self._keymap = Keymap(self.display)
        return self._keymap

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking Xlib/mss work in a worker thread, one call at a time."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._broken:
            self._reconnect_sync()
        try:
            return fn(*args)
        except xerror.ConnectionClosedError as exc:
            self._broken = True
            raise ToolFailed(
                f"lost the connection to X display {self.name}: {exc}", op="x11", retryable=True
            ) from exc
        except xerror.XError as exc:
            raise ToolFailed(f"X request failed on display {self.name}: {exc}", op="x11") from exc

    def _reconnect_sync(self) -> None:
        self._close_grabber()
        self._attach(_connect(self.name))
        self._broken = False

    # --- queries ------------------------------------------------------------------------
    async def screen_size(self) -> tuple[int, int]:
        return await self.run(self.size_sync)

    async def has_xtest(self) -> bool:
        return await self.run(lambda: self.xtest)

    async def cursor_position(self) -> tuple[int, int]:
        return await self.run(self.pointer_sync)

    async def grab(self) -> Frame:
        return await self.run(self.grab_sync)

    @property
    def grabber_open(self) -> bool:
        return self._grabber is not None

    async def release_grabber(self) -> None:
        """Free the grabber's shared frame (memory.IdleTrim); the next grab opens another."""
        if self._grabber is not None:
            await self.run(self._close_grabber)

    async def frame_hash(self) -> int:
        """A checksum of the current screen contents, for change detection."""
        return await self.run(lambda: zlib.crc32(self.grab_sync().bgra))

    def size_sync(self) -> tuple[int, int]:
        geometry = self.root.get_geometry()  # not the setup-time size: RandR can resize
        return geometry.width, geometry.height

    def pointer_sync(self) -> tuple[int, int]:
        pointer = self.root.query_pointer()
        return pointer.root_x, pointer.root_y

    def grab_sync(self) -> Frame:
        self._drain_events()  # reports already read predate the re-arm: count them first
        watching = self._rearm_damage()
        # Any change reported from here on ends this grab's epoch, even one drawn before the
        # re-arm took effect (its report may be the last until the next re-arm).
        epoch = self._epoch
        width, height = self.size_sync()  # a round trip: the re-arm is in effect from here
        if self._grabber is None:
            self._grabber = _open_grabber(self.name)
        shot = self._grabber.grab({"left": 0, "top": 0, "width": width, "height": height})
        return Frame(shot.raw, shot.width, shot.height, epoch if watching else None)

    def still_shows(self, frame: Frame) -> bool:
        """True when the screen has not changed since ``frame`` was grabbed (per DAMAGE).

        Costs one round trip, not a grab: the idle agent releases its grabber, and reopening
        it plus grabbing and hashing 1280x800 took ~8 ms of a warm task's first look.
        """
        if frame.epoch is None:
            return False
        size = self.size_sync()  # the round trip: every change reported so far is queued
        self._drain_events()
        return frame.epoch == self._epoch and size == (frame.width, frame.height)

    def _rearm_damage(self) -> bool:
        """Have the X server report the next change to the screen; False without DAMAGE.

        NonEmpty level: one DamageNotify when the damaged region stops being empty, none
        after it until the region is emptied again here (so a busy screen costs one event
        per grab, not one per draw).
        """
        if self._damage is None:
            if not self.display.has_extension("DAMAGE"):
                return False
            self.display.damage_query_version()  # the server refuses DAMAGE requests before it
            self._damage = self.root.damage_create(damage.DamageReportNonEmpty)
            # python-xlib registers a copy of the event class: match the code, not the class
            self._damage_event = self.display.extension_event.DamageNotify
        self.display.damage_subtract(self._damage)
        return True

    # --- input --------------------------------------------------------------------------
    def _fake(self, event: int, detail: int = 0, x: int = 0, y: int = 0) -> None:
        if not self.xtest:
            raise NotSupported(f"the XTEST extension is missing on display {self.name}")
        xtest.fake_input(self.display, event, detail, x=x, y=y)

    def motion_sync(self, x: int, y: int) -> None:
        self._fake(X.MotionNotify, x=x, y=y)

    def button_sync(self, button: int, down: bool) -> None:
        self._fake(X.ButtonPress if down else X.ButtonRelease, button)

    def key_sync(self, keycode: int, down: bool) -> None:
        self._fake(X.KeyPress if down else X.KeyRelease, keycode)

    def flush_sync(self) -> None:
        """One round trip: the server has handled every request sent so far."""
        self.display.sync()

    def await_pointer_sync(self, x: int, y: int, held: int | None = 0) -> None:
        """Wait until the pointer is at (x, y) with only ``held`` down (None: any buttons).

        Handled is not delivered: a window manager's synchronous button grab (openbox's
        click-to-focus) freezes the pointer after a press until the WM replays it, and the
        events queued meanwhile are delivered with the pointer position of that later
        moment. Without this wait, the next move would carry a click's release along.
        QueryPointer reports the delivered state, so poll it (usually 1-3 round trips).
        """
        expected = 0 if not held else X.Button1Mask << (held - 1)
        deadline = time.monotonic() + _POINTER_TIMEOUT_S
        for attempt in itertools.count():
            pointer = self.root.query_pointer()
            at_target = (pointer.root_x, pointer.root_y) == (x, y)
            if at_target and (held is None or pointer.mask & _BUTTON_MASKS == expected):
                return
            if time.monotonic() > deadline:
                return  # e.g. a stalled WM: the events stay queued and arrive later
            if attempt >= 3:
                time.sleep(0.001)  # worker thread: the event loop keeps running

    def type_sync(self, keysyms: list[int]) -> None:
        """Press and release each keysym in order, remapping spare keycodes as needed."""
        self._drain_events()
        busy: set[int] = set()
        for index, keysym in enumerate(keysyms):
            if self.keymap.needs_scratch(keysym):
                if self.keymap.all_busy(busy):
                    self._let_clients_catch_up()
                    busy.clear()
                self.keymap.bind(_partner(keysym, keysyms[index + 1 :], self.keymap), busy)
            code, level = self.keymap.resolve(keysym)
            busy.add(code)
            self._stroke(code, level)
        self.handled_sync()

    def _stroke(self, code: int, level: int) -> None:
        if level:
            self.key_sync(self.keymap.shift, True)
        self.key_sync(code, True)
        self.key_sync(code, False)
        if level:
            self.key_sync(self.keymap.shift, False)

    def combo_sync(self, keysyms: list[int]) -> None:
        """Hold each key in order, then release them in reverse (ctrl+shift+t)."""
        self.release_sync(self.press_sync(keysyms))
        self.handled_sync()

    def press_sync(self, keysyms: list[int]) -> list[int]:
        """Press each key in order and keep them down; returns the keycodes for
        ``release_sync`` (a failure half way releases what was pressed)."""
        self._drain_events()
        pressed: list[int] = []
        try:
            for keysym in keysyms:
                if self.keymap.needs_scratch(keysym):
                    self.keymap.bind((keysym,), set(pressed))
                code, level = self.keymap.resolve(keysym)
                if level and self.keymap.shift not in pressed:
                    self.key_sync(self.keymap.shift, True)
                    pressed.append(self.keymap.shift)
                self.key_sync(code, True)
                pressed.append(code)
        except BaseException:
            self.release_sync(pressed)
            raise
        self.flush_sync()
        return pressed

    def release_sync(self, codes: list[int]) -> None:
        for code in reversed(codes):
            self.key_sync(code, False)
        self.flush_sync()

    def handled_sync(self) -> None:
        """Return once the focused app has handled the input sent so far, when it answers
        _NET_WM_PING (in event order, so the pong comes after the keys): the effects of
        ctrl+c on the clipboard, say, are there for the next call. Apps that do not answer
        are not waited for."""
        self.flush_sync()
        window = self._active_window()
        if window is not None:
            self._ping(window, _HANDLED_TIMEOUT_S)

    def _let_clients_catch_up(self) -> None:
        """Wait until the focused app has looked up every key sent so far.

        Only then may a scratch keycode be rebound. Apps that answer _NET_WM_PING do so
        in event order, which is exact; for others, wait until the screen stops changing.
        """
        self.flush_sync()
        window = self._active_window()
        if window is None or not self._ping(window):
            self._wait_quiet_screen()

    def _active_window(self) -> Any:
        prop = self.root.get_full_property(self._atom("_NET_ACTIVE_WINDOW"), Xatom.WINDOW)
        if prop is None or not len(prop.value) or not prop.value[0]:
            return None
        return self.display.create_resource_object("window", int(prop.value[0]))

    def _ping(self, window: Any, timeout: float | None = None) -> bool:
        """True once the window's client answered a _NET_WM_PING; False if it cannot."""
        protocols = self._atom("WM_PROTOCOLS")
        try:
            supported = window.get_wm_protocols() or ()
        except (xerror.BadWindow, xerror.BadDrawable):
            return False  # closed meanwhile
        if self._atom("_NET_WM_PING") not in supported:
            return False
        self._token = (self._token + 1) & 0xFFFFFFFF
        data = [self._atom("_NET_WM_PING"), self._token, window.id, 0, 0]
        ping = xevent.ClientMessage(window=window, client_type=protocols, data=(32, data))
        self.root.change_attributes(event_mask=X.SubstructureNotifyMask)  # pongs go to root
        try:
            window.send_event(ping, event_mask=X.NoEventMask)
            self.display.flush()
            token = self._token
            return self._await_event(lambda e: _is_pong(e, protocols, token), timeout)
        finally:
            self.root.change_attributes(event_mask=X.NoEventMask)

    def _await_event(self, wanted: Callable[[Any], bool], timeout: float | None = None) -> bool:
        deadline = time.monotonic() + (_CATCH_UP_TIMEOUT_S if timeout is None else timeout)
        while time.monotonic() < deadline:
            while self.display.pending_events():
                if wanted(self._note(self.display.next_event())):
                    return True
            time.sleep(0.002)  # worker thread: the event loop keeps running
        return False

    def _wait_quiet_screen(self) -> None:
        start = time.monotonic()
        last, quiet_since = zlib.crc32(self.grab_sync().bgra), start
        while time.monotonic() - start < _CATCH_UP_TIMEOUT_S:
            time.sleep(_QUIET_POLL_S)
            now, current = time.monotonic(), zlib.crc32(self.grab_sync().bgra)
            if current != last:
                last, quiet_since = current, now
            elif now - quiet_since >= _QUIET_S and now - start >= _MIN_CATCH_UP_S:
                return

    def _drain_events(self) -> None:
        """Drop queued events; reload the keymap if someone else changed it."""
        while self.display.pending_events():
            self._note(self.display.next_event())
        if self._keymap_stale:
            self._keymap_stale = False
            self.keymap.reload()

    def _note(self, event: Any) -> Any:
        if event.type == self._damage_event:  # -1 (none) until the first grab
            self._epoch = next(_EPOCHS)
        elif event.type == X.MappingNotify and event.request != X.MappingPointer:
            ours = event.count == 1 and event.first_keycode in self.keymap.slots
            self._keymap_stale = self._keymap_stale or not ours
        return event

    def _atom(self, name: str) -> int:
        return int(self.display.intern_atom(name))  # python-xlib caches atoms

    # --- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        self._close_grabber()
        # Best effort: the server may already be gone when the agent shuts down.
        # Scratch keycodes stay bound: unbinding would stall every client (the WM reloads
        # its keymap per change) and the next agent adopts them through the root property.
        with contextlib.suppress(xerror.XError, OSError, xerror.ConnectionClosedError):
            self.display.close()

    def _close_grabber(self) -> None:
        if self._grabber is not None:
            import mss  # imported when the grabber was opened

            with contextlib.suppress(mss.ScreenShotError):
                self._grabber.close()
            self._grabber = None


def _is_pong(event: Any, protocols: int, token: int) -> bool:
    return bool(
        event.type == X.ClientMessage
        and event.client_type == protocols
        and event.data[1][1] == token
    )


def _connect(name: str) -> Display:
    try:
        return Display(name)
    except (xerror.DisplayError, OSError) as exc:
        raise ToolFailed(
            f"cannot connect to X display {name!r} (DISPLAY): {exc}; check that the X server "
            "is running and DISPLAY names it",
            op="x11",
            retryable=True,
        ) from exc


def _open_grabber(name: str) -> Any:
    import mss  # on the first screenshot: boot does not need it (see boot.LAZY_MODULES)

    try:
        return mss.MSS(display=name)
    except mss.ScreenShotError as exc:
        raise ToolFailed(f"cannot capture X display {name!r}: {exc}", op="screenshot") from exc
