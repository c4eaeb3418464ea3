"""Guest tools of the catalogue's display domain: a region of the screen, zoomed."""

from __future__ import annotations

import base64
import io

import anyio.to_thread

from hivecell.errors import InvalidParams
from hivecell.guest import pngenc
from hivecell.guest.context import CallContext
from hivecell.guest.dispatch import Router
from hivecell.guest.x11 import Frame
from hivecell.protocol import catalog as c

router = Router()
MAX_OUTPUT_PIXELS = 4096 * 4096  # a zoomed region larger than this would only waste tokens


@router.method("screenshot_region")
async def screenshot_region(p: c.RegionParams, ctx: CallContext) -> c.RegionShot:
    frame = await ctx.services.x.grab()
    return await anyio.to_thread.run_sync(region_shot, frame, p)


def region_shot(frame: Frame, p: c.RegionParams) -> c.RegionShot:
    from PIL import Image  # imported on first use, as screen.encode does

    if p.x >= frame.width or p.y >= frame.height:
        raise InvalidParams(
            f"region origin ({p.x}, {p.y}) is off the {frame.width}x{frame.height} screen"
        )
    width, height = min(p.width, frame.width - p.x), min(p.height, frame.height - p.y)
    out_w, out_h = max(1, round(width * p.zoom)), max(1, round(height * p.zoom))
    if out_w * out_h > MAX_OUTPUT_PIXELS:
        raise InvalidParams(
            f"{width}x{height} zoomed {p.zoom:g}x is {out_w}x{out_h} pixels; use a smaller "
            "region or zoom"
        )
    image = Image.frombuffer("RGB", (frame.width, frame.height), frame.bgra, "raw", "BGRX", 0, 1)
    image = image.crop((p.x, p.y, p.x + width, p.y + height))
    if p.zoom != 1:
        # LANCZOS keeps text edges readable when scaled up; nearest would show blocks.
        image = image.resize((out_w, out_h), Image.Resampling.LANCZOS)
    if p.format == "png":
        data = pngenc.encode_rgb(image.tobytes(), image.width, image.height)
    else:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        data = out.getvalue()
    return c.RegionShot(
        format=p.format, data=base64.b64encode(data).decode("ascii"),
        width=out_w, height=out_h, x=p.x, y=p.y, region_width=width, region_height=height,
    )  # fmt: skip
