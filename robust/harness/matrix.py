"""The transfer-attack matrix: craft on every source, evaluate on every target, store it all.

The suite's main job, driven here: cells (`robust.harness.cells`) run on an executor, their
results go to the store through `robust.harness.writer`, the defense axis (when the spec has
one) through `robust.harness.defense_cells`, and the headline tables are read back through
`robust.harness.results`.

Resuming: one run per output directory, identified by the spec's fingerprint. A finished
cell (complete cache entry, or metrics present in the store) is never recomputed, so a
killed run started again finishes with exactly the results of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from robust.eval.retrieval import RetrievalResult
from robust.harness.cells import CellRunner, CleanResult, craft_request, valid_manifest
from robust.harness.defense_cells import run_defense_cells
from robust.harness.evaluate import dataset_key
from robust.harness.executors import (
    MODALITY_SPLIT,
    RETRIEVAL_ONLY,
    CleanCell,
    CraftCell,
    EvalCell,
    Executor,
    describe_executor,
    make_executor,
)
from robust.harness.results import (
    CACHE_DIRNAME,
    DefenseRow,
    MatrixLayout,
    MatrixTables,
    defense_table,
    matrix_tables,
)
from robust.harness.spec import ExperimentSpec, SpecError
from robust.harness.store import ResultStore
from robust.harness.writer import MatrixWriter
from robust.progress import Progress, ensure_progress

__all__ = ["MatrixResult", "run_matrix"]


# -- the driver ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixResult(MatrixTables):
    """The run's headline tables (`robust.harness.results.MatrixTables`) and what this call did.

    `computed` counts the cells this call computed (0 for a finished run); `executor`
    describes what ran them (the run's record keeps what started the run). `defenses` holds
    the defense table (`robust.harness.results.DefenseRow`) when the spec has a defenses axis.
    """

    run_dir: Path
    run_id: int
    fingerprint: str
    computed: dict[str, int] = field(default_factory=dict)
    executor: dict[str, Any] = field(default_factory=dict)
    defenses: tuple[DefenseRow, ...] = ()


def _resume_or_start(
    store: ResultStore, spec: ExperimentSpec, fingerprint: str, executor: dict[str, Any]
) -> int:
    """The run id of this spec in the store: resumed when the fingerprint matches."""
    run_ids = store.run_ids()
    for run_id in reversed(run_ids):
        if store.run_info(run_id)["spec"].get("fingerprint") == fingerprint:
            return run_id
    if run_ids:
        latest = store.run_info(run_ids[-1])["spec"]
        described = latest.get("name") or latest.get("command") or "another experiment"
        raise SpecError(
            f"{spec.run_dir} already holds results of a different experiment ({described!r}, "
            f"run {run_ids[-1]}); set a new output_dir (or --output-dir) for spec "
            f"{spec.name!r}, or delete that directory to start over"
        )
    record = {
        "command": "matrix",
        "name": spec.name,
        "fingerprint": fingerprint,
        "spec": spec.canonical(),
        "executor": executor,
        "device": spec.device,
        "precision": spec.precision,
    }
    seeds = {
        "attack_seeds": list(spec.seeds),
        "batch_generator": "torch.Generator().manual_seed(sha256(f'{seed}:{batch}')[:8])",
    }
    return store.start_run(record, seeds)


def run_matrix(
    spec: ExperimentSpec,
    *,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> MatrixResult:
    """Craft, evaluate and store the whole transfer matrix of `spec`, resuming if possible.

    Results go to `spec.run_dir/results.sqlite`, adversarial examples to
    `spec.run_dir/cache/`. Cells already finished (by an earlier, interrupted call) are
    skipped, so calling again after a kill completes the run with identical results.
    """
    from robust.data import load_dataset

    spec.check_files()  # a missing checkpoint or masked LM fails before the first cell
    progress = ensure_progress(progress)
    if executor is None:
        executor = make_executor(spec.executor, device=spec.device)
    executor_info = describe_executor(executor)
    run_dir = spec.run_dir
    fingerprint = spec.fingerprint()
    dataset = load_dataset(spec.dataset, limit=spec.limit)
    dataset_name, split = dataset_key(dataset)
    runner = CellRunner(spec, run_dir / CACHE_DIRNAME, dataset=dataset, progress=progress)
    computed = {"crafted": 0, "crafted_batches": 0, "clean": 0, "evaluated": 0}

    with ResultStore.in_run_dir(run_dir) as store:
        run_id = _resume_or_start(store, spec, fingerprint, executor_info)
        writer = MatrixWriter(store, run_id, dataset_name, split)

        # 1. adversarial examples, once per (attack, source, seed), grouped by source
        geometry: dict[str, tuple[int, str]] = {}
        to_craft: list[CraftCell] = []
        for source in spec.sources:
            for attack in spec.attacks:
                for seed in spec.seeds:
                    cell = CraftCell(attack.label, source.name, seed)
                    entry = runner.entry(cell.attack_label, cell.source, cell.seed)
                    manifest = valid_manifest(entry, craft_request(spec, cell))
                    if manifest is None:
                        to_craft.append(cell)
                    else:
                        geometry[source.name] = (manifest["image_size"], manifest["resize_mode"])
        with progress.task("crafting adversarial examples", len(to_craft)) as task:
            for crafted in executor.map(runner, to_craft):
                geometry[crafted.cell.source] = (crafted.image_size, crafted.resize_mode)
                computed["crafted"] += 1
                computed["crafted_batches"] += crafted.crafted_batches
                task.advance()

        # 2. clean baselines and adversarial evaluations, grouped by target; a multimodal
        # attack's cells also score its modality parts, from the clean cell's encodings
        multimodal = {attack.label: _is_multimodal(attack.name) for attack in spec.attacks}
        clean_tasks = MODALITY_SPLIT if any(multimodal.values()) else RETRIEVAL_ONLY
        work: list[CleanCell | EvalCell] = []
        for target in spec.targets:
            for key in dict.fromkeys(geometry[source.name] for source in spec.sources):
                sharing = [s.name for s in spec.sources if geometry[s.name] == key]
                if not all(writer.has_clean(target.name, source) for source in sharing):
                    work.append(CleanCell(target.name, key[0], key[1], clean_tasks))
            for source in spec.sources:
                for attack in spec.attacks:
                    tasks = MODALITY_SPLIT if multimodal[attack.label] else RETRIEVAL_ONLY
                    for seed in spec.seeds:
                        cell = EvalCell(attack.label, source.name, target.name, seed, tasks)
                        if not writer.has_adversarial(cell):
                            work.append(cell)
        clean_cache: dict[tuple[str, tuple[int, str]], dict[str, RetrievalResult]] = {}
        with progress.task("evaluating targets", len(work)) as task:
            for result in executor.map(runner, work):
                if isinstance(result, CleanResult):
                    key = (result.cell.image_size, result.cell.resize_mode)
                    sharing = [s.name for s in spec.sources if geometry[s.name] == key]
                    writer.write_clean(result.cell.target, sharing, result.results)
                    clean_cache[(result.cell.target, key)] = result.results
                    computed["clean"] += 1
                else:
                    cell = result.cell
                    key = (cell.target, geometry[cell.source])
                    if key not in clean_cache:
                        clean_cache[key] = writer.read_clean(cell.target, cell.source)
                    writer.write_adversarial(cell, clean_cache[key], result.results, result.parts)
                    computed["evaluated"] += 1
                task.advance()

        # 3. every target behind every defense: clean cost, non-adaptive and adaptive
        if spec.defenses is not None:
            computed.update(
                run_defense_cells(
                    spec, store, run_id, runner, executor, geometry, dataset_name, split, progress
                )
            )
        return _summarise(
            store, run_id, spec, fingerprint, dataset_name, split, computed, executor_info
        )


def _is_multimodal(attack_name: str) -> bool:
    """Whether the attack registered under `attack_name` perturbs images and captions."""
    from robust.attacks import attack_class

    return attack_class(attack_name).kind == "multimodal"


def _summarise(
    store: ResultStore,
    run_id: int,
    spec: ExperimentSpec,
    fingerprint: str,
    dataset: str,
    split: str,
    computed: dict[str, int],
    executor: dict[str, Any],
) -> MatrixResult:
    """The run's tables read back through `robust.harness.results`, from the spec as the run
    recorded it (so a resumed run reports all cells, and the report reads the same way)."""
    layout = MatrixLayout.from_spec(spec.canonical())
    tables = matrix_tables(store, run_id, layout, dataset, split)
    return MatrixResult(
        **{item.name: getattr(tables, item.name) for item in fields(MatrixTables)},
        run_dir=spec.run_dir,
        run_id=run_id,
        fingerprint=fingerprint,
        computed=dict(computed),
        executor=executor,
        defenses=defense_table(store, run_id, layout, dataset, split),
    )
