"""Store rows to tables: white-box cells, headline scoring and seed averaging, defined once.

The runner's summary (`robust.harness.matrix.MatrixResult`), the defense table, the CLI tables
and the report all read the store through this module, so a number means the same wherever it
is printed. A matrix run's tables are laid out by the spec it recorded (`MatrixLayout`), read
the same way by the runner and by the report.

It imports neither torch nor the attacks: a report is built where no model can load. The
row vocabulary other experiment kinds write (their attack names and scorings) and the files a
run directory holds beside its store are named here too, for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from robust.errors import RobustError
from robust.harness.defense_axis import ADAPTIVE_SUFFIX
from robust.harness.store import STORE_FILENAME, MetricRow, ResultStore

__all__ = [
    "ANYATTACK",
    "ANYATTACK_EXAMPLES_DIR",
    "ANYATTACK_ORACLE",
    "ANYATTACK_QUADRUPLE",
    "CACHE_DIRNAME",
    "CAPTION",
    "CONTROL_ATTACK",
    "DefenseRow",
    "HEADLINE_METRIC",
    "IMAGE_ONLY",
    "ITC",
    "KNN",
    "MODALITY_PARTS",
    "MatrixLayout",
    "MatrixTables",
    "ORACLE_STEP_METRIC",
    "PATCH_ATTACK",
    "RERANK",
    "TEXT_ONLY",
    "UNOCCLUDED",
    "ZERO_SHOT",
    "defense_table",
    "headline_scoring",
    "is_white_box",
    "matrix_tables",
    "part_metric",
    "resolved_victim",
    "seed_mean",
    "seed_spread",
    "stored_defense_table",
]

ITC: Final[str] = "itc"  # embedding similarity
RERANK: Final[str] = "rerank"  # ITC top-k re-scored by the victim's ITM head
HEADLINE_METRIC: Final[str] = "r1"

# What a run directory holds beside its store.
CACHE_DIRNAME: Final[str] = "cache"  # the adversarial-example cache of a matrix run
ANYATTACK_EXAMPLES_DIR: Final[str] = "anyattack_examples"
ANYATTACK_QUADRUPLE: Final[tuple[str, ...]] = ("clean", "noise", "adversarial", "target")

# The row vocabulary of patch and AnyAttack evaluations: attack labels and scorings.
PATCH_ATTACK: Final[str] = "advclip-patch"
CONTROL_ATTACK: Final[str] = "random-patch"
ANYATTACK: Final[str] = "anyattack"
ANYATTACK_ORACLE: Final[str] = "anyattack-oracle"  # `robust anyattack bound`'s rows
ORACLE_STEP_METRIC: Final[str] = "oracle_tr_r1_at_step_{}"  # the oracle after n of its steps
ZERO_SHOT: Final[str] = "zero-shot"
KNN: Final[str] = "knn"
CAPTION: Final[str] = "caption"
UNOCCLUDED: Final[str] = "_unoccluded"  # suffix of metrics over images the patch misses

# A multimodal attack's halves, scored on their own: its adversarial images with the clean
# captions, and the clean images with its adversarial captions (rows: `part_metric`).
IMAGE_ONLY: Final[str] = "image_only"
TEXT_ONLY: Final[str] = "text_only"
MODALITY_PARTS: Final[tuple[str, ...]] = (IMAGE_ONLY, TEXT_ONLY)


def part_metric(metric: str, part: str) -> str:
    """The row name of `metric` scored on one modality part (`tr_asr_r1_image_only`)."""
    return f"{metric}_{part}"


# -- the three rules -------------------------------------------------------------------------


def headline_scoring(cells: Iterable[tuple[str, str]], target: str) -> str:
    """The scoring `target`'s headline numbers use, from the (target, scoring) pairs of the
    rows at hand: "rerank" where the target has re-ranked rows, else "itc"."""
    return RERANK if any(name == target and scoring == RERANK for name, scoring in cells) else ITC


def seed_mean(values: Iterable[float]) -> float:
    """One cell's value averaged over its seeds: np.mean of the finite values, NaN if none
    (an ASR is NaN where no query was right on clean data)."""
    finite = [value for value in values if not np.isnan(value)]
    return float(np.mean(finite)) if finite else float("nan")


def seed_spread(values: Iterable[float]) -> float:
    """How much one cell's value varies over its seeds: the sample standard deviation of the
    finite values (ddof 1), NaN with fewer than two (one seed measures no spread)."""
    finite = [value for value in values if not np.isnan(value)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else float("nan")


def resolved_victim(spec: str) -> str:
    """The spec string a victim spec loads (`toy-albef` -> its `albef:` path); a spec string
    stands for itself. Only named entries are looked up, so no family module (and no torch)
    is imported."""
    from robust.victims.registry import KNOWN_VICTIMS

    text = spec.strip()
    entry = KNOWN_VICTIMS.get(text)
    return entry.spec if entry is not None else text


def is_white_box(source_spec: str, target_spec: str) -> bool:
    """Whether a (source, target) cell attacks the model it was crafted on: both victim specs
    load the same weights, whatever the spec's display names."""
    return resolved_victim(source_spec) == resolved_victim(target_spec)


