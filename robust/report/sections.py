"""The report's sections as a registry: each declares the data it needs and builds flowables.

A section whose data the run lacks is left out, and the document says so in one line where
it would have been. The universal-patch, AnyAttack, defense and bias sections live in their
own modules.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from reportlab.platypus import Flowable, Paragraph, Preformatted, Spacer

from robust.report import analysis, figures
from robust.report.anyattack_section import (
    anyattack_headlines,
    anyattack_section,
    has_anyattack,
)
from robust.report.bias_section import bias_section, has_bias
from robust.report.calibration_section import calibration_section, has_calibration
from robust.report.data import CleanScore, ReportData, finite_mean, victim_headline_scoring
from robust.report.defense_section import (
    adaptive_note,
    defended_rows_table,
    defenses_section,
    has_defenses,
)
from robust.report.layout import (
    FIGURE_MAX_HEIGHT,
    FRAME_WIDTH,
    Block,
    Together,
    column_widths,
    data_table,
    key_value_table,
    paragraphs,
    percent,
    styles,
    text,
    two_line,
    with_heading,
)
from robust.report.patch_section import has_patch, patch_headlines, patch_section
from robust.report.zeroshot_section import has_zeroshot, zeroshot_section

Builder = Callable[[ReportData], list[Block]]
_RECALL_COLUMNS: Final[tuple[str, ...]] = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10")


@dataclass(frozen=True)
class Section:
    """One numbered section: shown when `available(data)`, else replaced by `missing`, or
    left out without a word when `missing` is None (a section only some runs can have)."""

    title: str
    available: Callable[[ReportData], bool]
    build: Builder
    missing: str | None


# -- title page ------------------------------------------------------------------------------


def title_page(data: ReportData) -> list[Flowable]:
    """Run metadata: stores and runs, versions, seeds, hardware, git commit, spec summary."""
    style = styles()
    latest = max(run.created_at for run in data.runs)
    story: list[Flowable] = [
        Spacer(1, 30),
        Paragraph("Robustness report", style.title),
        Paragraph(f"Run directory: {text(data.run_dir)}", style.subtitle),
        Paragraph(f"Latest run started {text(latest[:19].replace('T', ' '))} UTC", style.body),
        Spacer(1, 8),
        Paragraph("Runs", style.subheading),
    ]
    rows = [
        (
            run.key,
            run.name,
            run.created_at[:19].replace("T", " "),
            _commit(run.git_commit, run.git_dirty),
            json.dumps(run.seeds, sort_keys=True),
        )
        for run in data.runs
    ]
    story.append(
        data_table(
            ("run (store#id)", "name", "started (UTC)", "git commit", "seeds"),
            rows,
            (110, 60, 75, 85, FRAME_WIDTH - 330),
            numeric_from=5,
        )
    )
    story += [Paragraph("Package versions", style.subheading)]
    story.append(_metadata_table(_merged(run.versions for run in data.runs), "versions"))
    story += [Paragraph("Hardware", style.subheading)]
    story.append(_metadata_table(_merged(run.hardware for run in data.runs), "hardware"))
    story += [Paragraph("What was run", style.subheading)]
    story.append(key_value_table(_spec_summary(data), 110))
    story.append(Paragraph("The full specs are at the end of the appendix.", style.note))
    return story


def _metadata_table(pairs: list[tuple[str, str]], what: str) -> Flowable:
    if not pairs:
        return Paragraph(f"The runs recorded no {what}.", styles().note)
    return key_value_table(pairs, 110)


def _commit(commit: str | None, dirty: bool | None) -> str:
    if commit is None:
        return "unknown"
    return commit[:12] + (" (uncommitted changes)" if dirty else "")


def _merged(records: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """Key/value pairs over runs; a key whose runs disagree lists every value."""
    values: dict[str, list[str]] = {}
    for record in records:
        for key, value in record.items():
            shown = json.dumps(value) if isinstance(value, list | dict) else str(value)
            if shown not in values.setdefault(key, []):
                values[key].append(shown)
    return [(key, " / ".join(found)) for key, found in sorted(values.items())]


def _command_summary(kind: str, spec: dict[str, Any]) -> str:
    """One line for a stand-alone command's record (eval, patch-eval, bias, anyattack)."""
    parts = [kind]
    if spec.get("dataset"):
        parts.append(f"on {spec['dataset']}")
    if isinstance(spec.get("pairs"), str):
        parts.append(f"on the image pairs of {spec['pairs']}")
    if spec.get("attack") and spec.get("source"):
        parts.append(f"with {spec['attack']} examples crafted on {spec['source']}")
    measured = spec.get("victims") or spec.get("targets")
    if not measured:
        measured = [spec[key] for key in ("victim", "captioner") if spec.get(key)]
    if measured:
        parts.append("measured on " + ", ".join(map(str, measured)))
    return " ".join(parts)


