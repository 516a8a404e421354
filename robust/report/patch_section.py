"""The universal-patch section: the patch and its control, patched examples, and every task's
numbers with the random-patch control beside the patch.

It reads a `robust patch eval` run: its store rows (see `robust.harness.patch`) and the files
that run keeps beside its store: `patch/advclip-patch.png`, `patch/random-patch.png` and
`examples/<slug(target)>/<NNN>-<clean|advclip-patch|random-patch>.png`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from reportlab.platypus import Flowable, Paragraph

from robust.harness.cache import slug
from robust.harness.results import (
    CAPTION,
    CONTROL_ATTACK,
    KNN,
    PATCH_ATTACK,
    UNOCCLUDED,
    ZERO_SHOT,
    headline_scoring,
)
from robust.report import figures
from robust.report.bitmaps import bitmap, image_grid
from robust.report.data import PatchRun, PatchScore, ReportData
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

IMAGES: Final[dict[str | None, str]] = {
    None: "clean",
    PATCH_ATTACK: "patch",
    CONTROL_ATTACK: "random patch",
}
CLASSIFIERS: Final[dict[str, str]] = {ZERO_SHOT: "zero-shot", KNN: "k-NN"}
TASKS: Final[tuple[str, ...]] = ("shape", "color", "background")
EXAMPLES_SHOWN: Final[int] = 2
ASR_METRICS: Final[tuple[str, str]] = ("tr_asr_r1", "ir_asr_r1")
_CAPTION_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("bleu4", "BLEU-4"),
    ("rouge_l", "ROUGE-L"),
    ("cider", "CIDEr"),
)


def has_patch(data: ReportData) -> bool:
    return bool(data.patch)


def patch_section(data: ReportData) -> list[Block]:
    """One block of images, a drop chart and three tables per patch evaluation run."""
    story: list[Block] = []
    for run in data.patch_runs:
        scores = [score for score in data.patch if score.run == run.run]
        if scores:
            story += _run_blocks(run, scores, named=len(data.patch_runs) > 1)
    return story


def patch_headlines(data: ReportData) -> list[str]:
    """Per patch run, the white-box R@1 ASR of the patch against its control (markup)."""
    lines = []
    for run in data.patch_runs:
        scores = [score for score in data.patch if score.run == run.run]
        retrieval = _retrieval_scorings(scores)
        cells = [(s.target, s.scoring) for s in scores if s.scoring in retrieval]
        scoring = headline_scoring(cells, run.source)
        if _find(scores, run.source, PATCH_ATTACK, scoring) is None:
            continue
        patch, control = (
            " / ".join(_metric(scores, run.source, attack, scoring, m) for m in ASR_METRICS)
            for attack in (PATCH_ATTACK, CONTROL_ATTACK)
        )
        lines.append(
            f"<b>Universal patch</b> fitted on {text(run.source)}: white-box TR / IR R@1 ASR "
            f"<b>{patch} %</b> against {control} % for the random-patch control "
            f"({text(scoring)})."
        )
    return lines


def _metric(
    scores: Sequence[PatchScore], target: str, attack: str | None, scoring: str, metric: str
) -> str:
    found = _find(scores, target, attack, scoring)
    return percent(math.nan if found is None else found.metrics.get(metric, math.nan))


def _run_blocks(run: PatchRun, scores: list[PatchScore], named: bool) -> list[Block]:
    style = styles()
    lead: list[Flowable] = []
    if named:
        lead.append(Paragraph(f"Run {text(run.run)}", style.subheading))
    lead.append(Paragraph(_describe(run), style.body))
    story: list[Block] = [
        Together((*lead, *_patch_images(run))),
        Together(_examples(run)),
        Together(_drops(run, scores)),
    ]
    for title, table in (
        ("Retrieval", _retrieval_table(run, scores)),
        ("Retrieval of images the patch leaves whole", _unoccluded_table(run, scores)),
        ("Classification", _classification_table(run, scores)),
        ("Captioning", _caption_table(run, scores)),
    ):
        if table:
            story.append(Together((Paragraph(title, style.subheading), *table)))
    return story


def _describe(run: PatchRun) -> str:
    patch = run.patch
    config = patch.get("config", {})
    side = patch.get("side", "?")
    area = patch.get("area_fraction")
    steps = config.get("steps")
    fit = config.get("fit_images") or config.get("fit_dataset")
    parts = [
        f"A universal patch of {side}×{side} px"
        + (f" ({100 * float(area):g}% of the image area)" if area is not None else ""),
        f"fitted on <b>{text(run.source)}</b>",
    ]
    if steps is not None:
        parts.append(f"in {steps} steps" + (f" on {text(fit)}" if fit else ""))
    placement = text(patch.get("placement", "?"))
    return (
        " ".join(parts) + f", placement {placement}, seed {patch.get('seed', '?')}; evaluated "
        f"on {text(run.dataset)} with {text(', '.join(run.targets))}. Every patched number "
        "stands beside the random-patch control: uniform noise of the same size and "
        "placement, so what the patch adds beyond covering pixels is the difference."
    )


def _patch_images(run: PatchRun) -> list[Flowable]:
    style = styles()
    side = 110.0
    grid = image_grid(
        ("patch", "random-patch control"),
        [[bitmap(run.folder / "patch" / f"{name}.png", side) for name in IMAGES if name]],
        (side + 8, side + 8),
    )
    return [
        grid,
        Paragraph(
            f"The patch at its source resolution, enlarged (each square is one pixel), and the "
            f"control. Files: patch/{PATCH_ATTACK}.png and patch/{CONTROL_ATTACK}.png with "
            "their JSON sidecars.",
            style.caption,
        ),
    ]


def _examples(run: PatchRun) -> tuple[Flowable, ...]:
    style = styles()
    label_width = 78.0
    image_width = (FRAME_WIDTH - label_width) / (3 * EXAMPLES_SHOWN) - 4
    rows = []
    for target in run.targets:
        folder = run.folder / "examples" / slug(target)
        row: list[Flowable | str] = [target]
        for index in range(EXAMPLES_SHOWN):
            row += [
                bitmap(folder / f"{index:03d}-{name or 'clean'}.png", image_width)
                for name in IMAGES
            ]
        rows.append(row)
    header = ("target", *tuple(IMAGES.values()) * EXAMPLES_SHOWN)
    return (
        Paragraph("Patched examples", style.subheading),
        image_grid(header, rows, (label_width, *([image_width + 4] * 3 * EXAMPLES_SHOWN))),
        Paragraph(
            "The first test images at each target's own resolution, clean, with the patch "
            "and with the control pasted at the same place (pixels enlarged, not smoothed).",
            style.caption,
        ),
    )


def _drops(run: PatchRun, scores: list[PatchScore]) -> tuple[Flowable, ...]:
    style = styles()
    panels = []
    for target in _targets(run, scores):
        rows = [
            (name, attack, control)
            for name, attack, control in _drop_rows(scores, target)
            if not (math.isnan(attack) and math.isnan(control))
        ]
        if rows:
            panels.append((target, rows))
    if not panels:
        return ()
    return (
        Paragraph("Drops against the control", style.subheading),
        figures.to_drawing(figures.drops_against_control(panels), FRAME_WIDTH, FIGURE_MAX_HEIGHT),
        Paragraph(
            "Clean minus patched, in points (R@1 and accuracy in %, CIDEr ×100), per target; "
            "the dark bar is the patch, the light one the random-patch control. A patch works "
            "where its bar is longer than the control's.",
            style.caption,
        ),
    )


def _drop_rows(scores: list[PatchScore], target: str) -> list[tuple[str, float, float]]:
    """(measure, patch drop, control drop) for one target, in the tables' order."""

    def drop(scoring: str, metric: str) -> tuple[float, float]:
        pair = []
        for attack in (PATCH_ATTACK, CONTROL_ATTACK):
            found = _find(scores, target, attack, scoring)
            pair.append(math.nan if found is None else found.metrics.get(metric, math.nan))
        return pair[0], pair[1]

    rows = []
    for scoring in _retrieval_scorings(scores):
        for direction in ("TR", "IR"):
            rows.append(
                (f"{direction} R@1 ({scoring})", *drop(scoring, f"{direction.lower()}_drop_r1"))
            )
    for scoring, name in CLASSIFIERS.items():
        for task in TASKS:
            rows.append((f"{name} {task}", *drop(scoring, f"{task}_acc_drop")))
    rows.append(("CIDEr", *drop(CAPTION, "cider_drop")))
    rows.append(("BLEU-4", *drop(CAPTION, "bleu4_drop")))
    return rows


