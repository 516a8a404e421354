"""The AnyAttack section: clean / noise / adversarial / target examples with their captions,
and targeted success on every victim between its clean floor and target ceiling, beside the
noise oracle (the best any clean-independent noise does) where the input holds one.

It reads a `robust anyattack eval` run: its store rows (metric names in
`robust.harness.anyattack_eval`: `{gallery}_{recall}` for retrieval victims,
`{gallery}_vs_{target|clean}_{metric}` and `{gallery}_caption_readable` for captioners) and
the example quadruples that run writes beside its store, `anyattack_examples/examples.json`
and the PNGs it names; and any `robust anyattack bound` run (`robust.harness.noise_oracle`)
over the same pairs, with its step record.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from reportlab.platypus import Flowable, Paragraph

from robust.harness.results import ANYATTACK_EXAMPLES_DIR as EXAMPLES_DIR
from robust.harness.results import ANYATTACK_QUADRUPLE as QUADRUPLE
from robust.report import figures
from robust.report.bitmaps import bitmap, image_grid
from robust.report.data import AnyAttackRun, AnyAttackScore, OracleRun, ReportData
from robust.report.layout import (
    FIGURE_MAX_HEIGHT,
    FRAME_WIDTH,
    Block,
    Together,
    column_widths,
    data_table,
    percent,
    styles,
    text,
    two_line,
)

CHART_SERIES: Final[tuple[str, ...]] = ("clean (floor)", "oracle", "decoder", "target (ceiling)")
GALLERIES: Final[dict[str, str]] = {
    "floor": "clean (floor)",
    "adv": "adversarial",
    "ceiling": "target (ceiling)",
}
RECALLS: Final[tuple[str, ...]] = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10")
CAPTION_SCORES: Final[tuple[tuple[str, str], ...]] = (
    ("bleu4", "BLEU-4"),
    ("cider", "CIDEr"),
    ("emb_sim_mean", "emb. sim."),
)
CLAIM_SCORES: Final[tuple[tuple[str, str], ...]] = (
    ("caption_readable", "readable"),
    ("vs_target_objects_true", "objects (target)"),
    ("vs_target_color_true", "colours (target)"),
    ("vs_target_shape_true", "shapes (target)"),
    ("vs_target_all_true", "all true (target)"),
    ("vs_clean_objects_true", "objects (clean)"),
)
EXAMPLES_SHOWN: Final[int] = 4
GENERATED_ON: Final[tuple[tuple[str, str], ...]] = (
    ("adv", "on adversarial"),
    ("floor", "on clean"),
    ("ceiling", "on target"),
)


def has_anyattack(data: ReportData) -> bool:
    return bool(data.anyattack or data.oracles)


def anyattack_headlines(data: ReportData) -> list[str]:
    """Per run, targeted TR / IR R@1 on the encoder itself (else the first victim), with the
    oracle's TR R@1 where the input holds one for those pairs: markup."""
    lines = []
    for run in data.anyattack_runs:
        scores = [s for s in data.anyattack if s.run == run.run and "adv_tr_r1" in s.metrics]
        if not scores:
            continue
        score = next((s for s in scores if s.victim == run.encoder), scores[0])

        def both(gallery: str, metrics: dict[str, float] = score.metrics) -> str:
            return " / ".join(
                percent(metrics.get(f"{gallery}_{m}", math.nan)) for m in ("tr_r1", "ir_r1")
            )

        oracle = data.oracle_for(run, score.victim)
        bound = "" if oracle is None else f"; {_oracle_phrase(oracle)}"
        lines.append(
            f"<b>AnyAttack</b> from {text(run.encoder)}'s embedding"
            f"{_budget(run.eps, ', eps {}')}: targeted TR / IR R@1 on {text(score.victim)} "
            f"<b>{both('adv')} %</b> (clean floor {both('floor')} %, target ceiling "
            f"{both('ceiling')} %{bound})."
        )
    return lines


def _oracle_phrase(oracle: OracleRun) -> str:
    first = f"the first {oracle.optimised}" if oracle.optimised is not None else "some"
    return (
        f"noise oracle TR R@1 {percent(oracle.tr_r1.get('oracle', math.nan))} % on {first} "
        "of these pairs"
    )