def _spec_summary(data: ReportData) -> list[tuple[str, str]]:
    pairs = []
    for run in data.runs:
        inner = run.spec.get("spec")
        if inner is None:
            pairs.append((run.key, _command_summary(run.kind, run.spec)))
            continue
        limit = inner.get("limit")
        dataset = inner.get("dataset", "?") + (f" (first {limit} images)" if limit else "")
        attacks = ", ".join(a.get("label") or a["name"] for a in inner.get("attacks", []))
        sources = ", ".join(ref["name"] for ref in inner.get("sources", []))
        targets = ", ".join(ref["name"] for ref in inner.get("targets", []))
        pairs.append(
            (
                run.key,
                f"{run.kind} '{run.name}' on {dataset}; sources: {sources}; targets: "
                f"{targets}; attacks: {attacks}",
            )
        )
    return pairs


# -- executive summary -----------------------------------------------------------------------


def _has_results(data: ReportData) -> bool:
    return bool(data.clean or data.transfer or data.patch or data.anyattack)


def executive_summary(data: ReportData) -> list[Block]:
    """The headline findings in a few sentences, each with its number."""
    style = styles()
    lines: list[str] = []
    vulnerable = analysis.most_vulnerable(data)
    if vulnerable is not None:
        lines.append(
            f"<b>Most vulnerable victim:</b> {text(vulnerable.victim)}. Adversarial examples "
            "crafted on other models reach a mean R@1 attack success rate of "
            f"<b>{percent(vulnerable.transfer_asr)} %</b> on it (TR and IR, all attacks)."
        )
    transferable = analysis.most_transferable(data)
    if transferable is not None:
        lines.append(
            f"<b>Most transferable attack:</b> {text(transferable.attack)}, with a mean "
            f"transfer R@1 ASR of <b>{percent(transferable.transfer)} %</b> (TR "
            f"{percent(transferable.transfer_tr)} %, IR {percent(transferable.transfer_ir)} %)."
        )
    strongest = _strongest_white_box(data)
    if strongest is not None:
        lines.append(strongest)
    if data.transfer and vulnerable is None:
        lines.append("Every stored cell is white-box, so nothing here measures transfer.")
    best = _best_clean(data)
    if best is not None:
        lines.append(
            f"<b>Best clean retrieval:</b> {text(best.victim)} with TR R@1 "
            f"<b>{percent(best.metrics.get('tr_r1', math.nan))} %</b> and IR R@1 "
            f"<b>{percent(best.metrics.get('ir_r1', math.nan))} %</b> on "
            f"{text(best.dataset)} {text(best.split)} ({text(best.scoring)})."
        )
    lines += patch_headlines(data)
    lines += anyattack_headlines(data)
    lines.append(_scope(data))
    story: list[Flowable] = paragraphs(lines, style.body)
    story.append(
        Paragraph(
            "ASR is SGA's convention: the share of queries right at R@1 on clean data that "
            "an attack makes wrong. Transfer means source and target differ (black-box).",
            style.note,
        )
    )
    return story


def _strongest_white_box(data: ReportData) -> str | None:
    ranked = [
        (finite_mean([s.white_box_tr, s.white_box_ir]), s) for s in analysis.attack_summaries(data)
    ]
    ranked = [(value, s) for value, s in ranked if not math.isnan(value)]
    if not ranked:
        return None
    value, summary = max(ranked, key=lambda pair: pair[0])
    return (
        f"<b>Strongest white-box attack:</b> {text(summary.attack)}, mean white-box R@1 ASR "
        f"<b>{percent(value)} %</b>."
    )


def _best_clean(data: ReportData) -> CleanScore | None:
    headline = [
        score
        for score in data.clean
        if score.scoring == victim_headline_scoring(data.clean, score.victim)
        and not math.isnan(score.metrics.get("r_mean", math.nan))
    ]
    if not headline:
        return None
    largest = max(_image_count(score.split) for score in headline)
    widest = [score for score in headline if _image_count(score.split) == largest]
    return max(widest, key=lambda score: score.metrics["r_mean"])


def _image_count(split: str) -> float:
    """`test-1k[:50]` evaluates 50 images; an unlimited split counts as the largest."""
    _, bracket, limit = split.partition("[:")
    return float(limit.rstrip("]")) if bracket and limit.rstrip("]").isdigit() else math.inf