# -- a matrix run's layout -------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixLayout:
    """What a matrix run's spec says about its tables: attack labels, sources and targets as
    (display name, victim spec), seeds in spec order, and the defenses axis if any."""

    dataset: str
    labels: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]
    targets: tuple[tuple[str, str], ...]
    seeds: tuple[int, ...]
    defenses: tuple[str, ...] = ()
    adaptive: bool = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> MatrixLayout:
        """From a spec as plain data (`ExperimentSpec.canonical()`, what a matrix run records)."""
        try:
            defenses = spec.get("defenses") or {}
            return cls(
                dataset=str(spec.get("dataset", "?")),
                labels=tuple(str(a.get("label") or a["name"]) for a in spec.get("attacks", [])),
                sources=tuple((str(r["name"]), str(r["spec"])) for r in spec.get("sources", [])),
                targets=tuple((str(r["name"]), str(r["spec"])) for r in spec.get("targets", [])),
                seeds=tuple(int(seed) for seed in spec.get("seeds", [0])),
                defenses=tuple(str(name) for name in defenses.get("names", [])),
                adaptive=bool(defenses.get("adaptive", False)),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise RobustError(
                f"a matrix spec record is malformed ({error!r}); re-run the matrix to record it"
            ) from None

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.sources)

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.targets)

    def white_box(self) -> np.ndarray:
        """`[sources, targets]`: true where the source and the target are the same model."""
        return np.array(
            [[is_white_box(s, t) for _, t in self.targets] for _, s in self.sources], dtype=bool
        )


# -- the transfer matrices -------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixTables:
    """A matrix run's headline: per attack label, R@1 matrices `[sources, targets]`.

    `tr_asr`/`ir_asr` use SGA's convention, `tr_drop`/`ir_drop` Co-Attack's, all as
    fractions, averaged over seeds, at each target's headline scoring ("rerank" for fusion
    targets, "itc" for CLIP); `clean_*` is the target's clean R@1 at the source's resolution.
    `tr_asr_spread`/`ir_asr_spread` are the ASRs' spread over seeds (`seed_spread`, NaN with
    one seed). `parts[part]` holds the (TR, IR) ASR matrices of each multimodal attack's
    modality parts (`MODALITY_PARTS`), seeds averaged; an attack without part rows has none.
    `white_box[s, t]` is true where source and target are the same model.
    """

    dataset: str
    split: str
    labels: tuple[str, ...]
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    seeds: tuple[int, ...]
    headline_scoring: dict[str, str]
    white_box: np.ndarray
    clean_tr_r1: np.ndarray
    clean_ir_r1: np.ndarray
    tr_asr: dict[str, np.ndarray]
    ir_asr: dict[str, np.ndarray]
    tr_drop: dict[str, np.ndarray]
    ir_drop: dict[str, np.ndarray]
    tr_asr_spread: dict[str, np.ndarray]
    ir_asr_spread: dict[str, np.ndarray]
    parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]

    def asr(self, label: str, source: str, target: str) -> tuple[float, float]:
        """(TR, IR) R@1 ASR (SGA convention) of one cell."""
        s, t = self.sources.index(source), self.targets.index(target)
        return float(self.tr_asr[label][s, t]), float(self.ir_asr[label][s, t])


