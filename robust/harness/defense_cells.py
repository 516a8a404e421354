"""The matrix's defense cells: every target behind every defense, clean and attacked.

Runs after the undefended matrix (whose cache and clean rows it reuses). Per defense:

1. clean: each defended target on the clean images of every source geometry, stored with
   `defense = <defense>`, plus the defense's clean cost `<metric>_cost` (undefended minus
   defended clean value, so positive = what the defense costs);
2. non-adaptive: the undefended sources' cached adversarial examples evaluated on the
   defended target (`defense = <defense>`);
3. adaptive: each attack crafted again through the defended source (BPDA for
   non-differentiable defenses, EOT over randomized ones), cached under the derived source
   name, evaluated on the defended target (`defense = <defense>/adaptive`).

ASR of both is relative to the defended clean baseline, so it measures what the attack
breaks among the queries the defended model still gets right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robust.defenses import DefendedVictim
from robust.eval.retrieval import RetrievalResult
from robust.harness.evaluate import RERANK
from robust.harness.executors import CleanCell, CraftCell, EvalCell, Executor
from robust.harness.matrix import (
    HEADLINE_METRIC,
    CellRunner,
    CleanResult,
    MatrixWriter,
    attack_column,
    craft_request,
    valid_manifest,
)
from robust.harness.spec import ExperimentSpec
from robust.harness.store import MetricRow, ResultStore
from robust.progress import Progress

__all__ = ["DefenseRow", "defense_summary", "run_defense_cells"]


class _FreshDraws:
    """Runs a cell with the defended victim's evaluation draws restarted from its seed, so a
    cell's result does not depend on which cells ran before it in the same worker, and a
    clean and an adversarial evaluation see the same draws (adaptive draws are seeded by
    their input already)."""

    def __init__(self, runner: CellRunner) -> None:
        self.runner = runner

    def __call__(self, cell: CraftCell | CleanCell | EvalCell) -> Any:
        name = cell.source if isinstance(cell, CraftCell) else cell.target
        victim = self.runner.victim(name)
        if isinstance(victim, DefendedVictim):
            victim.reset_generator()
        return self.runner(cell)


class _DefendedWriter(MatrixWriter):
    """The matrix writer for derived defended names: plain victim names in the victim,
    source and target columns, the defense (and /adaptive) in the defense column."""

    def __init__(self, *args: Any, names: dict[str, tuple[str, str]]) -> None:
        super().__init__(*args)
        self.names = names

    def _keys(self, target: str, source: str, attack: str | None) -> dict[str, Any]:
        plain_target, defense = self.names[target]
        plain_source, source_defense = self.names.get(source, (source, defense))
        return {
            **super()._keys(plain_target, plain_source, attack),
            "defense": source_defense,
        }

    def write_defended_clean(
        self,
        target: str,
        sources: Sequence[str],
        results: dict[str, RetrievalResult],
        undefended: dict[str, dict[str, RetrievalResult]],
    ) -> None:
        """Defended clean rows and the clean cost, per sharing source, in one transaction."""
        rows = []
        for source in sources:
            keys = self._keys(target, source, None)
            self._ranks(keys, results)
            for scoring, result in results.items():
                baseline = undefended[source][scoring].metrics()
                for metric, value in result.metrics().items():
                    rows.append(MetricRow(metric=metric, value=value, scoring=scoring, **keys))
                    rows.append(
                        MetricRow(
                            metric=f"{metric}_cost",
                            value=baseline[metric] - value,
                            scoring=scoring,
                            **keys,
                        )
                    )
        self.store.write_metrics(self.run_id, rows)

    def has_clean(self, target: str, source: str) -> bool:
        keys = self._keys(target, source, None)
        wanted = ("tr_r1", "ir_r1", "tr_r1_cost", "ir_r1_cost")
        return self.store.has_metrics(self.run_id, **keys, metric_names=wanted)


def _derived_names(spec: ExperimentSpec) -> dict[str, tuple[str, str]]:
    """Every derived defended name -> (plain victim name, store defense column)."""
    axis = spec.defenses
    names: dict[str, tuple[str, str]] = {}
    for defense in axis.names:
        for target in spec.targets:
            name = axis.defended_name(target.name, defense, adaptive=False)
            names[name] = (target.name, axis.column(defense, adaptive=False))
        for source in spec.sources:
            name = axis.defended_name(source.name, defense, adaptive=True)
            names[name] = (source.name, axis.column(defense, adaptive=True))
    return names


def run_defense_cells(
    spec: ExperimentSpec,
    store: ResultStore,
    run_id: int,
    runner: CellRunner,
    executor: Executor,
    geometry: dict[str, tuple[int, str]],
    dataset: str,
    split: str,
    progress: Progress,
) -> dict[str, int]:
    """Compute and store every defense cell not yet in the store; returns counts."""
    axis = spec.defenses
    names = _derived_names(spec)
    plain = MatrixWriter(store, run_id, dataset, split, spec)
    writer = _DefendedWriter(store, run_id, dataset, split, spec, names=names)
    computed = {"defense_crafted": 0, "defense_clean": 0, "defense_evaluated": 0}
    run_cell = _FreshDraws(runner)

    adaptive_sources = {
        axis.defended_name(source.name, defense, adaptive=True): source.name
        for defense in (axis.names if axis.adaptive else [])
        for source in spec.sources
    }
    to_craft = []
    for name in adaptive_sources:
        for attack in spec.attacks:
            for seed in spec.seeds:
                cell = CraftCell(attack.label, name, seed)
                entry = runner.entry(attack.label, name, seed)
                if valid_manifest(entry, craft_request(spec, cell)) is None:
                    to_craft.append(cell)
    with progress.task("crafting through defenses", len(to_craft)) as task:
        for _ in executor.map(run_cell, to_craft):
            computed["defense_crafted"] += 1
            task.advance()

    work: list[CleanCell | EvalCell] = []
    for defense in axis.names:
        for target in spec.targets:
            defended = axis.defended_name(target.name, defense, adaptive=False)
            for key in dict.fromkeys(geometry[source.name] for source in spec.sources):
                sharing = [s.name for s in spec.sources if geometry[s.name] == key]
                if not all(writer.has_clean(defended, source) for source in sharing):
                    work.append(CleanCell(defended, key[0], key[1]))
            for source in spec.sources:
                crafted_on = [source.name]
                if axis.adaptive:
                    crafted_on.append(axis.defended_name(source.name, defense, adaptive=True))
                for name in crafted_on:
                    for attack in spec.attacks:
                        for seed in spec.seeds:
                            cell = EvalCell(attack.label, name, defended, seed)
                            if not writer.has_adversarial(cell):
                                work.append(cell)

    clean_cache: dict[tuple[str, tuple[int, str]], dict[str, RetrievalResult]] = {}
    with progress.task("evaluating defended targets", len(work)) as task:
        for result in executor.map(run_cell, work):
            cell = result.cell
            if isinstance(result, CleanResult):
                key = (cell.image_size, cell.resize_mode)
                sharing = [s.name for s in spec.sources if geometry[s.name] == key]
                target = names[cell.target][0]
                undefended = {source: plain.read_clean(target, source) for source in sharing}
                writer.write_defended_clean(cell.target, sharing, result.results, undefended)
                clean_cache[(cell.target, key)] = result.results
                computed["defense_clean"] += 1
            else:
                source = adaptive_sources.get(cell.source, cell.source)
                key = (cell.target, geometry[source])
                if key not in clean_cache:
                    clean_cache[key] = writer.read_clean(cell.target, source)
                writer.write_adversarial(cell, clean_cache[key], result.results)
                computed["defense_evaluated"] += 1
            task.advance()
    return computed


# -- the headline ------------------------------------------------------------------------


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


def defense_summary(
    store: ResultStore, run_id: int, spec: ExperimentSpec, dataset: str, split: str
) -> tuple[DefenseRow, ...]:
    """The defense table of a run, read back from the store."""
    axis = spec.defenses
    if axis is None:
        return ()
    values: dict[tuple[Any, ...], list[float]] = {}
    for row in store.metrics(run_id, dataset=dataset, split=split):
        key = (row.defense, row.attack, row.source, row.target, row.scoring, row.metric)
        values.setdefault(key, []).append(row.value)

    def value(
        defense: str | None, attack: str | None, source: str, target: str, scoring: str, metric: str
    ) -> float:
        """One metric of one cell, averaged over seeds (NaN where absent)."""
        found = [
            v
            for column in (
                [None]
                if attack is None
                else [attack_column(attack, s, spec.seeds) for s in spec.seeds]
            )
            for v in values.get((defense, column, source, target, scoring, metric), [])
            if not np.isnan(v)
        ]
        return float(np.mean(found)) if found else float("nan")

    rows = []
    r1 = HEADLINE_METRIC
    for defense in axis.names:
        adaptive = axis.column(defense, adaptive=True)
        for target in spec.targets:
            scoring = RERANK if _has_rerank(values, target.name) else "itc"
            for source in spec.sources:
                common = (source.name, target.name, scoring)
                for attack in spec.attacks:
                    label = attack.label
                    rows.append(
                        DefenseRow(
                            defense=defense,
                            attack=label,
                            source=source.name,
                            target=target.name,
                            scoring=scoring,
                            clean_tr_r1=value(defense, None, *common, f"tr_{r1}"),
                            clean_ir_r1=value(defense, None, *common, f"ir_{r1}"),
                            cost_tr_r1=value(defense, None, *common, f"tr_{r1}_cost"),
                            cost_ir_r1=value(defense, None, *common, f"ir_{r1}_cost"),
                            undefended_tr_asr=value(None, label, *common, f"tr_asr_{r1}"),
                            undefended_ir_asr=value(None, label, *common, f"ir_asr_{r1}"),
                            tr_asr=value(defense, label, *common, f"tr_asr_{r1}"),
                            ir_asr=value(defense, label, *common, f"ir_asr_{r1}"),
                            adaptive_tr_asr=value(adaptive, label, *common, f"tr_asr_{r1}"),
                            adaptive_ir_asr=value(adaptive, label, *common, f"ir_asr_{r1}"),
                        )
                    )
    return tuple(rows)


def _has_rerank(values: dict[tuple[Any, ...], list[float]], target: str) -> bool:
    return any(key[3] == target and key[4] == RERANK for key in values)


def stored_defense_summary(run_dir: Path | str) -> tuple[ExperimentSpec, tuple[DefenseRow, ...]]:
    """The latest matrix run of `run_dir` with its defense table, read from the store alone."""
    from robust.data import load_dataset
    from robust.errors import RobustError
    from robust.harness.evaluate import dataset_key
    from robust.harness.spec import parse_spec
    from robust.harness.store import STORE_FILENAME

    run_dir = Path(run_dir)
    if not (run_dir / STORE_FILENAME).is_file():
        raise RobustError(f"{run_dir} holds no results store; run `robust matrix SPEC` first")
    with ResultStore.in_run_dir(run_dir) as store:
        matrix_runs = [
            run_id
            for run_id in store.run_ids()
            if store.run_info(run_id)["spec"].get("command") == "matrix"
        ]
        if not matrix_runs:
            raise RobustError(f"{run_dir} has no matrix run; run `robust matrix SPEC` first")
        run_id = matrix_runs[-1]
        spec = parse_spec(store.run_info(run_id)["spec"]["spec"], origin=str(run_dir))
        if spec.defenses is None:
            raise RobustError(f"{run_dir}'s matrix has no defenses axis; add `defenses:` to it")
        dataset, split = dataset_key(load_dataset(spec.dataset, limit=spec.limit))
        return spec, defense_summary(store, run_id, spec, dataset, split)
