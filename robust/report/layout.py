"""Fonts, paragraph styles and table helpers shared by every report section.

Fonts are the DejaVu TrueType files that ship with matplotlib, registered with reportlab so
the PDF embeds (subsets of) them: the document renders the same on any reader, and its text
(including the arrows, dashes and Greek letters the tables use) extracts cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final
from xml.sax.saxutils import escape

import matplotlib
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Flowable, KeepTogether, Paragraph, Table, TableStyle

PAGE_SIZE: Final[tuple[float, float]] = A4
MARGIN: Final[float] = 18 * mm
FRAME_WIDTH: Final[float] = PAGE_SIZE[0] - 2 * MARGIN
FRAME_HEIGHT: Final[float] = PAGE_SIZE[1] - 2 * MARGIN
# room for a section heading, an introduction, a subheading and a caption on the same page
FIGURE_MAX_HEIGHT: Final[float] = FRAME_HEIGHT - 180
MISSING: Final[str] = "–"

_FONT_FILES: Final[dict[str, str]] = {
    "DejaVuSans": "DejaVuSans.ttf",
    "DejaVuSans-Bold": "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique": "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique": "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono": "DejaVuSansMono.ttf",
}


@cache
def register_fonts() -> None:
    """Register matplotlib's DejaVu fonts with reportlab (once per process)."""
    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for name, filename in _FONT_FILES.items():
        pdfmetrics.registerFont(TTFont(name, str(font_dir / filename)))
    pdfmetrics.registerFontFamily(
        "DejaVuSans",
        normal="DejaVuSans",
        bold="DejaVuSans-Bold",
        italic="DejaVuSans-Oblique",
        boldItalic="DejaVuSans-BoldOblique",
    )


@dataclass(frozen=True)
class Styles:
    """The paragraph styles of the document."""

    title: ParagraphStyle
    subtitle: ParagraphStyle
    heading: ParagraphStyle
    subheading: ParagraphStyle
    body: ParagraphStyle
    note: ParagraphStyle
    caption: ParagraphStyle
    cell: ParagraphStyle
    number: ParagraphStyle
    header: ParagraphStyle
    code: ParagraphStyle


@cache
def styles() -> Styles:
    """Styles in the embedded DejaVu fonts."""
    register_fonts()
    base = getSampleStyleSheet()

    def derive(name: str, parent: str, **overrides: object) -> ParagraphStyle:
        settings: dict[str, object] = {"fontName": "DejaVuSans", **overrides}
        return ParagraphStyle(name, parent=base[parent], **settings)

    return Styles(
        title=derive("ReportTitle", "Title", fontName="DejaVuSans-Bold", fontSize=24, leading=30),
        subtitle=derive("ReportSubtitle", "Normal", fontSize=12, leading=16, spaceAfter=10),
        heading=derive(
            "ReportHeading",
            "Heading1",
            fontName="DejaVuSans-Bold",
            fontSize=15,
            leading=19,
            spaceBefore=14,
        ),
        subheading=derive(
            "ReportSubheading",
            "Heading2",
            fontName="DejaVuSans-Bold",
            fontSize=11,
            leading=14,
        ),
        body=derive("ReportBody", "BodyText", fontSize=9.5, leading=13, spaceAfter=4),
        note=derive(
            "ReportNote",
            "BodyText",
            fontName="DejaVuSans-Oblique",
            fontSize=9,
            leading=12,
            textColor=colors.HexColor("#444444"),
            spaceBefore=4,
            spaceAfter=4,
        ),
        caption=derive(
            "ReportCaption",
            "BodyText",
            fontSize=8,
            leading=10.5,
            spaceBefore=2,
            spaceAfter=10,
            textColor=colors.HexColor("#333333"),
        ),
        cell=derive("ReportCell", "BodyText", fontSize=7.5, leading=9),
        number=derive("ReportNumber", "BodyText", fontSize=7.5, leading=9, alignment=TA_RIGHT),
        header=derive(
            "ReportHeader", "BodyText", fontName="DejaVuSans-Bold", fontSize=7, leading=8.5
        ),
        code=ParagraphStyle(
            "ReportCode",
            parent=base["Code"],
            fontName="DejaVuSansMono",
            fontSize=6.8,
            leading=8.4,
            leftIndent=6,
        ),
    )