def _scope(data: ReportData) -> str:
    victims = {s.victim for s in data.clean} | {s.target for s in data.transfer}
    victims |= {s.source for s in data.transfer} | {s.victim for s in data.defended}
    victims |= {s.target for s in data.patch} | {s.victim for s in data.anyattack}
    victims |= {s.victim for s in data.bias}
    scope = f"This report covers {len(data.runs)} run(s) and {len(victims)} victim(s)"
    if not data.transfer:
        return scope + "."
    cells = {(s.attack, s.source, s.target) for s in data.transfer}
    return (
        f"{scope}, with {len(data.attack_labels())} transfer attack(s) in "
        f"{len(cells)} transfer cell(s)."
    )


# -- clean performance -----------------------------------------------------------------------


def clean_performance(data: ReportData) -> list[Block]:
    """Clean R@K per victim, data and preprocessing; identical matrix baselines merged."""
    style = styles()
    merged: dict[tuple[Any, ...], list[str]] = {}
    for score in data.clean:
        values = tuple(score.metrics.get(m, math.nan) for m in (*_RECALL_COLUMNS, "r_mean"))
        key = (score.victim, score.dataset, score.split, score.scoring, values)
        merged.setdefault(key, [])
        if score.preprocessed_as is not None:
            merged[key].append(score.preprocessed_as)
    rows = []
    for (victim, dataset, split, scoring, values), sources in merged.items():
        images = "native" if not sources else "as " + ", ".join(sources)
        rows.append((victim, f"{dataset} {split}", images, scoring, *(percent(v) for v in values)))
    widths = column_widths((74, 64, 70, 41), numbers=7)
    header = (
        "victim",
        "data",
        "images",
        "scoring",
        *two_line("TR R@1", "TR R@5", "TR R@10", "IR R@1", "IR R@5", "IR R@10", "R mean"),
    )
    return [
        data_table(header, rows, widths, numeric_from=4),
        Paragraph(
            "Recall in %. 'images: as X' rows are the matrix's clean baselines, with images "
            "resized and quantised exactly as for source X's adversarial examples.",
            style.caption,
        ),
    ]


# -- transfer matrices and attack comparison -------------------------------------------------


def _victim_names(data: ReportData) -> dict[str, str]:
    return figures.short_names(analysis.victim_order(data))


def _legend(names: dict[str, str]) -> str:
    pairs = [f"{short} = {text(name)}" for name, short in names.items() if short != name]
    return ("Victims: " + "; ".join(pairs) + ". ") if pairs else ""


def describe_params(params: dict[str, Any]) -> str:
    """Hyper-parameters as a reader writes them: budgets in units of 1/255."""
    parts = []
    for key, value in sorted(params.items()):
        if key in {"eps", "step_size"} and isinstance(value, int | float):
            parts.append(f"{key} {255 * value:g}/255")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


def transfer_section(data: ReportData) -> list[Block]:
    """One pair of heatmaps per attack (TR and IR R@1 ASR), white-box diagonal marked."""
    style = styles()
    names = _victim_names(data)
    introduction: list[Flowable] = [
        Paragraph(
            "Rows are the source models the examples were crafted on, columns the targets they "
            "were evaluated on. Cells give R@1 ASR in %; a star and a dashed outline mark "
            "white-box cells (source and target are the same model); a dash marks a cell "
            "without a result (not run, or no query right on clean data).",
            style.body,
        )
    ]
    story: list[Block] = []
    for matrix in analysis.transfer_matrices(data):
        info = data.attacks[matrix.attack]
        scoring = ", ".join(f"{text(t)}: {s.upper()}" for t, s in matrix.scoring.items())
        seeds = sorted({s.seed for s in data.transfer if s.attack == matrix.attack} - {None})
        averaged = f" Mean over seeds {', '.join(map(str, seeds))}." if len(seeds) > 1 else ""
        lead, introduction = introduction, []  # the introduction stays with the first figure
        story.append(
            Together(
                (
                    *lead,
                    Paragraph(text(matrix.attack), style.subheading),
                    figures.to_drawing(
                        figures.transfer_heatmaps(matrix, names), FRAME_WIDTH, FIGURE_MAX_HEIGHT
                    ),
                    Paragraph(
                        f"{text(info.name)}: {text(describe_params(info.params)) or 'defaults'}"
                        f"{'; masked LM ' + text(info.mlm) if info.mlm else ''}. Scoring: "
                        f"{scoring}.{averaged} {_legend(names)}",
                        style.caption,
                    ),
                )
            )
        )
    return story