def _find(
    scores: Sequence[PatchScore], target: str, attack: str | None, scoring: str
) -> PatchScore | None:
    for score in scores:
        if (score.target, score.attack, score.scoring) == (target, attack, scoring):
            return score
    return None


def _retrieval_scorings(scores: Sequence[PatchScore]) -> list[str]:
    classified = {*CLASSIFIERS, CAPTION}
    return list(dict.fromkeys(s.scoring for s in scores if s.scoring not in classified))


def _targets(run: PatchRun, scores: Sequence[PatchScore]) -> list[str]:
    """The run's targets in the order it listed them, then any other the store holds."""
    return list(dict.fromkeys([*run.targets, *(score.target for score in scores)]))


def _retrieval_table(run: PatchRun, scores: list[PatchScore]) -> list[Flowable]:
    rows = []
    for target in _targets(run, scores):
        for scoring in _retrieval_scorings(scores):
            for attack, images in IMAGES.items():
                score = _find(scores, target, attack, scoring)
                if score is None:
                    continue
                values = score.metrics
                rows.append(
                    (
                        target + ("*" if target == run.source else ""),
                        scoring,
                        images,
                        *(
                            percent(values.get(m, math.nan))
                            for m in (
                                "tr_r1",
                                "ir_r1",
                                "tr_asr_r1",
                                "ir_asr_r1",
                                "tr_drop_r1",
                                "ir_drop_r1",
                            )
                        ),
                    )
                )
    if not rows:
        return []
    header = (
        "target",
        "scoring",
        "images",
        *two_line("TR R@1", "IR R@1", "TR ASR@1", "IR ASR@1", "TR drop@1", "IR drop@1"),
    )
    return [
        data_table(header, rows, column_widths((90, 50, 70), numbers=6), numeric_from=3),
        Paragraph(
            "R@1 in %; ASR in SGA's convention (share of clean-correct queries the images make "
            "wrong) and drop in Co-Attack's (clean R@1 minus patched R@1), both in %. A star "
            "marks the white-box target (the patch was fitted on it).",
            styles().caption,
        ),
    ]