def text(value: object) -> str:
    """A value made safe for reportlab's paragraph markup."""
    return escape(str(value))


def percent(value: float) -> str:
    """A fraction as a percentage with one decimal, as every table prints it."""
    return MISSING if math.isnan(value) else f"{100 * value:.1f}"


def column_widths(text_columns: tuple[float, ...], numbers: int) -> tuple[float, ...]:
    """Fixed widths for the text columns; number columns share the rest of the frame."""
    share = (FRAME_WIDTH - sum(text_columns)) / numbers
    return (*text_columns, *([share] * numbers))


def two_line(*names: str) -> tuple[str, ...]:
    """Column headers like 'TR R@1' broken at their spaces, so they never split a word."""
    return tuple(name.replace(" ", "<br/>") for name in names)


def data_table(
    header: Sequence[str] | None,
    rows: Sequence[Sequence[str]],
    widths: Sequence[float],
    numeric_from: int,
) -> Table:
    """A table whose cells wrap; columns from `numeric_from` on are right-aligned numbers.

    Header entries are markup (so a header can break with <br/>); cells are escaped text.
    """
    style = styles()
    body = [
        [
            Paragraph(text(value), style.number if index >= numeric_from else style.cell)
            for index, value in enumerate(row)
        ]
        for row in rows
    ]
    commands: list[tuple] = [
        ("FONTNAME", (0, 0), (-1, -1), "DejaVuSans"),  # the table's default, else Helvetica
        ("LINEBELOW", (0, -1), (-1, -1), 0.8, colors.black),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("TOPPADDING", (0, 0), (-1, -1), 2),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        ("LEFTPADDING", (0, 0), (-1, -1), 3),
        ("RIGHTPADDING", (0, 0), (-1, -1), 3),
    ]
    first = 0
    if header is not None:
        body.insert(0, [Paragraph(name, style.header) for name in header])
        commands.append(("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.black))
        first = 1
    shading = [colors.white, colors.HexColor("#F0F0F0")]
    commands.append(("LINEABOVE", (0, 0), (-1, 0), 0.8, colors.black))
    commands.append(("ROWBACKGROUNDS", (0, first), (-1, -1), shading))
    table = Table(body, colWidths=list(widths), repeatRows=first, hAlign="LEFT")
    table.setStyle(TableStyle(commands))
    return table


def key_value_table(pairs: Sequence[tuple[str, str]], key_width: float) -> Table:
    """Two columns, name and value, for metadata."""
    return data_table(None, pairs, (key_width, FRAME_WIDTH - key_width), numeric_from=2)


def paragraphs(lines: Sequence[str], style: ParagraphStyle) -> list[Flowable]:
    """One paragraph per line of (already escaped) markup."""
    return [Paragraph(line, style) for line in lines]


@dataclass(frozen=True)
class Together:
    """Flowables that must share a page: a heading with its figure and caption.

    Kept as a plain group until the story is assembled, because reportlab cannot nest
    KeepTogether (the inner one reports an infinite height and forces a page break).
    """

    flowables: tuple[Flowable, ...]


Block = Flowable | Together


def with_heading(heading: Flowable, blocks: list[Block]) -> list[Block]:
    """Put `heading` on the page of the first block, so it never ends a page alone; a table
    splits across pages, so it simply follows its heading."""
    first, *rest = blocks
    if isinstance(first, Together):
        return [Together((heading, *first.flowables)), *rest]
    if isinstance(first, Table):
        return [heading, first, *rest]
    return [Together((heading, first)), *rest]


def flow(blocks: list[Block]) -> list[Flowable]:
    """The blocks as reportlab flowables, each group one KeepTogether."""
    return [KeepTogether(list(b.flowables)) if isinstance(b, Together) else b for b in blocks]