def _with_spread(mean: float, spread: float) -> str:
    """A mean in %, followed by its spread over seeds where the run has one."""
    return percent(mean) if math.isnan(spread) else f"{percent(mean)} ± {percent(spread)}"


def attack_comparison(data: ReportData) -> list[Block]:
    """Mean transfer and white-box ASR per attack, as bars and as a table (with the spread
    over seeds where there are several), then which modality carries each multimodal attack."""
    style = styles()
    summaries = analysis.attack_summaries(data)
    rows = [
        (
            s.attack,
            _with_spread(s.transfer_tr, s.transfer_tr_spread),
            _with_spread(s.transfer_ir, s.transfer_ir_spread),
            _with_spread(s.white_box_tr, s.white_box_tr_spread),
            _with_spread(s.white_box_ir, s.white_box_ir_spread),
        )
        for s in summaries
    ]
    header = ("attack", "transfer TR", "transfer IR", "white-box TR", "white-box IR")
    spread = any(
        not math.isnan(value)
        for s in summaries
        for value in (s.transfer_tr_spread, s.transfer_ir_spread)
    )
    caption = (
        "Mean R@1 ASR (%) over the cells of each kind; n/a where the run has no cell of that kind."
    )
    if spread:
        caption += (
            " ± is the standard deviation over seeds of the same mean taken seed by seed "
            "(error bars in the figure)."
        )
    story: list[Block] = [
        figures.to_drawing(
            figures.attack_comparison(summaries), FRAME_WIDTH * 0.92, FIGURE_MAX_HEIGHT
        ),
        Paragraph(caption, style.caption),
        data_table(header, rows, (160, 80, 80, 80, 80), numeric_from=1),
    ]
    splits = analysis.modality_splits(data)
    if splits:
        story.append(
            Paragraph(
                "Which modality carries the transfer: mean transfer R@1 ASR (%) of each "
                "multimodal attack with both halves, with its adversarial images and the clean "
                "captions (image only), and with the clean images and its adversarial "
                "captions (text only), all against the same clean-correct queries.",
                style.caption,
            )
        )
        split_rows = [
            (
                split.attack,
                *(percent(value) for value in (*split.both, *split.image_only, *split.text_only)),
            )
            for split in splits
        ]
        split_header = ("attack", *two_line("both TR", "both IR", "image TR", "image IR"))
        split_header += two_line("text TR", "text IR")
        story.append(data_table(split_header, split_rows, column_widths((120,), 6), numeric_from=1))
    return story


# -- eps sweep -------------------------------------------------------------------------------


def _has_sweep(data: ReportData) -> bool:
    return bool(analysis.eps_sweeps(data))


def eps_sweep_section(data: ReportData) -> list[Block]:
    """ASR against budget for attacks run at several eps values."""
    style = styles()
    names = _victim_names(data)
    story: list[Block] = []
    for sweep in analysis.eps_sweeps(data):
        story.append(
            Together(
                (
                    Paragraph(f"{text(sweep.name)}: {', '.join(sweep.attacks)}", style.subheading),
                    figures.to_drawing(
                        figures.eps_sweep(sweep, names), FRAME_WIDTH * 0.92, FIGURE_MAX_HEIGHT
                    ),
                    Paragraph(
                        f"R@1 ASR (%) per source → target pair as eps grows; other settings "
                        f"fixed. {_legend(names)}",
                        style.caption,
                    ),
                )
            )
        )
    return story


# -- appendix --------------------------------------------------------------------------------


def appendix(data: ReportData) -> list[Block]:
    """Every stored number and configuration: full tables, attack configs and run specs."""
    style = styles()
    parts: list[tuple[str, list[Flowable]]] = []
    if data.transfer:
        caption = Paragraph(
            "R@K on adversarial data, ASR at R@1 (SGA convention) and drop at R@1 "
            "(Co-Attack convention: clean R@1 minus adversarial R@1), all in %. A star marks "
            "white-box cells; a seed is named where the run used several.",
            style.caption,
        )
        parts.append(("Every transfer cell", [_transfer_table(data), caption]))
    if data.defended:
        caption = Paragraph(f"Recall and ASR in %. {adaptive_note()}", style.caption)
        parts.append(("Every defended cell", [defended_rows_table(data.defended), caption]))
    if data.cached:
        parts.append(("Attack configurations, as the cache recorded them", _cached_configs(data)))
    specs: list[Flowable] = []
    for run in data.runs:
        specs.append(Paragraph(text(run.key), style.body))
        specs.append(
            Preformatted(
                json.dumps(run.spec, indent=1, sort_keys=True), style.code, maxLineLength=110
            )
        )
    parts.append(("Run specs", specs))
    story: list[Block] = []
    for letter, (title, flowables) in zip("ABCDEFGH", parts, strict=False):
        heading = Paragraph(f"{letter}. {text(title)}", style.subheading)
        story += with_heading(heading, list(flowables))
    return story


