"""Finding a window in a screenshot the way a scripted model looks at it."""

from __future__ import annotations

from PIL import Image

MIN_RUN = 100  # bright pixels a row or column of the window has; the panel clock's text less


def bright_box(image: Image.Image, level: int = 200) -> tuple[int, int, int, int] | None:
    """The box of the large bright area (an xterm's white background), or None: the rows and
    columns with at least ``MIN_RUN`` pixels brighter than ``level``, so small bright marks
    elsewhere on the desktop (the panel's clock, icons) do not stretch it."""
    gray = image.convert("L").point(lambda v: 1 if v > level else 0)
    width, height = gray.size
    data = gray.tobytes()
    rows = [y for y in range(height) if sum(data[y * width : (y + 1) * width]) >= MIN_RUN]
    cols = [x for x in range(width) if sum(data[x::width]) >= MIN_RUN]
    if not rows or not cols:
        return None
    return cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
