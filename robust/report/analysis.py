"""Numbers a reader asks for first, derived from `ReportData`: matrices, rankings, sweeps.

Headline metric is R@1 attack success in SGA's convention (`{tr,ir}_asr_r1`), averaged over
seeds, on each target's headline scoring (re-ranked where stored, else ITC), by the rules of
`robust.harness.results` that `robust matrix`'s own summary uses. A summary's spread is
`seed_spread` of the summary computed seed by seed (NaN for a run with one seed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from robust.harness.results import IMAGE_ONLY, TEXT_ONLY, part_metric, seed_mean, seed_spread
from robust.report.data import ReportData, TransferScore, finite_mean, victim_headline_scoring

TR_ASR: str = "tr_asr_r1"
IR_ASR: str = "ir_asr_r1"


@dataclass(frozen=True)
class TransferMatrix:
    """R@1 ASR of one attack for every (source, target); NaN where no cell was stored."""

    attack: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    tr_asr: np.ndarray
    ir_asr: np.ndarray
    white_box: np.ndarray
    scoring: dict[str, str]


@dataclass(frozen=True)
class AttackSummary:
    """Mean R@1 ASR of one attack on white-box cells and on transfer (black-box) cells, and
    each mean's spread over seeds (NaN with one seed)."""

    attack: str
    white_box_tr: float
    white_box_ir: float
    transfer_tr: float
    transfer_ir: float
    white_box_tr_spread: float = math.nan
    white_box_ir_spread: float = math.nan
    transfer_tr_spread: float = math.nan
    transfer_ir_spread: float = math.nan

    @property
    def transfer(self) -> float:
        return finite_mean([self.transfer_tr, self.transfer_ir])


@dataclass(frozen=True)
class ModalitySplit:
    """Mean transfer R@1 ASR of one multimodal attack (TR, IR): both modalities adversarial,
    its adversarial images with the clean captions, and the clean images with its captions."""

    attack: str
    both: tuple[float, float]
    image_only: tuple[float, float]
    text_only: tuple[float, float]


@dataclass(frozen=True)
class VictimExposure:
    """How often attacks crafted on *other* models fool this target (mean TR/IR R@1 ASR)."""

    victim: str
    transfer_asr: float
    white_box_asr: float


@dataclass(frozen=True)
class SweepCurve:
    """R@1 ASR of one (source, target) pair as the budget grows."""

    source: str
    target: str
    eps: tuple[float, ...]
    tr_asr: tuple[float, ...]
    ir_asr: tuple[float, ...]


@dataclass(frozen=True)
class EpsSweep:
    """Attacks that differ only in eps, ordered by eps, with one curve per cell."""

    name: str
    attacks: tuple[str, ...]
    curves: tuple[SweepCurve, ...]


def victim_order(data: ReportData) -> list[str]:
    """Victims in the order the specs list them, then any others alphabetically."""
    ordered: dict[str, None] = {}
    for run in data.runs:
        inner = run.spec.get("spec", {})
        for ref in (*inner.get("sources", []), *inner.get("targets", [])):
            ordered.setdefault(ref["name"], None)
        for name in run.spec.get("victims", []):
            ordered.setdefault(name, None)
    others = {s.source for s in data.transfer} | {s.target for s in data.transfer}
    others |= {s.victim for s in data.clean}
    return [*ordered, *sorted(others - set(ordered))]


def _headline_cells(data: ReportData, attack: str) -> list[TransferScore]:
    cells = [score for score in data.transfer if score.attack == attack]
    targets = {s.target for s in cells}
    scoring = {target: victim_headline_scoring(cells, target) for target in targets}
    return [score for score in cells if score.scoring == scoring[score.target]]


def transfer_matrix(
    data: ReportData,
    attack: str,
    *,
    seed: int | None = None,
    metrics: tuple[str, str] = (TR_ASR, IR_ASR),
) -> TransferMatrix:
    """One attack's matrix over the sources and targets it was run on, seeds averaged (or
    only `seed`'s cells); `metrics` names the (TR, IR) rows it reads."""
    cells = _headline_cells(data, attack)
    order = victim_order(data)
    sources = tuple(name for name in order if any(c.source == name for c in cells))
    targets = tuple(name for name in order if any(c.target == name for c in cells))
    grids = {metric: np.full((len(sources), len(targets)), np.nan) for metric in metrics}
    white_box = np.zeros((len(sources), len(targets)), dtype=bool)
    for s, source in enumerate(sources):
        for t, target in enumerate(targets):
            found = [c for c in cells if c.source == source and c.target == target]
            white_box[s, t] = any(c.white_box for c in found)
            found = [c for c in found if seed is None or c.seed == seed]
            for metric, grid in grids.items():
                grid[s, t] = seed_mean(c.metrics.get(metric, math.nan) for c in found)
    scoring = {target: victim_headline_scoring(cells, target) for target in targets}
    tr, ir = (grids[metric] for metric in metrics)
    return TransferMatrix(attack, sources, targets, tr, ir, white_box, scoring)


def attack_seeds(data: ReportData, attack: str) -> list[int]:
    """The seeds an attack's transfer cells were crafted with, ascending."""
    return sorted({s.seed for s in data.transfer if s.attack == attack} - {None})


def transfer_matrices(data: ReportData) -> list[TransferMatrix]:
    """Every attack's matrix, in spec order."""
    return [transfer_matrix(data, attack) for attack in data.attack_labels()]


