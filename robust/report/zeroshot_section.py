"""The zero-shot robustness section: per `robust zeroshot` run, clean and APGD-robust
zero-shot accuracy of every victim on every task, one column per attack and eps."""

from __future__ import annotations

import math

from reportlab.platypus import Paragraph

from robust.report.data import ReportData, ZeroShotRun
from robust.report.layout import Block, column_widths, data_table, percent, styles, text

NOT_APPLICABLE = "n/a"


def has_zeroshot(data: ReportData) -> bool:
    return bool(data.zeroshot)


def zeroshot_section(data: ReportData) -> list[Block]:
    """An introduction, then per run its accuracy table."""
    style = styles()
    story: list[Block] = [
        Paragraph(
            "Zero-shot classification as RobustVLM reports it: each class is its name written "
            "into the task's prompt templates (embeddings averaged), each image goes to the "
            "most similar class. Robust accuracy is measured on images attacked by "
            "torchattacks' APGD-CE and APGD-T (L-inf); the combined column counts an image "
            "as robust only when every attack failed on it. The attacks' full configurations "
            "are in the run spec (appendix).",
            style.body,
        )
    ]
    for run in data.zeroshot_runs:
        story += _run_blocks(data, run)
    return story


def _run_blocks(data: ReportData, run: ZeroShotRun) -> list[Block]:
    style = styles()
    scores = [score for score in data.zeroshot if score.run == run.run]
    accuracy = {(s.victim, s.task, s.attack): s.accuracy for s in scores}
    images = {(s.victim, s.task): s.images for s in scores if s.attack is None}
    header = ["victim", "task", "images", "clean", *(_header(label) for label in run.labels)]
    rows = []
    for (victim, task), count in images.items():
        values = [accuracy.get((victim, task, label)) for label in (None, *run.labels)]
        rows.append(
            [
                text(victim),
                text(task),
                "?" if math.isnan(count) else f"{count:.0f}",
                *(NOT_APPLICABLE if value is None else percent(value) for value in values),
            ]
        )
    steps = f", APGD {run.steps} steps" if run.steps else ""
    return [
        Paragraph(f"Run {text(run.run)}: {text(run.dataset)}{steps}", style.subheading),
        data_table(header, rows, column_widths((70.0, 55.0), len(header) - 2), 2),
        Paragraph(
            f"Accuracy in %; {NOT_APPLICABLE}: not measured (APGD-T needs at least 4 classes).",
            style.caption,
        ),
    ]


def _header(label: str) -> str:
    """`apgd-ce@eps=2/255` as two header lines: the attack, then the budget."""
    attack, _, eps = label.partition("@eps=")
    return f"{text(attack)}<br/>{text(eps)}"