_CellKey = tuple[str | None, str | None, int | None, str | None, str | None, str, str]


class _RunValues:
    """A run's metric rows on one dataset split, by (defense, attack, seed, source, target,
    scoring, metric), with each target's headline scoring chosen from its undefended rows."""

    def __init__(self, rows: Sequence[MetricRow], targets: Sequence[str]) -> None:
        self.values: dict[_CellKey, list[float]] = {}
        for row in rows:
            key = (row.defense, row.attack, row.seed, row.source, row.target, row.scoring)
            self.values.setdefault((*key, row.metric), []).append(row.value)
        cells = [(row.target or row.victim, row.scoring) for row in rows if row.defense is None]
        self.headline = {target: headline_scoring(cells, target) for target in targets}

    def mean(
        self,
        defense: str | None,
        label: str | None,
        seeds: Sequence[int],
        source: str,
        target: str,
        metric: str,
    ) -> float:
        """One cell at the target's headline scoring, averaged over `seeds` (clean cells,
        `label` None, have no seed)."""
        return seed_mean(self.seed_values(defense, label, seeds, source, target, metric))

    def seed_values(
        self,
        defense: str | None,
        label: str | None,
        seeds: Sequence[int],
        source: str,
        target: str,
        metric: str,
    ) -> list[float]:
        """One cell's stored values at the target's headline scoring, one per seed found."""
        scoring = self.headline[target]
        keys = [(defense, None, None)] if label is None else [(defense, label, s) for s in seeds]
        return [
            value
            for key in keys
            for value in self.values.get((*key, source, target, scoring, metric), [])
        ]

    def has_metric(self, label: str, metric: str) -> bool:
        """Whether any undefended row of attack `label` holds `metric`."""
        return any(key[0] is None and key[1] == label and key[-1] == metric for key in self.values)


def matrix_tables(
    store: ResultStore, run_id: int, layout: MatrixLayout, dataset: str, split: str
) -> MatrixTables:
    """A matrix run's headline matrices, read back from the store (all cells, so a resumed
    run reports the ones an earlier call computed)."""
    sources, targets = layout.source_names, layout.target_names
    run = _RunValues(store.metrics(run_id, dataset=dataset, split=split), targets)

    def grid(metric: str, label: str | None, reduce=seed_mean) -> np.ndarray:
        values = np.full((len(sources), len(targets)), np.nan)
        for s, source in enumerate(sources):
            for t, target in enumerate(targets):
                found = run.seed_values(None, label, layout.seeds, source, target, metric)
                values[s, t] = reduce(found)
        return values

    metric = HEADLINE_METRIC
    labels = layout.labels
    parts = {
        part: {
            label: (
                grid(part_metric(f"tr_asr_{metric}", part), label),
                grid(part_metric(f"ir_asr_{metric}", part), label),
            )
            for label in labels
            if run.has_metric(label, part_metric(f"tr_asr_{metric}", part))
        }
        for part in MODALITY_PARTS
    }
    return MatrixTables(
        dataset=dataset,
        split=split,
        labels=labels,
        sources=sources,
        targets=targets,
        seeds=layout.seeds,
        headline_scoring=run.headline,
        white_box=layout.white_box(),
        clean_tr_r1=grid(f"tr_{metric}", None),
        clean_ir_r1=grid(f"ir_{metric}", None),
        tr_asr={label: grid(f"tr_asr_{metric}", label) for label in labels},
        ir_asr={label: grid(f"ir_asr_{metric}", label) for label in labels},
        tr_drop={label: grid(f"tr_drop_{metric}", label) for label in labels},
        ir_drop={label: grid(f"ir_drop_{metric}", label) for label in labels},
        tr_asr_spread={label: grid(f"tr_asr_{metric}", label, seed_spread) for label in labels},
        ir_asr_spread={label: grid(f"ir_asr_{metric}", label, seed_spread) for label in labels},
        parts=parts,
    )


# -- the defense table -----------------------------------------------------------------------


