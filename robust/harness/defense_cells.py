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
breaks among the queries the defended model still gets right. The defense table these rows
make is read back by `robust.harness.results.defense_table`.
"""

from __future__ import annotations

from typing import Any

from robust.defenses import DefendedVictim
from robust.eval.retrieval import RetrievalResult
from robust.harness.cells import CellRunner, CleanResult, craft_request, valid_manifest
from robust.harness.executors import CleanCell, CraftCell, EvalCell, Executor
from robust.harness.spec import ExperimentSpec
from robust.harness.store import ResultStore
from robust.harness.writer import MatrixWriter
from robust.progress import Progress

__all__ = ["run_defense_cells"]


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
    plain = MatrixWriter(store, run_id, dataset, split)
    writer = MatrixWriter(store, run_id, dataset, split, defended=names)
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
                writer.write_clean(cell.target, sharing, result.results, undefended)
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