def _budget(eps: float | None, template: str) -> str:
    """`template` with the L-inf budget in units of 1/255 filled in; empty when unknown."""
    return "" if eps is None else template.format(f"{255 * eps:.3g}/255")


def anyattack_section(data: ReportData) -> list[Block]:
    """Per evaluation run: examples, one floor / oracle / decoder / ceiling chart per
    retrieval victim, the tables and the oracle's step record; then any oracle run that no
    evaluation in the input shares its pairs with."""
    style = styles()
    story: list[Block] = []
    shown: set[str] = set()
    for run in data.anyattack_runs:
        order = {victim: index for index, victim in enumerate(run.victims)}
        scores = sorted(
            (score for score in data.anyattack if score.run == run.run),
            key=lambda score: order.get(score.victim, len(order)),
        )
        if not scores:
            continue
        lead: list[Flowable] = []
        if len(data.anyattack_runs) > 1:
            lead.append(Paragraph(f"Run {text(run.run)}", style.subheading))
        lead.append(Paragraph(_describe(run), style.body))
        story.append(Together((*lead, *_examples(run))))
        retrieval = [score for score in scores if "adv_tr_r1" in score.metrics]
        oracles = {score.victim: data.oracle_for(run, score.victim) for score in retrieval}
        for score in retrieval:
            story.append(Together(_victim_chart(run, score, oracles[score.victim])))
        if retrieval:
            story.append(Together(_retrieval_table(retrieval)))
        captions = [score for score in scores if "adv_vs_target_cider" in score.metrics]
        if captions:
            story.append(Together(_caption_table(captions)))
        claims = [score for score in scores if "adv_caption_readable" in score.metrics]
        if claims:
            story.append(Together(_claim_table(claims)))
        found = [oracle for oracle in oracles.values() if oracle is not None]
        if found:
            story.append(Together(_oracle_steps(found)))
            shown |= {oracle.run for oracle in found}
    unmatched = [oracle for oracle in data.oracles if oracle.run not in shown]
    if unmatched:
        lead = Paragraph(
            "Noise oracle runs whose pairs no AnyAttack evaluation in this input shares "
            "(same dataset, pair count, pairing seed and budget):",
            style.body,
        )
        story.append(Together((lead, *_oracle_steps(unmatched))))
    return story


def _describe(run: AnyAttackRun) -> str:
    pairs = f"{run.pairs} clean/target pairs" if run.pairs is not None else "clean/target pairs"
    return (
        f"A noise decoder turns {text(run.encoder)}'s embedding of a target image into "
        f"noise{_budget(run.eps, ' (L∞ budget {})')} that is added to a clean image; {pairs} of "
        f"{text(run.dataset)}, evaluated on {text(', '.join(run.victims))}. Success is "
        "targeted: a victim should take the adversarial image for its target. The clean "
        "images give the floor (an attack that does nothing), the targets themselves the "
        "ceiling (a perfect one)."
    )


def _examples(run: AnyAttackRun) -> tuple[Flowable, ...]:
    style = styles()
    folder = run.folder / EXAMPLES_DIR
    try:
        record = json.loads((folder / "examples.json").read_text(encoding="utf-8"))
        examples = list(record["examples"])[:EXAMPLES_SHOWN]
    except (OSError, ValueError, KeyError, TypeError):
        return (
            Paragraph(
                f"No examples: {EXAMPLES_DIR}/examples.json is missing or unreadable.",
                style.note,
            ),
        )
    image_width = 62.0
    caption_width = FRAME_WIDTH - len(QUADRUPLE) * (image_width + 4)
    rows = []
    for example in examples:
        files = example.get("files", {})
        pictures: list[Flowable | str] = [
            bitmap(folder / str(files.get(kind, f"{kind}.png")), image_width) for kind in QUADRUPLE
        ]
        rows.append([*pictures, Paragraph(_captions(example), style.cell)])
    return (
        Paragraph("Examples", style.subheading),
        image_grid(
            (*QUADRUPLE, "captions"),
            rows,
            (*([image_width + 4] * len(QUADRUPLE)), caption_width),
        ),
        Paragraph(
            f"Noise is shown mapped from [−eps, eps] to [0, 1]{_gain(record)}, so zero "
            "noise is mid-grey. Captions: the first reference of the clean and of the "
            "target image, then what each captioner generated on the adversarial, the clean "
            "and the target image. Images and captions are those the evaluation stored, "
            f"read back, not recomputed: {EXAMPLES_DIR}/examples.json and the PNGs it names, "
            "written from the run's adversarial cache.",
            style.caption,
        ),
    )


