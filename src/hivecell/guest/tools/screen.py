"""Guest tools: screenshots, screen and pointer queries, waiting for the screen to settle."""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import time

import anyio
import anyio.to_thread

from hivecell.guest import pngenc
from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.guest.x11 import Frame, XSession
from hivecell.protocol import methods as m

router = Router()
POLL_S = 0.02  # one grab + checksum costs ~3 ms on 1280x800, so 50 polls/s stays cheap


@functools.cache
def _default_settle() -> m.SettleParams:
    # Built on first use, not at import: building a model's validator costs boot time.
    return m.SettleParams()


@router.method("screenshot")
async def screenshot(p: m.ScreenshotParams, ctx: CallContext) -> m.ScreenshotResult:
    x = ctx.services.x
    if (last := _LAST_SHOT.last(p)) is not None and await x.run(x.still_shows, last[0]):
        return last[1]
    frame = await x.grab()
    # Encoding runs outside the X lock: input calls need not wait for the PNG encoder.
    return await anyio.to_thread.run_sync(_LAST_SHOT.encoded, frame, p)


class _LastShot:
    """The last encoded screenshot, handed out again while the screen shows the same pixels.

    An agent looks at an unchanged screen often (the first look at a fresh desktop, after a
    click that did nothing, a poll while a page loads). The X server's DAMAGE reports say
    whether anything was drawn since the slot's grab without grabbing again (``last``); when
    something was, the pixels may still be the same (a caret blinked twice): hashing them
    costs ~3 ms (SHA-1 runs in hardware; zlib's crc32 took 7 here) where encoding a PNG costs
    15-30. One slot: a miss replaces it.
    """

    def __init__(self) -> None:
        self._slot: tuple[tuple[object, ...], Frame, m.ScreenshotResult] | None = None

    def last(self, p: m.ScreenshotParams) -> tuple[Frame, m.ScreenshotResult] | None:
        """The slot's grab (pixels dropped) and result, if ``p`` asks for the same image."""
        slot = self._slot
        if slot is None or slot[0][1:] != _image_key(slot[1].width, slot[1].height, p):
            return None
        return slot[1], slot[2]

    def encoded(self, frame: Frame, p: m.ScreenshotParams) -> m.ScreenshotResult:
        key = (
            hashlib.sha1(frame.bgra, usedforsecurity=False).digest(),
            *_image_key(frame.width, frame.height, p),
        )
        mark = Frame(b"", frame.width, frame.height, frame.epoch)  # the slot keeps no pixels
        slot = self._slot  # one read: a concurrent call may replace it meanwhile
        if slot is not None and slot[0] == key:
            self._slot = (key, mark, slot[2])  # same pixels, newer grab: vouched for longer
            return slot[2]
        data, width, height = encode(frame, p)
        result = m.ScreenshotResult(
            format=p.format,
            data=base64.b64encode(data).decode("ascii"),
            width=width,
            height=height,
            screen_width=frame.width,
            screen_height=frame.height,
            scale=width / frame.width,
        )
        self._slot = (key, mark, result)
        return result


def _image_key(width: int, height: int, p: m.ScreenshotParams) -> tuple[object, ...]:
    return (
        width,
        height,
        target_size(width, height, p),  # not scale/max_width: same size, same PNG
        p.format,
        None if p.format == "png" else p.quality,
    )


_LAST_SHOT = _LastShot()


def encode(frame: Frame, p: m.ScreenshotParams) -> tuple[bytes, int, int]:
    # Pillow is imported on the first screenshot, not at boot: cold start does not need it
    # (boot.LAZY_MODULES has the host precompile it all the same).
    from PIL import Image

    image = Image.frombuffer("RGB", (frame.width, frame.height), frame.bgra, "raw", "BGRX", 0, 1)
    size = target_size(frame.width, frame.height, p)
    if size != image.size:
        # reducing_gap=1: box-average by the integer part first (scale 0.5: 1 ms, not 13 ms)
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)
    if p.format == "png":  # ~3x faster than Pillow's PNG encoder (pngenc says why)
        return pngenc.encode_rgb(image.tobytes(), image.width, image.height), *image.size
    out = io.BytesIO()
    if p.format == "webp":
        image.save(out, "WEBP", quality=p.quality, method=0)  # method 0: 13 ms, not 51 ms
    else:
        image.save(out, "JPEG", quality=p.quality)
    return out.getvalue(), image.width, image.height


def target_size(width: int, height: int, p: m.ScreenshotParams) -> tuple[int, int]:
    """Never upscales: scale and max_width only shrink, the smaller result wins."""
    factor = min(1.0, p.scale or 1.0, p.max_width / width if p.max_width else 1.0)
    return max(1, round(width * factor)), max(1, round(height * factor))


@router.method("get_screen_size")
async def get_screen_size(p: m.Empty, ctx: CallContext) -> m.ScreenSize:
    width, height = await ctx.services.x.screen_size()
    return m.ScreenSize(width=width, height=height)


@router.method("get_cursor_position")
async def get_cursor_position(p: m.Empty, ctx: CallContext) -> m.Position:
    x, y = await ctx.services.x.cursor_position()
    return m.Position(x=x, y=y)


@router.method("wait_for_settle")
async def wait_for_settle(p: m.SettleParams, ctx: CallContext) -> m.SettleResult:
    return await settle(ctx.services.x, p.timeout, p.quiet_ms / 1000)


async def settle(x: XSession, timeout: float, quiet: float) -> m.SettleResult:
    """Poll frame checksums until the screen stayed the same for ``quiet`` seconds."""
    start = changed_at = time.monotonic()
    last = await x.frame_hash()
    while True:
        await anyio.sleep(POLL_S)
        current, now = await x.frame_hash(), time.monotonic()
        if current != last:
            last, changed_at = current, now
        elif now - changed_at >= quiet:
            return m.SettleResult(settled=True, waited_ms=(now - start) * 1000)
        if now - start >= timeout:
            return m.SettleResult(settled=False, waited_ms=(now - start) * 1000)


async def maybe_settle(params: m.Params, ctx: CallContext) -> None:
    """Called by action tools: waits for the screen when the caller passed ``settle: true``."""
    if isinstance(params, m.ActionParams) and params.settle:
        default = _default_settle()
        await settle(ctx.services.x, default.timeout, default.quiet_ms / 1000)
