"""The bias section: relevance bias between two image sources and what an attack does to
captions, from the runs `robust bias cache|pairs|caption` store (metric names in
`robust.harness.bias`: `bias_*` for relevance, `bias_shift_<attribute>_<value>` for the
attribute shift, `caption_*` for caption bias).
"""

from __future__ import annotations

import math
from typing import Final

from reportlab.platypus import Flowable, Paragraph, Table, TableStyle

from robust.eval.bias import BIAS_KS, CAPTION_ATTRIBUTES, WORLD_ATTRIBUTES
from robust.report import figures
from robust.report.data import BiasScore, ReportData
from robust.report.layout import (
    FIGURE_MAX_HEIGHT,
    FRAME_WIDTH,
    MISSING,
    Block,
    Together,
    data_table,
    percent,
    styles,
    text,
    two_line,
)

RELEVANCE_METRICS: Final[tuple[tuple[str, str], ...]] = tuple(
    (f"{kind}{k}", f"{label}@{k}")
    for kind, label in (("r", "R"), ("ndcg", "NDCG"))
    for k in BIAS_KS
)
QUALITY: Final[tuple[tuple[str, str], ...]] = (
    ("bleu4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
    ("cider", "CIDEr"),
)
_QUALITY_COLUMNS: Final[tuple[str, ...]] = ("clean", "attacked", "drop")
SHIFT_PREFIX: Final[str] = "bias_shift_"
SHIFTS_SHOWN: Final[int] = 8


def has_bias(data: ReportData) -> bool:
    return bool(data.bias)


def bias_section(data: ReportData) -> list[Block]:
    """Relevance-bias tables (and attribute shift charts), then caption-bias tables."""
    style = styles()
    story: list[Block] = []
    relevance = [score for score in data.bias if score.kind == "relevance"]
    captions = [score for score in data.bias if score.kind == "caption"]
    if relevance:
        story.append(
            Paragraph(
                "Relevance bias (Xu et al., SIGIR 2024): every image is in the gallery twice, "
                "once from source A and once from source B, and each caption query has both "
                "copies as relevant items. Relative Delta = 2(A − B)/(A + B) × 100 (negative: "
                "the retriever prefers B); RankDiff is the mean rank of A's copy minus B's "
                "within the top 100 (positive: B ranks higher); preference is the share of "
                "queries scoring B's copy above A's. Each is averaged over caption slots.",
                style.body,
            )
        )
    for score in relevance:
        story += _relevance_blocks(score)
    for score in captions:
        story += _caption_blocks(score)
    return story


def _measured(score: BiasScore) -> str:
    crafted = f" ({text(score.attack)} crafted on {text(score.source)})" if score.attack else ""
    return f"{text(score.dataset)} {text(score.split)}{crafted}"


def _relevance_blocks(score: BiasScore) -> list[Block]:
    style = styles()
    a, b = score.sources["a"], score.sources["b"]
    metrics = score.metrics
    rows = [
        (
            label,
            percent(metrics.get(f"bias_{name}_a", math.nan)),
            percent(metrics.get(f"bias_{name}_b", math.nan)),
            _signed(metrics.get(f"bias_delta_{name}", math.nan)),
        )
        for name, label in RELEVANCE_METRICS
    ]
    header = ("metric", f"A: {text(a)}", f"B: {text(b)}", "Relative Delta")
    rank_diff = metrics.get("bias_rank_diff", math.nan)
    summary = (
        f"RankDiff {MISSING if math.isnan(rank_diff) else f'{rank_diff:+.2f}'}; preference "
        f"for B ({text(b)}) {percent(metrics.get('bias_preference_rate', math.nan))} %."
    )
    story: list[Block] = [
        Together(
            (
                Paragraph(f"{text(score.victim)}: {text(a)} vs {text(b)} images", style.subheading),
                Paragraph(f"Gallery: {_measured(score)}. {summary}", style.body),
                data_table(header, rows, (110, 90, 90, 90), numeric_from=1),
                Paragraph(
                    "R@K and NDCG@K of each copy in %; Relative Delta in % (of the mean).",
                    style.caption,
                ),
            )
        )
    ]
    shifts = _shifts(metrics)
    if shifts:
        story.append(Together(_shift_figure(score, shifts)))
    return story


def _signed(value: float) -> str:
    return MISSING if math.isnan(value) else f"{value:+.1f}"


def _shifts(metrics: dict[str, float]) -> dict[str, list[tuple[str, float]]]:
    """attribute -> (value, shift) for the world attributes, largest |shift| first."""
    found: dict[str, list[tuple[str, float]]] = {}
    for metric, shift in metrics.items():
        if not metric.startswith(SHIFT_PREFIX) or math.isnan(shift):
            continue
        rest = metric.removeprefix(SHIFT_PREFIX)
        attribute = next((a for a in WORLD_ATTRIBUTES if rest.startswith(f"{a}_")), None)
        if attribute is not None:
            value = rest.removeprefix(f"{attribute}_").replace("_", " ")
            found.setdefault(attribute, []).append((value, shift))
    return {
        attribute: sorted(values, key=lambda pair: -abs(pair[1]))[:SHIFTS_SHOWN]
        for attribute, values in found.items()
    }


def _shift_figure(
    score: BiasScore, shifts: dict[str, list[tuple[str, float]]]
) -> tuple[Flowable, ...]:
    style = styles()
    panels = [
        (attribute, [(value, (shift,)) for value, shift in values])
        for attribute, values in shifts.items()
    ]
    return (
        Paragraph("Attribute shift of top-1 retrieval", style.subheading),
        figures.to_drawing(
            figures.grouped_bars(
                panels, ("B − A",), "shift (points)", columns=3, shared_rows=False
            ),
            FRAME_WIDTH,
            FIGURE_MAX_HEIGHT,
        ),
        Paragraph(
            f"How much more often (points of the caption queries) {text(score.victim)}'s "
            f"top-1 image shows each colour, shape or position with {text(score.sources['b'])} "
            f"images than with {text(score.sources['a'])} ones; at most {SHIFTS_SHOWN} values "
            "per attribute, largest first.",
            style.caption,
        ),
    )


def _caption_blocks(score: BiasScore) -> list[Block]:
    style = styles()
    metrics = score.metrics
    changes = [("captions changed", metrics.get("caption_change_rate", math.nan))]
    for attribute in CAPTION_ATTRIBUTES:
        for event in ("insertion", "deletion"):
            name = f"caption_{attribute}_{event}_rate"
            changes.append((f"{attribute} {event}", metrics.get(name, math.nan)))
    concept = score.target_concept
    if concept:
        changes += [
            (f"'{concept}' in clean captions", metrics.get("caption_target_rate_clean", math.nan)),
            (
                f"'{concept}' in attacked captions",
                metrics.get("caption_target_rate_attacked", math.nan),
            ),
        ]
    change_rows = [(name, percent(value)) for name, value in changes]
    quality_rows = [
        (
            label,
            *(
                percent(metrics.get(f"caption_{name}_{which}", math.nan))
                for which in _QUALITY_COLUMNS
            ),
        )
        for name, label in QUALITY
    ]
    quality = data_table(
        ("metric", *two_line("clean", "attacked", "drop")),
        quality_rows,
        (60, 50, 50, 50),
        numeric_from=1,
    )
    changed = data_table(("change", "% of images"), change_rows, (150, 60), numeric_from=1)
    side_by_side = Table([[changed, quality]], colWidths=(230, FRAME_WIDTH - 230), hAlign="LEFT")
    side_by_side.setStyle(
        TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)])
    )
    return [
        Together(
            (
                Paragraph(f"Captions of {text(score.victim)}", style.subheading),
                Paragraph(
                    f"Clean vs adversarial images of {_measured(score)}, one caption per image. "
                    "Insertion: the attacked caption names a colour, shape or count the clean "
                    "one does not; deletion: the reverse.",
                    style.body,
                ),
                side_by_side,
                Paragraph(
                    "Left: shares of images in %"
                    + (", the concept rows counting captions that name it" if concept else "")
                    + ". Right: caption quality against the references, ×100; drop is clean "
                    "minus attacked.",
                    style.caption,
                ),
            )
        ),
    ]