def _captions(example: dict[str, Any]) -> str:
    lines = []
    for who, key in (("clean", "clean_captions"), ("target", "target_captions")):
        references = example.get(key) or []
        if references:
            lines.append(f"<b>{who}:</b> {text(references[0])}")
    for victim, by_gallery in sorted(example.get("generated", {}).items()):
        for gallery, label in GENERATED_ON:
            if gallery in by_gallery:
                lines.append(f"<b>{text(victim)} {label}:</b> {text(by_gallery[gallery])}")
    return "<br/>".join(lines)


def _gain(record: dict[str, Any]) -> str:
    """The factor by which the noise shown is scaled, where the record names its budget."""
    eps = record.get("eps")
    if not isinstance(eps, int | float) or eps <= 0:
        return ""
    return f" (scaled by 1 / (2 eps) = {1 / (2 * eps):.3g}×{_budget(eps, ' at eps {}')})"


def _victim_chart(
    run: AnyAttackRun, score: AnyAttackScore, oracle: OracleRun | None
) -> tuple[Flowable, ...]:
    """One victim's targeted TR and IR R@1: floor, oracle, decoder and ceiling side by side."""
    style = styles()
    oracle_tr = math.nan if oracle is None else oracle.tr_r1.get("oracle", math.nan)
    rows = [
        (
            f"{direction} R@1",
            (
                score.metrics.get(f"floor_{metric}", math.nan),
                oracle_tr if direction == "TR" else math.nan,
                score.metrics.get(f"adv_{metric}", math.nan),
                score.metrics.get(f"ceiling_{metric}", math.nan),
            ),
        )
        for direction, metric in (("TR", "tr_r1"), ("IR", "ir_r1"))
    ]
    figure = figures.grouped_bars([(score.victim, rows)], CHART_SERIES, "R@1 %", columns=1)
    return (
        Paragraph(f"Targeted success on {text(score.victim)}", style.subheading),
        figures.to_drawing(figure, FRAME_WIDTH, FIGURE_MAX_HEIGHT),
        Paragraph(_chart_caption(run, score.victim, oracle), style.caption),
    )


def _chart_caption(run: AnyAttackRun, victim: str, oracle: OracleRun | None) -> str:
    """What the four bars are, and where the oracle's bar comes from or why it is missing."""
    lines = [
        f"Targeted R@1 (%) on {text(victim)} over {run.pairs or 'the'} pairs: how often an "
        "image retrieves its target's captions (TR) and a target caption retrieves its "
        "pair's image (IR), for the clean images (floor), the noise oracle's images, the "
        "decoder's adversarial images and the target images themselves (ceiling)."
    ]
    if oracle is None:
        lines.append(
            f"The oracle is missing: no <i>robust anyattack bound</i> run on {text(victim)} "
            "over these pairs (same dataset, pair count, pairing seed and budget) is in the "
            "report's input."
        )
    else:
        steps = f"{oracle.steps} sign-gradient steps" if oracle.steps else "sign-gradient steps"
        lines.append(
            "Oracle: the best single noise per target, optimised white-box on "
            f"{text(victim)} by <i>robust anyattack bound</i> ({steps} over other cleans) and "
            f"scored on the unseen cleans of the first {oracle.optimised} of these pairs "
            f"(floor {percent(oracle.tr_r1.get('floor', math.nan))} %, ceiling "
            f"{percent(oracle.tr_r1.get('ceiling', math.nan))} % there); no decoder's noise "
            "does better on a target. It has TR only, so its IR bar is empty."
        )
    return " ".join(lines)