def _unoccluded_table(run: PatchRun, scores: list[PatchScore]) -> list[Flowable]:
    """World runs: retrieval over the images whose captioned objects the patch misses."""
    metrics = [f"{m}{UNOCCLUDED}" for m in ("tr_r1", "ir_r1", "tr_asr_r1", "ir_asr_r1")]
    rows = []
    for target in _targets(run, scores):
        for scoring in _retrieval_scorings(scores):
            clean = _find(scores, target, None, scoring)
            count = None if clean is None else clean.metrics.get(f"images{UNOCCLUDED}")
            if count is None:
                continue
            for attack, images in IMAGES.items():
                score = _find(scores, target, attack, scoring)
                if score is not None:
                    rows.append(
                        (
                            target + ("*" if target == run.source else ""),
                            scoring,
                            images,
                            f"{count:.0f}",
                            *(percent(score.metrics.get(m, math.nan)) for m in metrics),
                        )
                    )
    if not rows:
        return []
    header = ("target", "scoring", "images", "kept", *two_line("TR R@1", "IR R@1",
              "TR ASR@1", "IR ASR@1"))  # fmt: skip
    return [
        data_table(header, rows, column_widths((90, 50, 70, 40), numbers=4), numeric_from=3),
        Paragraph(
            "The same metrics over the images (kept: how many) whose patch box overlaps no "
            "grid cell holding an object their captions name, with the caption queries of "
            "those images: where the patch may hide a named object, a failed query need not "
            "be adversarial, so this isolates the patch's effect from plain occlusion.",
            styles().caption,
        ),
    ]


def _classification_table(run: PatchRun, scores: list[PatchScore]) -> list[Flowable]:
    rows = []
    for target in _targets(run, scores):
        for scoring, classifier in CLASSIFIERS.items():
            clean = _find(scores, target, None, scoring)
            if clean is None:
                continue
            patched = _find(scores, target, PATCH_ATTACK, scoring)
            control = _find(scores, target, CONTROL_ATTACK, scoring)
            for task in TASKS:
                if f"{task}_acc" not in clean.metrics:
                    continue
                rows.append(
                    (
                        target,
                        classifier,
                        task,
                        percent(clean.metrics[f"{task}_acc"]),
                        *_attacked(patched, task),
                        *_attacked(control, task),
                    )
                )
    if not rows:
        return []
    header = (
        "target",
        "classifier",
        "task",
        *two_line("clean acc", "patch acc", "patch drop", "patch fooled"),
        *two_line("control acc", "control drop", "control fooled"),
    )
    return [
        data_table(header, rows, column_widths((90, 52, 62), numbers=7), numeric_from=3),
        Paragraph(
            "Accuracy of world-attribute classification in %: zero-shot against class prompts, "
            "k-NN votes over clean features (leave-one-out). Drop is clean minus patched "
            "accuracy; fooled is the share of images whose prediction the patch changes.",
            styles().caption,
        ),
    ]


def _attacked(score: PatchScore | None, task: str) -> tuple[str, str, str]:
    if score is None:
        return MISSING, MISSING, MISSING
    metrics = score.metrics
    return (
        percent(metrics.get(f"{task}_acc", math.nan)),
        percent(metrics.get(f"{task}_acc_drop", math.nan)),
        percent(metrics.get(f"{task}_fooling_rate", math.nan)),
    )


def _caption_table(run: PatchRun, scores: list[PatchScore]) -> list[Flowable]:
    rows = []
    for target in _targets(run, scores):
        for attack, images in IMAGES.items():
            score = _find(scores, target, attack, CAPTION)
            if score is None:
                continue
            values = score.metrics
            rows.append(
                (
                    target,
                    images,
                    *(percent(values.get(m, math.nan)) for m, _ in _CAPTION_COLUMNS),
                    *(percent(values.get(f"{m}_drop", math.nan)) for m, _ in _CAPTION_COLUMNS),
                    percent(values.get("caption_change_rate", math.nan)),
                )
            )
    if not rows:
        return []
    names = [name for _, name in _CAPTION_COLUMNS]
    header = (
        "target",
        "images",
        *names,
        *two_line(*(f"{name} drop" for name in names)),
        *two_line("captions changed"),
    )
    return [
        data_table(header, rows, column_widths((90, 70), numbers=7), numeric_from=2),
        Paragraph(
            "Caption quality against the references, ×100; drop is clean minus patched; "
            "captions changed is the share of images whose generated caption differs from "
            "the clean one, in %.",
            styles().caption,
        ),
    ]