@dataclass(frozen=True)
class DefenseRow:
    """One (defense, attack, source, target) at the target's headline scoring, R@1, seeds
    averaged: defended clean recall and its cost, and ASR undefended / non-adaptive /
    adaptive (SGA convention, fractions; NaN where not computed)."""

    defense: str
    attack: str
    source: str
    target: str
    scoring: str
    clean_tr_r1: float
    clean_ir_r1: float
    cost_tr_r1: float
    cost_ir_r1: float
    undefended_tr_asr: float
    undefended_ir_asr: float
    tr_asr: float
    ir_asr: float
    adaptive_tr_asr: float
    adaptive_ir_asr: float


def defense_table(
    store: ResultStore, run_id: int, layout: MatrixLayout, dataset: str, split: str
) -> tuple[DefenseRow, ...]:
    """The defense table of a matrix run with a defenses axis, read back from the store."""
    if not layout.defenses:
        return ()
    run = _RunValues(store.metrics(run_id, dataset=dataset, split=split), layout.target_names)
    seeds = layout.seeds
    r1 = HEADLINE_METRIC
    rows = []
    for defense in layout.defenses:
        adaptive = f"{defense}{ADAPTIVE_SUFFIX}"
        for target in layout.target_names:
            for source in layout.source_names:
                clean = {
                    metric: run.mean(defense, None, seeds, source, target, metric)
                    for metric in (f"tr_{r1}", f"ir_{r1}", f"tr_{r1}_cost", f"ir_{r1}_cost")
                }
                for label in layout.labels:
                    asr = {
                        (column, direction): run.mean(
                            column, label, seeds, source, target, f"{direction}_asr_{r1}"
                        )
                        for column in (None, defense, adaptive)
                        for direction in ("tr", "ir")
                    }
                    rows.append(
                        DefenseRow(
                            defense=defense,
                            attack=label,
                            source=source,
                            target=target,
                            scoring=run.headline[target],
                            clean_tr_r1=clean[f"tr_{r1}"],
                            clean_ir_r1=clean[f"ir_{r1}"],
                            cost_tr_r1=clean[f"tr_{r1}_cost"],
                            cost_ir_r1=clean[f"ir_{r1}_cost"],
                            undefended_tr_asr=asr[(None, "tr")],
                            undefended_ir_asr=asr[(None, "ir")],
                            tr_asr=asr[(defense, "tr")],
                            ir_asr=asr[(defense, "ir")],
                            adaptive_tr_asr=asr[(adaptive, "tr")],
                            adaptive_ir_asr=asr[(adaptive, "ir")],
                        )
                    )
    return tuple(rows)


def _run_split(store: ResultStore, run_id: int) -> tuple[str, str] | None:
    """The (dataset, split) a run's rows are on, or None for a run with no rows yet."""
    rows = store.metrics(run_id)
    return (rows[0].dataset, rows[0].split) if rows else None


def stored_defense_table(run_dir: Path | str) -> tuple[MatrixLayout, tuple[DefenseRow, ...]]:
    """The latest matrix run of `run_dir` with its defense table, read from the store alone."""
    run_dir = Path(run_dir)
    if not (run_dir / STORE_FILENAME).is_file():
        raise RobustError(f"{run_dir} holds no results store; run `robust matrix SPEC` first")
    with ResultStore.in_run_dir(run_dir, read_only=True) as store:
        matrix_runs = [
            run_id
            for run_id in store.run_ids()
            if store.run_info(run_id)["spec"].get("command") == "matrix"
        ]
        if not matrix_runs:
            raise RobustError(f"{run_dir} has no matrix run; run `robust matrix SPEC` first")
        run_id = matrix_runs[-1]
        layout = MatrixLayout.from_spec(store.run_info(run_id)["spec"].get("spec", {}))
        if not layout.defenses:
            raise RobustError(f"{run_dir}'s matrix has no defenses axis; add `defenses:` to it")
        where = _run_split(store, run_id)
        if where is None:
            raise RobustError(
                f"{run_dir}'s matrix run {run_id} has no results yet; run `robust matrix SPEC` "
                "again to finish it"
            )
        return layout, defense_table(store, run_id, layout, *where)
