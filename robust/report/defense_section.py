"""The defenses section: clean cost of every defense, and attack success on the undefended
target beside the defended one under non-adaptive and adaptive attacks.

A matrix run with a `defenses` axis is summarised as `robust defenses show` does
(`robust.harness.results.defense_table`); defended rows of any other run (or of a
spec this version cannot parse) are listed as stored. The appendix lists every defended row.
"""

from __future__ import annotations

import math
from typing import Final

from reportlab.platypus import Flowable, Paragraph

from robust.harness.defense_axis import ADAPTIVE_SUFFIX
from robust.harness.results import DefenseRow
from robust.report import figures
from robust.report.data import DefendedScore, DefenseSummary, ReportData
from robust.report.layout import (
    FIGURE_MAX_HEIGHT,
    FRAME_WIDTH,
    MISSING,
    Block,
    Together,
    column_widths,
    data_table,
    percent,
    styles,
    text,
    two_line,
)

SETTINGS: Final[tuple[str, ...]] = ("undefended", "non-adaptive", "adaptive")


def has_defenses(data: ReportData) -> bool:
    return bool(data.defended)


def defenses_section(data: ReportData) -> list[Block]:
    """Per defended matrix: ASR chart, clean-cost table and ASR table; then any other rows."""
    style = styles()
    story: list[Block] = []
    for summary in data.defense_summaries:
        if len(data.defense_summaries) > 1:
            story.append(Paragraph(f"Run {text(summary.run)}", style.subheading))
        story += _summary_blocks(summary)
    summarised = {summary.run for summary in data.defense_summaries}
    others = [score for score in data.defended if score.run not in summarised]
    if others:
        if summarised:
            story.append(Paragraph("Other defended results", style.subheading))
        story += [defended_rows_table(others), Paragraph("Recall and ASR in %.", style.caption)]
    return story


def _summary_blocks(summary: DefenseSummary) -> list[Block]:
    style = styles()
    rows = summary.rows
    adaptive = (
        "on examples crafted through the defense (adaptive: BPDA where the defense is not "
        "differentiable, EOT over its random draws)"
        if summary.adaptive
        else "(this run crafted no adaptive attacks)"
    )
    introduction = Paragraph(
        f"Each target behind each defense on {text(summary.dataset)} {text(summary.split)}. "
        "R@1 attack success rate (SGA convention) on the undefended target, on the defended "
        f"target with the undefended source's examples (non-adaptive), and {adaptive}. ASR "
        "behind a defense counts the queries the defended model still gets right clean.",
        style.body,
    )
    story: list[Block] = [
        Together(
            (
                introduction,
                figures.to_drawing(
                    figures.defense_asr(_panels(rows)), FRAME_WIDTH, FIGURE_MAX_HEIGHT
                ),
                Paragraph(
                    "R@1 ASR (%) per attack and source → target, seeds averaged; dark to "
                    "light: undefended, non-adaptive, adaptive. A defense is only as robust as "
                    "the higher of its two defended bars.",
                    style.caption,
                ),
            )
        ),
        Together((Paragraph("Clean cost", style.subheading), *_clean_cost(rows))),
        Together(
            (
                Paragraph("Attack success with and without the defense", style.subheading),
                *_asr_table(rows),
            )
        ),
    ]
    return story


def _pair(row: DefenseRow) -> str:
    return f"{row.attack}: {row.source} → {row.target}"


def _panels(
    rows: tuple[DefenseRow, ...],
) -> list[tuple[str, list[tuple[str, tuple[float, float, float]]]]]:
    """Per defense and direction, (attack: source → target, ASR per setting)."""
    panels = []
    for defense in dict.fromkeys(row.defense for row in rows):
        for direction in ("TR", "IR"):
            bars = [
                (_pair(row), _settings(row, direction)) for row in rows if row.defense == defense
            ]
            panels.append((f"{defense}: {direction} R@1 ASR", bars))
    return panels


