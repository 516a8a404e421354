"""The report document: title page, numbered sections from the registry, page footers.

`build_report(run_dir, output_pdf)` is the whole job: read the run directory, lay out every
section whose data is present (a one-line note for every other), write the PDF atomically so
a failed build never leaves a half-written file in place of a good one.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from reportlab.lib.units import mm
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    PageBreak,
    PageTemplate,
    Paragraph,
)

from robust import __version__
from robust.errors import RobustError
from robust.report.data import ReportData, load_report_data
from robust.report.layout import (
    FRAME_HEIGHT,
    FRAME_WIDTH,
    MARGIN,
    PAGE_SIZE,
    flow,
    register_fonts,
    styles,
    text,
    with_heading,
)
from robust.report.sections import SECTIONS, title_page


class ReportError(RobustError):
    """The report cannot be written where asked."""


@dataclass(frozen=True)
class ReportSummary:
    """What was written: the file, its page count, and which sections it has or notes."""

    path: Path
    pages: int
    sections: tuple[str, ...]
    omitted: tuple[tuple[str, str], ...]


def build_report(run_dir: Path | str, output_pdf: Path | str) -> ReportSummary:
    """Write the robustness report of `run_dir` (its stores and caches) to `output_pdf`."""
    data = load_report_data(run_dir)
    return write_report(data, Path(output_pdf))


def write_report(data: ReportData, output_pdf: Path) -> ReportSummary:
    """Lay out `data` as a PDF at `output_pdf`."""
    if output_pdf.is_dir():
        raise ReportError(f"{output_pdf} is a directory; pass a file name such as report.pdf")
    story, included, omitted = _story(data)
    try:
        output_pdf.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{output_pdf.name}.", suffix=".tmp", dir=output_pdf.parent
        )
        os.close(handle)
    except OSError as exc:
        raise ReportError(
            f"cannot write {output_pdf} ({exc.strerror or exc}); choose a writable -o path"
        ) from exc
    try:
        document = _document(Path(temporary), data)
        document.build(story)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it private; a report is not
        os.replace(temporary, output_pdf)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return ReportSummary(output_pdf, document.page, tuple(included), tuple(omitted))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _story(data: ReportData) -> tuple[list[Flowable], list[str], list[tuple[str, str]]]:
    style = styles()
    story = [*title_page(data), PageBreak()]
    included: list[str] = []
    omitted: list[tuple[str, str]] = []
    number = 0
    for section in SECTIONS:
        if not section.available(data):
            if section.missing:  # a section without a note is simply left out
                omitted.append((section.title, section.missing))
                story.append(Paragraph(text(section.missing), style.note))
            continue
        number += 1
        included.append(section.title)
        if section.title == "Appendix":
            story.append(PageBreak())
        heading = Paragraph(f"{number}. {text(section.title)}", style.heading)
        story.extend(flow(with_heading(heading, section.build(data))))
    return story, included, omitted


def _document(path: Path, data: ReportData) -> BaseDocTemplate:
    register_fonts()
    document = BaseDocTemplate(
        str(path),
        pagesize=PAGE_SIZE,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN,
        title=f"Robustness report: {data.run_dir.name}",
        author=f"vlp-robust {__version__}",
        subject="Adversarial robustness of vision-language models",
        creator=f"vlp-robust {__version__}",
        initialFontName="DejaVuSans",  # else every page lists an unembedded Helvetica
        initialFontSize=9,
        invariant=True,  # no timestamps or random ids: the same data gives the same bytes
    )
    frame = Frame(
        MARGIN,
        MARGIN,
        FRAME_WIDTH,
        FRAME_HEIGHT,
        leftPadding=0,
        rightPadding=0,
        topPadding=0,
        bottomPadding=0,
        id="body",
    )
    footer = f"vlp-robust {__version__} · robustness report · {data.run_dir.name}"

    def draw_footer(canvas: Canvas, doc: BaseDocTemplate) -> None:
        canvas.saveState()
        canvas.setFont("DejaVuSans", 7.5)
        canvas.drawString(MARGIN, 9 * mm, footer)
        canvas.drawRightString(PAGE_SIZE[0] - MARGIN, 9 * mm, f"page {doc.page}")
        canvas.restoreState()

    document.addPageTemplates([PageTemplate(id="page", frames=[frame], onPage=draw_footer)])
    return document
