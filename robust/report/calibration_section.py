"""The world-calibration section: how the world's attack pattern compares with the
published Flickr30k one, so a reader knows what the world's numbers can and cannot say.

It shows the record `robust zoo calibrate` writes (`calibration.json`; the demo writes one
for its own matrix) wherever one lies in the run directory: each attack's white-box and
transfer range beside the SGA paper's, then every band with its worst cell.
"""

from __future__ import annotations

import re

from reportlab.platypus import Paragraph

from robust.errors import RobustError
from robust.harness.calibration import PROTOCOL_IMAGES, PROTOCOL_SEEDS, pattern_rows
from robust.report.data import ReportData, WorldCalibration
from robust.report.layout import Block, column_widths, data_table, styles, text, two_line


def has_calibration(data: ReportData) -> bool:
    return bool(data.calibrations)


def calibration_section(data: ReportData) -> list[Block]:
    """One pattern table and one band table per calibration record."""
    style = styles()
    story: list[Block] = []
    for calibration in data.calibrations:
        if len(data.calibrations) > 1:
            story.append(Paragraph(text(calibration.path), style.subheading))
        story += _record_blocks(calibration)
    return story


def _record_blocks(calibration: WorldCalibration) -> list[Block]:
    style = styles()
    if calibration.problem is not None:
        return [Paragraph(text(calibration.problem), style.note)]
    record = calibration.record
    try:
        rows = pattern_rows(record)
    except RobustError as error:
        return [Paragraph(text(f"{calibration.path}: {error}"), style.note)]
    pattern = data_table(
        (
            "attack",
            *two_line("paper white-box", "world white-box", "paper transfer", "world transfer"),
        ),
        [
            (
                row.attack,
                _span(row.paper_white_box),
                _span(row.world_white_box),
                _span(row.paper_transfer),
                _span(row.world_transfer),
            )
            for row in rows
        ],
        column_widths((90,), numbers=4),
        numeric_from=1,
    )
    bands = data_table(
        ("band", "measured", "worst cell", "met"),
        [
            (
                str(band.get("rule", "?")),
                _measured(band),
                str(band.get("where", "?")),
                "yes" if band.get("passed") else "no",
            )
            for band in record.get("bands", [])
        ],
        column_widths((200, 60, 140), numbers=1),
        numeric_from=1,
    )
    sources = ", ".join(str(s) for s in record.get("sources", []))
    seeds = ", ".join(str(s) for s in record.get("seeds", []))
    intro = (
        f"TR R@1 ASR (%, SGA's convention) at SGA's budgets (eps 2/255, 10 steps of 0.5/255, "
        f"one word) on {record.get('dataset', '?')}:{record.get('split', '?')}, sources "
        f"{sources}, mean of seeds {seeds}; the paper's ranges are over ALBEF, TCL, CLIP "
        "ViT-B/16 and CLIP RN101 on Flickr30k 1K (SGA, Table 2). Where the world misses a band, "
        "comparisons of that attack family on the world say little about real models."
        + _smaller_than_protocol(record)
    )
    return [
        Paragraph(text(intro), style.body),
        pattern,
        Paragraph(
            "Lowest to highest cell; white-box cells are a source attacking itself.", style.caption
        ),
        bands,
    ]


def _smaller_than_protocol(record: dict) -> str:
    """A sentence when the record rests on fewer images or seeds than the calibration
    protocol (the demo's matrix does), so its verdicts are read as a direction only."""
    limit = re.search(r"\[:(\d+)\]", str(record.get("split", "")))
    images = int(limit.group(1)) if limit else None
    seeds = len(record.get("seeds", []))
    if (images is None or images >= PROTOCOL_IMAGES) and seeds >= PROTOCOL_SEEDS:
        return ""
    measured = f"{images} images" if images is not None else "every image"
    return (
        f" This record rests on {measured} and {seeds} seed{'s' if seeds != 1 else ''}, fewer "
        f"than the calibration protocol's {PROTOCOL_IMAGES} images and {PROTOCOL_SEEDS} seeds "
        "(`robust zoo calibrate`), so read its verdicts as the world's direction, not to the "
        "point."
    )


def _measured(band: dict) -> str:
    """Percent to one decimal; the SGA-ahead band counts sources."""
    value = float(band.get("measured", float("nan")))
    return f"{value:.0f}" if band.get("key") == "sga_transfers_best" else f"{value:.1f}"


def _span(span: tuple[float, float]) -> str:
    low, high = span
    if low != low:  # NaN: no such cell
        return "-"
    return f"{low:.1f}" if low == high else f"{low:.1f}-{high:.1f}"