def _settings(row: DefenseRow, direction: str) -> tuple[float, float, float]:
    if direction == "TR":
        return row.undefended_tr_asr, row.tr_asr, row.adaptive_tr_asr
    return row.undefended_ir_asr, row.ir_asr, row.adaptive_ir_asr


def _clean_cost(rows: tuple[DefenseRow, ...]) -> list[Flowable]:
    seen: dict[tuple[object, ...], None] = {}
    for row in rows:
        values = (row.clean_tr_r1, row.clean_ir_r1, row.cost_tr_r1, row.cost_ir_r1)
        seen.setdefault((row.defense, row.target, row.scoring, *values), None)
    table_rows = [
        (defense, target, scoring, *(percent(v) for v in values))
        for defense, target, scoring, *values in seen
    ]
    header = (
        "defense",
        "target",
        "scoring",
        *two_line("defended TR R@1", "defended IR R@1", "TR R@1 cost", "IR R@1 cost"),
    )
    return [
        data_table(header, table_rows, column_widths((110, 110, 50), numbers=4), numeric_from=3),
        Paragraph(
            "Clean R@1 of the defended target in %, and its cost: undefended minus defended "
            "clean R@1 in points (negative: the defense happens to help on clean data).",
            styles().caption,
        ),
    ]


def _asr_table(rows: tuple[DefenseRow, ...]) -> list[Flowable]:
    scorings = sorted({row.scoring for row in rows})
    table_rows = []
    for row in rows:
        tr = _settings(row, "TR")
        ir = _settings(row, "IR")
        by_direction = (*tr, _worst(tr[1], tr[2]), *ir, _worst(ir[1], ir[2]))
        pair = _pair(row) + (f" ({row.scoring})" if len(scorings) > 1 else "")
        table_rows.append((row.defense, pair, *(percent(v) for v in by_direction)))
    settings = ("undef.", "non-ad.", "adapt.", "worst")
    header = (
        "defense",
        "attack: source → target",
        *(f"{direction}<br/>{name}" for direction in ("TR", "IR") for name in settings),
    )
    scoring = f" Scoring: {text(scorings[0])}." if len(scorings) == 1 else ""
    return [
        data_table(header, table_rows, column_widths((70, 124), numbers=8), numeric_from=2),
        Paragraph(
            f"R@1 ASR in % (SGA convention).{scoring} Image→text (TR) and text→image (IR): "
            "undef. on the undefended target, non-ad. (non-adaptive) on the defended target "
            "with the undefended source's examples, adapt. (adaptive) with examples crafted "
            "through the defense; worst is the higher of the last two, the defense's robustness "
            f"against the attacks tried. {MISSING}: not computed.",
            styles().caption,
        ),
    ]


def _worst(first: float, second: float) -> float:
    kept = [value for value in (first, second) if not math.isnan(value)]
    return max(kept) if kept else math.nan


def defended_rows_table(scores: list[DefendedScore]) -> Flowable:
    """Every defended row as stored: defense (adaptive marked), victim, attack, source."""
    rows = [
        (
            score.defense,
            score.victim,
            score.attack or "clean",
            score.source or MISSING,
            score.scoring,
            *(
                percent(score.metrics.get(m, math.nan))
                for m in ("tr_r1", "ir_r1", "tr_asr_r1", "ir_asr_r1")
            ),
        )
        for score in scores
    ]
    header = (
        "defense",
        "victim",
        "attack",
        "source",
        "scoring",
        *two_line("TR R@1", "IR R@1", "TR ASR@1", "IR ASR@1"),
    )
    return data_table(header, rows, column_widths((112, 64, 48, 64, 40), numbers=4), numeric_from=5)


def adaptive_note() -> str:
    return (
        f"A defense ending in '{ADAPTIVE_SUFFIX}' marks examples crafted through the defended "
        "source (adaptive attack); the source column names the plain source model."
    )