def _masked_mean(grid: np.ndarray, mask: np.ndarray) -> float:
    return finite_mean(float(value) for value in grid[mask])


def _cell_means(matrix: TransferMatrix) -> tuple[float, float, float, float]:
    """(white-box TR, white-box IR, transfer TR, transfer IR) means of one matrix."""
    wb, bb = matrix.white_box, ~matrix.white_box
    return (
        _masked_mean(matrix.tr_asr, wb),
        _masked_mean(matrix.ir_asr, wb),
        _masked_mean(matrix.tr_asr, bb),
        _masked_mean(matrix.ir_asr, bb),
    )


def attack_summaries(data: ReportData) -> list[AttackSummary]:
    """White-box and transfer means of every attack, in spec order, each with its spread
    over seeds: the same mean taken seed by seed, then `seed_spread`."""
    summaries = []
    for matrix in transfer_matrices(data):
        per_seed = [
            _cell_means(transfer_matrix(data, matrix.attack, seed=seed))
            for seed in attack_seeds(data, matrix.attack)
        ]
        spreads = [seed_spread(values) for values in zip(*per_seed, strict=True)] or [math.nan] * 4
        means = _cell_means(matrix)
        summaries.append(AttackSummary(matrix.attack, *means, *spreads))
    return summaries


def modality_splits(data: ReportData) -> list[ModalitySplit]:
    """Mean transfer R@1 ASR of each attack with modality-part rows (multimodal attacks):
    both halves, the image half alone and the text half alone, in spec order."""
    splits = []
    for attack in data.attack_labels():
        cells = _headline_cells(data, attack)
        if not any(part_metric(TR_ASR, IMAGE_ONLY) in c.metrics for c in cells):
            continue
        means = {}
        for part in (None, IMAGE_ONLY, TEXT_ONLY):
            names = (
                (TR_ASR, IR_ASR)
                if part is None
                else (part_metric(TR_ASR, part), part_metric(IR_ASR, part))
            )
            matrix = transfer_matrix(data, attack, metrics=names)
            transfer = ~matrix.white_box
            means[part] = (
                _masked_mean(matrix.tr_asr, transfer),
                _masked_mean(matrix.ir_asr, transfer),
            )
        splits.append(ModalitySplit(attack, means[None], means[IMAGE_ONLY], means[TEXT_ONLY]))
    return splits


def victim_exposures(data: ReportData) -> list[VictimExposure]:
    """Every target's mean R@1 ASR over all attacks, transfer and white-box separately."""
    transfer: dict[str, list[float]] = {}
    white_box: dict[str, list[float]] = {}
    for matrix in transfer_matrices(data):
        for t, target in enumerate(matrix.targets):
            for s in range(len(matrix.sources)):
                bucket = white_box if matrix.white_box[s, t] else transfer
                bucket.setdefault(target, []).extend(
                    [float(matrix.tr_asr[s, t]), float(matrix.ir_asr[s, t])]
                )
    targets = [name for name in victim_order(data) if name in transfer or name in white_box]
    return [
        VictimExposure(
            name, finite_mean(transfer.get(name, [])), finite_mean(white_box.get(name, []))
        )
        for name in targets
    ]


def most_vulnerable(data: ReportData) -> VictimExposure | None:
    """The target that transferred attacks fool most often (None without transfer cells)."""
    ranked = [e for e in victim_exposures(data) if not math.isnan(e.transfer_asr)]
    return max(ranked, key=lambda e: e.transfer_asr) if ranked else None


def most_transferable(data: ReportData) -> AttackSummary | None:
    """The attack whose examples fool *other* models most (None without transfer cells)."""
    ranked = [s for s in attack_summaries(data) if not math.isnan(s.transfer)]
    return max(ranked, key=lambda s: s.transfer) if ranked else None


def eps_sweeps(data: ReportData) -> list[EpsSweep]:
    """Groups of attacks with the same name and settings but at least two eps values."""
    groups: dict[str, list[str]] = {}
    for label in data.attack_labels():
        info = data.attacks[label]
        if info.eps is None:
            continue
        fixed = {key: value for key, value in info.params.items() if key != "eps"}
        key = json.dumps([info.name, info.run, info.mlm, fixed], sort_keys=True, default=str)
        groups.setdefault(key, []).append(label)
    sweeps = []
    for labels in groups.values():
        labels = sorted(labels, key=lambda label: data.attacks[label].eps or 0.0)
        if len({data.attacks[label].eps for label in labels}) < 2:
            continue
        matrices = [transfer_matrix(data, label) for label in labels]
        curves = []
        for source in matrices[0].sources:
            for target in matrices[0].targets:
                curves.append(_sweep_curve(data, labels, matrices, source, target))
        sweeps.append(EpsSweep(data.attacks[labels[0]].name, tuple(labels), tuple(curves)))
    return sweeps


def _sweep_curve(
    data: ReportData,
    labels: list[str],
    matrices: list[TransferMatrix],
    source: str,
    target: str,
) -> SweepCurve:
    eps, tr, ir = [], [], []
    for label, matrix in zip(labels, matrices, strict=True):
        if source in matrix.sources and target in matrix.targets:
            s, t = matrix.sources.index(source), matrix.targets.index(target)
            eps.append(float(data.attacks[label].eps or 0.0))
            tr.append(float(matrix.tr_asr[s, t]))
            ir.append(float(matrix.ir_asr[s, t]))
    return SweepCurve(source, target, tuple(eps), tuple(tr), tuple(ir))