def _transfer_table(data: ReportData) -> Flowable:
    metrics = (*_RECALL_COLUMNS, "tr_asr_r1", "ir_asr_r1", "tr_drop_r1", "ir_drop_r1")
    seeds: dict[str, set[int | None]] = {}
    for score in data.transfer:
        seeds.setdefault(score.attack, set()).add(score.seed)
    rows = []
    for score in sorted(
        data.transfer,
        key=lambda s: (
            list(data.attacks).index(s.attack),
            s.source,
            s.target,
            s.seed or 0,
            s.scoring,
        ),
    ):
        several = len(seeds[score.attack]) > 1
        attack = f"{score.attack} seed {score.seed}" if several else score.attack
        rows.append(
            (
                attack,
                score.source + ("*" if score.white_box else ""),
                f"{score.target} ({score.scoring})",
                *(percent(score.metrics.get(m, math.nan)) for m in metrics),
            )
        )
    header = (
        "attack",
        "source",
        "target (scoring)",
        *two_line(
            "TR R@1",
            "TR R@5",
            "TR R@10",
            "IR R@1",
            "IR R@5",
            "IR R@10",
            "TR ASR R@1",
            "IR ASR R@1",
            "TR drop R@1",
            "IR drop R@1",
        ),
    )
    widths = column_widths((58, 56, 72), numbers=10)
    return data_table(header, rows, widths, numeric_from=3)


def _cached_configs(data: ReportData) -> list[Flowable]:
    style = styles()
    story: list[Flowable] = []
    by_attack: dict[str, list[Any]] = {}
    for entry in data.cached:
        by_attack.setdefault(entry.attack, []).append(entry)
    for attack, entries in by_attack.items():
        config = {k: v for k, v in entries[0].config.items() if k not in {"source", "seed"}}
        crafted = "; ".join(
            f"{e.source} seed {e.seed}: {e.num_images} images at {e.image_size} px" for e in entries
        )
        story.append(Paragraph(f"<b>{text(attack)}</b>: {text(crafted)}", style.cell))
        story.append(Paragraph(text(_flatten(config)), style.code))
        story.append(Spacer(1, 4))
    return story


def _flatten(config: dict[str, Any], prefix: str = "") -> str:
    parts = []
    for key, value in sorted(config.items()):
        if isinstance(value, dict) and value:
            parts.append(_flatten(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}={json.dumps(value)}")
    return "; ".join(parts)


SECTIONS: Final[tuple[Section, ...]] = (
    Section(
        "Executive summary",
        _has_results,
        executive_summary,
        "No retrieval results in this run, so there is nothing to summarise.",
    ),
    Section(
        "Clean performance",
        lambda data: bool(data.clean),
        clean_performance,
        "No clean retrieval results in this run.",
    ),
    Section(
        "World calibration",
        has_calibration,
        calibration_section,
        None,  # only a `robust zoo calibrate` run (or a demo of a calibrated zoo) has one
    ),
    Section(
        "Transfer matrices",
        lambda data: bool(data.transfer),
        transfer_section,
        "No transfer-attack results in this run.",
    ),
    Section(
        "Attack comparison",
        lambda data: bool(data.transfer),
        attack_comparison,
        "No transfer-attack results in this run, so no attack comparison.",
    ),
    Section(
        "Budget sweep",
        _has_sweep,
        eps_sweep_section,
        "No eps sweep in this run: no attack was run at several eps values.",
    ),
    Section(
        "Universal patch",
        has_patch,
        patch_section,
        "No universal-patch results in this run.",
    ),
    Section("AnyAttack", has_anyattack, anyattack_section, "No AnyAttack results in this run."),
    Section(
        "Defenses",
        has_defenses,
        defenses_section,
        "No defense results in this run.",
    ),
    Section("Bias", has_bias, bias_section, "No bias measurements in this run."),
    # only runs with zero-shot rows get it, without a note otherwise
    Section("Zero-shot robustness", has_zeroshot, zeroshot_section, None),
    Section("Appendix", lambda data: True, appendix, ""),
)
