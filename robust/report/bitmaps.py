"""Bitmaps a run directory keeps (patches, example images) placed in the report losslessly.

Images are bitmaps by nature, so they are embedded as pixels, never re-encoded lossily:
reportlab stores decoded RGB with Flate compression. Small images are first enlarged by a
whole factor with nearest-neighbour sampling, so each source pixel becomes a sharp block
instead of a blur a viewer's smoothing would make of a 64 px image.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from reportlab.lib import colors
from reportlab.platypus import Flowable, Image, Paragraph, Table, TableStyle

from robust.report.layout import styles, text

PIXELS_PER_POINT: Final[int] = 4  # enlarge until a pixel block is finer than print resolution


def bitmap(path: Path, width: float) -> Flowable:
    """The image at `path`, `width` points wide (aspect kept); a note if it cannot be read."""
    try:
        with PILImage.open(path) as image:
            pixels = image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return Paragraph(f"(image missing: {text(path.name)})", styles().cell)
    factor = max(1, math.ceil(PIXELS_PER_POINT * width / pixels.width))
    enlarged = pixels.resize(
        (pixels.width * factor, pixels.height * factor), PILImage.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    enlarged.save(buffer, format="PNG")
    buffer.seek(0)
    return Image(buffer, width=width, height=width * pixels.height / pixels.width)


def image_grid(
    header: Sequence[str] | None,
    rows: Sequence[Sequence[Flowable | str]],
    widths: Sequence[float],
) -> Table:
    """Images (and text cells) in a grid with a header line and thin rules, no shading."""
    style = styles()
    body = [
        [Paragraph(text(cell), style.cell) if isinstance(cell, str) else cell for cell in row]
        for row in rows
    ]
    commands: list[tuple] = [
        ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
        ("ALIGN", (0, 0), (-1, -1), "CENTER"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        ("LEFTPADDING", (0, 0), (-1, -1), 2),
        ("RIGHTPADDING", (0, 0), (-1, -1), 2),
        ("LINEBELOW", (0, -1), (-1, -1), 0.8, colors.black),
    ]
    if header is not None:
        body.insert(0, [Paragraph(name, style.header) for name in header])
        commands.append(("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black))
    commands.append(("LINEABOVE", (0, 0), (-1, 0), 0.8, colors.black))
    table = Table(body, colWidths=list(widths), hAlign="LEFT")
    table.setStyle(TableStyle(commands))
    return table