def _oracle_steps(oracles: list[OracleRun]) -> tuple[Flowable, ...]:
    """Each oracle's TR R@1 after each recorded step count of its one run."""
    style = styles()
    counts = sorted({count for oracle in oracles for count in oracle.by_step})
    rows = [
        (
            oracle.victim,
            f"{oracle.optimised} of {oracle.pairs}",
            percent(oracle.tr_r1.get("floor", math.nan)),
            *(percent(oracle.by_step.get(count, math.nan)) for count in counts),
            percent(oracle.tr_r1.get("ceiling", math.nan)),
        )
        for oracle in oracles
    ]
    header = ("victim", "pairs", "floor", *(f"{count} steps" for count in counts), "ceiling")
    widths = column_widths((90, 60), numbers=len(counts) + 2)
    return (
        Paragraph("Noise oracle by steps", style.subheading),
        data_table(header, rows, widths, numeric_from=2),
        Paragraph(
            "The oracle's targeted TR R@1 (%) after each recorded number of its steps, all "
            "from one run (the last is its score above), between the floor and ceiling of "
            "the pairs it optimised: how far more steps would move the yardstick.",
            style.caption,
        ),
    )


def _retrieval_table(scores: list[AnyAttackScore]) -> tuple[Flowable, ...]:
    rows = [
        (
            score.victim,
            label,
            *(percent(score.metrics.get(f"{gallery}_{m}", math.nan)) for m in RECALLS),
        )
        for score in scores
        for gallery, label in GALLERIES.items()
    ]
    header = (
        "victim",
        "images",
        *two_line("TR R@1", "TR R@5", "TR R@10", "IR R@1", "IR R@5", "IR R@10"),
    )
    return (
        Paragraph("Targeted retrieval", styles().subheading),
        data_table(header, rows, column_widths((110, 90), numbers=6), numeric_from=2),
        Paragraph(
            "Targeted recall in %, against the target's captions; the adversarial row is the "
            "attack's targeted success.",
            styles().caption,
        ),
    )


def _caption_table(scores: list[AnyAttackScore]) -> tuple[Flowable, ...]:
    style = styles()
    rows = [
        (
            score.victim,
            label,
            *(
                percent(score.metrics.get(f"{gallery}_vs_{against}_{metric}", math.nan))
                for against in ("target", "clean")
                for metric, _ in CAPTION_SCORES
            ),
        )
        for score in scores
        for gallery, label in GALLERIES.items()
    ]
    names = [name for _, name in CAPTION_SCORES]
    header = (
        "captioner",
        "images",
        *two_line(*(f"{name} vs target" for name in names)),
        *two_line(*(f"{name} vs clean" for name in names)),
    )
    return (
        Paragraph("Targeted captioning", style.subheading),
        data_table(header, rows, column_widths((90, 80), numbers=6), numeric_from=2),
        Paragraph(
            "Generated captions scored against the target image's references (higher: the "
            "attack steers the caption to the target) and the clean image's (lower: it leaves "
            "the clean content), ×100; emb. sim. is the mean cosine similarity of caption "
            "embeddings from the encoder's text tower.",
            style.caption,
        ),
    )


def _claim_table(scores: list[AnyAttackScore]) -> tuple[Flowable, ...]:
    style = styles()
    rows = [
        (
            score.victim,
            label,
            *(percent(score.metrics.get(f"{gallery}_{key}", math.nan)) for key, _ in CLAIM_SCORES),
        )
        for score in scores
        for gallery, label in GALLERIES.items()
    ]
    header = ("captioner", "images", *two_line(*(name for _, name in CLAIM_SCORES)))
    return (
        Paragraph("Caption target rate", style.subheading),
        data_table(
            header, rows, column_widths((80, 70), numbers=len(CLAIM_SCORES)), numeric_from=2
        ),
        Paragraph(
            "Each generated caption read back into its claims (its object phrases that read "
            "as world phrases; one cut off at the captioner's length limit is left out) and "
            "checked against the target's scene, in %. Readable: captions with at least one "
            "object claim. Objects: object claims whose colour and shape are those of one "
            "object of the scene; colours, shapes: the colours and shapes the claims name that "
            "some object of the scene has (pooled over all captions' claims). All true: "
            "captions whose every claim (size, fill, position and background too) holds of "
            "distinct objects of the scene. Objects (clean): the same against the clean "
            "image's scene. The clean images' captions give the floor, the targets' the "
            "ceiling.",
            style.caption,
        ),
    )
