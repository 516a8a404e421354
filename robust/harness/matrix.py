"""The transfer-attack matrix: craft on every source, evaluate on every target, store it all.

The suite's main job. For each (attack, source, seed) adversarial examples are crafted once
at the source's resolution, quantised to uint8 and cached as PNGs; every target then sees
them through `load_images` at its own size and resize mode. The clean baseline of a
(source, target) pair takes exactly the same path (clean images loaded at the source's
resolution, quantised, then resized for the target), so preprocessing shift is never
counted as attack success.

Resuming: one run per output directory, identified by the spec's fingerprint. A finished
cell (complete cache entry, or metrics present in the store) is never recomputed, so a
killed run started again finishes with exactly the results of an uninterrupted one.

Store layout (the row dialect of `robust.harness.store`): every row has `victim` = `target` =
the evaluated target, `source` = the victim whose resolution (and, for adversarial rows,
gradients) was used. Clean rows have no attack and no seed. Adversarial rows carry `attack` =
the attack label, `seed` = the attack seed, R@K on the adversarial data, and both ASR
conventions (`{tr,ir}_asr_r{K}` SGA, `{tr,ir}_drop_r{K}` Co-Attack). Fusion targets get "itc"
and "rerank" rows; `robust.harness.results` reads them back into the headline tables.

Universal attacks (AdvCLIP) are fitted once per (attack, source, seed) on their own fitting
data, their artifact kept in the cache entry, then applied to every dataset image at the
source's resolution and cached like any other adversarial example.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch

from robust.data.dataset import ArrayImages, CaptionDataset
from robust.errors import RobustError
from robust.eval.retrieval import RetrievalResult, attack_success
from robust.harness.cache import AdversarialCache, CacheEntry, jsonable
from robust.harness.evaluate import dataset_key, retrieval_results
from robust.harness.executors import (
    CleanCell,
    CraftCell,
    CraftShard,
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
from robust.harness.store import ABSENT, MetricRow, ResultStore
from robust.precision import precision_scope, prepare_model
from robust.progress import NullProgress, Progress, ensure_progress

if TYPE_CHECKING:
    from robust.attacks.base import UniversalAttack

__all__ = [
    "CellRunner",
    "CleanResult",
    "CraftResult",
    "EvalResult",
    "MatrixResult",
    "adversarial_dataset",
    "batch_seed",
    "run_matrix",
]

CLEAN_METRICS: Final[tuple[str, ...]] = ("tr_r1", "ir_r1")


def batch_seed(seed: int, batch_index: int) -> int:
    """The generator seed of one attack batch: fixed by (seed, batch), not by run order."""
    digest = hashlib.sha256(f"{int(seed)}:{int(batch_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# -- results of cells ------------------------------------------------------------------------


@dataclass(frozen=True)
class CraftResult:
    """A cached entry: the geometry its images were crafted at, and batches computed now."""

    cell: CraftCell
    image_size: int
    resize_mode: str
    num_images: int
    crafted_batches: int


@dataclass(frozen=True)
class CleanResult:
    """A target's retrieval on clean images crossed from one (size, mode), per scoring."""

    cell: CleanCell
    results: dict[str, RetrievalResult]


@dataclass(frozen=True)
class EvalResult:
    """A target's retrieval on one cache entry's adversarial examples, per scoring."""

    cell: EvalCell
    results: dict[str, RetrievalResult]


# -- the worker side -------------------------------------------------------------------------


def adversarial_dataset(
    dataset: CaptionDataset, images: np.ndarray, texts: Sequence[Sequence[str]]
) -> CaptionDataset:
    """`dataset` with its images replaced by uint8 `images` and captions by `texts`.

    `texts[i]` lists image i's captions in the order of `dataset.image_captions[i]`, so the
    caption-to-image mapping, and with it the ground truth, is unchanged.
    """
    if images.shape[0] != dataset.num_images or len(texts) != dataset.num_images:
        raise RobustError(
            f"adversarial examples cover {images.shape[0]} images / {len(texts)} caption "
            f"groups but {dataset.name} has {dataset.num_images} images; delete the cache "
            "entry to recraft it"
        )
    captions = list(dataset.captions)
    for image_index, caption_indices in enumerate(dataset.image_captions):
        group = texts[image_index]
        if len(group) != len(caption_indices):
            raise RobustError(
                f"image {image_index} has {len(group)} adversarial captions but "
                f"{len(caption_indices)} clean ones; an attack must return one caption per "
                "caption"
            )
        for caption_index, text in zip(caption_indices, group, strict=True):
            captions[caption_index] = str(text)
    return replace(dataset, images=ArrayImages(images), captions=tuple(captions))


class CellRunner:
    """Computes any cell; lives in a worker (in-process for LocalExecutor).

    It loads the dataset and victims lazily and keeps one victim at a time, so cells
    ordered by victim load each model once. It never touches the SQLite store.
    """

    def __init__(
        self,
        spec: ExperimentSpec,
        cache_root: Path,
        *,
        dataset: CaptionDataset | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.spec = spec
        self.cache = AdversarialCache(cache_root)
        self.progress: Progress = ensure_progress(progress)
        self._dataset = dataset
        self._victim: tuple[str, Any] | None = None
        self._clean_pixels: dict[tuple[int, str], np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Ship only the spec and paths to another process; models and data reload there."""
        return {"spec": self.spec, "cache": self.cache}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec = state["spec"]
        self.cache = state["cache"]
        self.progress = NullProgress()
        self._dataset = None
        self._victim = None
        self._clean_pixels = {}

    def __call__(self, cell: CraftCell | CraftShard | CleanCell | EvalCell) -> Any:
        with precision_scope(self.spec.precision, self.spec.device):
            if isinstance(cell, CraftCell):
                return self.craft(cell)
            if isinstance(cell, CraftShard):
                return self.craft(cell.cell, batches=frozenset(cell.batches))
            if isinstance(cell, CleanCell):
                return self.clean(cell)
            if isinstance(cell, EvalCell):
                return self.evaluate(cell)
        raise TypeError(f"unknown cell {cell!r}")

    def split(self, cell: Any, parts: int) -> list[CraftShard] | None:
        """`cell` as up to `parts` shards of whole batches, or None where it cannot be split.

        Only crafting splits: retrieval ranks every query against the whole gallery.
        """
        if not isinstance(cell, CraftCell) or parts < 2:
            return None
        num_batches = -(-self.dataset.num_images // self.spec.batch_size)
        shards = [tuple(range(start, num_batches, parts)) for start in range(parts)]
        shards = [batches for batches in shards if batches]
        return [CraftShard(cell, batches) for batches in shards] if len(shards) > 1 else None

    def join(self, cell: CraftCell, shards: Sequence[CraftResult]) -> CraftResult:
        """Finish a cell whose shards all returned: what is left is writing the manifest."""
        finished = self(cell)
        crafted = finished.crafted_batches + sum(shard.crafted_batches for shard in shards)
        return replace(finished, crafted_batches=crafted)

    # -- shared state ----------------------------------------------------------------------

    @property
    def dataset(self) -> CaptionDataset:
        if self._dataset is None:
            from robust.data import load_dataset

            self._dataset = load_dataset(self.spec.dataset, limit=self.spec.limit)
        return self._dataset

    def victim(self, name: str) -> Any:
        """The named source/target, loading it (and freeing the previous one) if needed."""
        if self._victim is not None and self._victim[0] == name:
            return self._victim[1]
        from robust.victims.registry import load_victim

        self._victim = None
        victim = load_victim(self.spec.victim(name).load_arg(), device=self.spec.device)
        self._victim = (name, prepare_model(victim, self.spec.precision))
        return victim

    def clean_pixels(self, image_size: int, resize_mode: str) -> np.ndarray:
        """Clean images as a source at (size, mode) receives them, quantised to uint8."""
        key = (int(image_size), str(resize_mode))
        if key not in self._clean_pixels:
            from robust.data.images import load_images, to_uint8_array

            dataset = self.dataset
            chunks = []
            step = max(self.spec.eval_batch_size, 1)
            for start in range(0, dataset.num_images, step):
                indices = range(start, min(start + step, dataset.num_images))
                pixels = load_images(dataset.images, indices, key[0], key[1])
                chunks.append(to_uint8_array(pixels))
            self._clean_pixels[key] = np.concatenate(chunks)
        return self._clean_pixels[key]

    def entry(self, attack_label: str, source: str, seed: int) -> CacheEntry:
        return self.cache.entry(attack_label, source, seed)

    # -- cells -----------------------------------------------------------------------------

    def craft(self, cell: CraftCell, *, batches: frozenset[int] | None = None) -> CraftResult:
        """Craft one cache entry batch by batch; finished batches survive a kill.

        With `batches`, craft only those (one shard of the cell) and leave the entry
        unfinished: the cell's own call, once every shard is done, writes the manifest.
        """
        from robust.attacks import AttackBatch, UniversalAttack, build_attack
        from robust.data.images import load_images, to_uint8_array

        entry = self.entry(cell.attack_label, cell.source, cell.seed)
        request = craft_request(self.spec, cell)
        manifest = valid_manifest(entry, request)
        if manifest is not None:
            return CraftResult(
                cell, manifest["image_size"], manifest["resize_mode"], manifest["num_images"], 0
            )
        dataset = self.dataset
        source = self.victim(cell.source)
        attack_spec = self.spec.attack(cell.attack_label)
        extra = {"mlm": attack_spec.mlm} if attack_spec.mlm else {}
        attack = build_attack(
            attack_spec.name, source, dict(attack_spec.params), seed=cell.seed, **extra
        )
        config = jsonable(attack.config())
        batch_size = self.spec.batch_size
        plan = {
            "request": request,
            "attack": attack_spec.name,
            "config": config,
            "batch_size": batch_size,
            "dataset": dataset.name,
            "num_images": dataset.num_images,
            "image_size": source.image_size,
            "resize_mode": source.resize_mode,
            "generator": "torch.Generator().manual_seed(sha256('seed:batch')[:8])",
        }
        done = entry.begin(plan)
        if isinstance(attack, UniversalAttack):
            self._fit_universal(attack, entry.path)
        starts = range(0, dataset.num_images, batch_size)
        crafted = 0
        description = f"crafting {cell.attack_label} on {cell.source} (seed {cell.seed})"
        with self.progress.task(description, dataset.num_images) as task:
            for batch_index, start in enumerate(starts):
                indices = list(range(start, min(start + batch_size, dataset.num_images)))
                if batch_index in done or (batches is not None and batch_index not in batches):
                    task.advance(len(indices))
                    continue
                images = load_images(
                    dataset.images, indices, source.image_size, source.resize_mode
                ).to(source.device)
                texts = dataset.captions_of(indices)
                generator = torch.Generator().manual_seed(batch_seed(cell.seed, batch_index))
                batch = AttackBatch(images, tuple(tuple(group) for group in texts))
                adversarial = attack.craft(batch, generator)
                if tuple(adversarial.images.shape) != tuple(images.shape):
                    raise RobustError(
                        f"attack {attack_spec.name!r} returned images shaped "
                        f"{tuple(adversarial.images.shape)} for {tuple(images.shape)}; it must "
                        "keep the source resolution"
                    )
                entry.write_batch(
                    batch_index, indices, to_uint8_array(adversarial.images), adversarial.texts
                )
                crafted += 1
                task.advance(len(indices))
        if batches is not None:
            return CraftResult(
                cell, source.image_size, source.resize_mode, dataset.num_images, crafted
            )
        info = {
            "attack": attack_spec.name,
            "dataset": dataset.name,
            "image_size": source.image_size,
            "resize_mode": source.resize_mode,
        }
        entry.finish(config, info)
        return CraftResult(cell, source.image_size, source.resize_mode, dataset.num_images, crafted)

    def _fit_universal(self, attack: UniversalAttack, folder: Path) -> None:
        """Fit a universal attack once per cache entry; its artifact is kept in the entry, so
        a resumed craft reuses it and every target sees the same patch."""
        if not attack.load_artifact(folder):
            attack.fit(attack.fit_data(), progress=self.progress)
            attack.save_artifact(folder)

    def clean(self, cell: CleanCell) -> CleanResult:
        """The target on clean images crossed from (size, mode): the pair's fair baseline."""
        target = self.victim(cell.target)
        pixels = self.clean_pixels(cell.image_size, cell.resize_mode)
        data = replace(self.dataset, images=ArrayImages(pixels))
        return CleanResult(cell, self._retrieve(target, data))

    def evaluate(self, cell: EvalCell) -> EvalResult:
        """The target on one cache entry's adversarial images and captions."""
        target = self.victim(cell.target)
        examples = self.entry(cell.attack_label, cell.source, cell.seed).load()
        data = adversarial_dataset(self.dataset, examples.images, examples.texts)
        return EvalResult(cell, self._retrieve(target, data))

    def _retrieve(self, target: Any, data: CaptionDataset) -> dict[str, RetrievalResult]:
        return retrieval_results(
            target,
            data,
            batch_size=self.spec.eval_batch_size,
            k_test=self.spec.k_test,
            progress=self.progress,
        )


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


def valid_manifest(entry: CacheEntry, request: dict[str, Any]) -> dict[str, Any] | None:
    """The entry's manifest if it is complete and was crafted for `request`, else None."""
    if not entry.is_complete():
        return None
    manifest = entry.manifest()
    return manifest if manifest.get("plan", {}).get("request") == request else None


def craft_request(spec: ExperimentSpec, cell: CraftCell) -> dict[str, Any]:
    """What a cache entry was asked to contain, so a stale entry is never reused."""
    attack = spec.attack(cell.attack_label)
    request = {
        "attack": attack.name,
        "params": attack.params,
        "mlm": attack.mlm,
        "source": spec.victim(cell.source).model_dump(),
        "seed": cell.seed,
        "batch_size": spec.batch_size,
        "dataset": spec.dataset,
        "limit": spec.limit,
    }
    if spec.precision != "fp32":  # fp32 entries crafted before the field existed stay valid
        request["precision"] = spec.precision
    return jsonable(request)


class MatrixWriter:
    """The driver's side of the store: completeness checks, row writes, clean look-ups.

    Cells name victims as the runner knows them; `defended` maps the defense axis's derived
    names (`robust.harness.defense_axis`) to (plain victim name, `defense` column), so a
    defended cell's rows carry the plain names and the defense in its own column. A defended
    target's clean rows also carry the defense's clean cost (`<metric>_cost`).
    """

    def __init__(
        self,
        store: ResultStore,
        run_id: int,
        dataset: str,
        split: str,
        *,
        defended: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.dataset = dataset
        self.split = split
        self.defended = dict(defended or {})

    def _keys(
        self, target: str, source: str, label: str | None = None, seed: int | None = None
    ) -> dict[str, Any]:
        """Row keys of a cell; a source crafted through a defense sets the defense column."""
        plain_target, defense = self.defended.get(target, (target, None))
        plain_source, source_defense = self.defended.get(source, (source, defense))
        return {
            "victim": plain_target,
            "dataset": self.dataset,
            "split": self.split,
            "attack": label,
            "seed": seed,
            "source": plain_source,
            "target": plain_target,
            "defense": source_defense,
        }

    def _cell_keys(self, cell: EvalCell) -> dict[str, Any]:
        return self._keys(cell.target, cell.source, cell.attack_label, cell.seed)

    def _clean_metric_names(self, target: str) -> tuple[str, ...]:
        if target not in self.defended:
            return CLEAN_METRICS
        return (*CLEAN_METRICS, *(f"{metric}_cost" for metric in CLEAN_METRICS))

    def has_clean(self, target: str, source: str) -> bool:
        keys = self._keys(target, source)
        wanted = self._clean_metric_names(target)
        return self.store.has_metrics(self.run_id, **keys, metric_names=wanted)

    def has_adversarial(self, cell: EvalCell) -> bool:
        keys = self._cell_keys(cell)
        return self.store.has_metrics(self.run_id, **keys, metric_names=("tr_asr_r1", "ir_asr_r1"))

    def _ranks(self, keys: dict[str, Any], results: dict[str, RetrievalResult]) -> None:
        for scoring, result in results.items():
            for direction, ranks in (("tr", result.tr_ranks), ("ir", result.ir_ranks)):
                self.store.write_query_ranks(
                    self.run_id, direction=direction, ranks=ranks, scoring=scoring, **keys
                )

    def write_clean(
        self,
        target: str,
        sources: Sequence[str],
        results: dict[str, RetrievalResult],
        undefended: Mapping[str, dict[str, RetrievalResult]] | None = None,
    ) -> None:
        """Clean rows for every source sharing this preprocessing, in one transaction; with
        `undefended` (a defended target's undefended baseline per source), each metric's
        clean cost too (undefended minus defended, so positive = what the defense costs)."""
        rows = []
        for source in sources:
            keys = self._keys(target, source)
            self._ranks(keys, results)
            for scoring, result in results.items():
                baseline = None if undefended is None else undefended[source][scoring].metrics()
                for metric, value in result.metrics().items():
                    rows.append(MetricRow(metric=metric, value=value, scoring=scoring, **keys))
                    if baseline is not None:
                        cost = baseline[metric] - value
                        rows.append(
                            MetricRow(metric=f"{metric}_cost", value=cost, scoring=scoring, **keys)
                        )
        self.store.write_metrics(self.run_id, rows)

    def read_clean(self, target: str, source: str) -> dict[str, RetrievalResult]:
        """A stored clean baseline, rebuilt from its per-query ranks."""
        keys = self._keys(target, source)
        found = self.store.metrics(
            self.run_id,
            **{**keys, "attack": ABSENT, "seed": ABSENT, "defense": keys["defense"] or ABSENT},
            metric="tr_r1",
        )
        results = {}
        for row in found:
            ranks = {
                direction: self.store.query_ranks(
                    self.run_id, direction=direction, scoring=row.scoring, **keys
                )
                for direction in ("tr", "ir")
            }
            results[row.scoring] = RetrievalResult(tr_ranks=ranks["tr"], ir_ranks=ranks["ir"])
        return results

    def write_adversarial(
        self,
        cell: EvalCell,
        clean: dict[str, RetrievalResult],
        results: dict[str, RetrievalResult],
    ) -> None:
        """R@K on adversarial data and both ASR conventions; the metrics write is the commit."""
        keys = self._cell_keys(cell)
        self._ranks(keys, results)
        rows = []
        for scoring, result in results.items():
            if scoring not in clean:
                raise RobustError(
                    f"no clean {scoring} baseline for {cell.target} at {cell.source}'s "
                    "resolution; delete the run directory and start again"
                )
            values = {**result.metrics(), **attack_success(clean[scoring], result)}
            rows.extend(
                MetricRow(metric=metric, value=value, scoring=scoring, **keys)
                for metric, value in values.items()
            )
        self.store.write_metrics(self.run_id, rows)


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

        # 2. clean baselines and adversarial evaluations, grouped by target
        work: list[CleanCell | EvalCell] = []
        for target in spec.targets:
            for key in dict.fromkeys(geometry[source.name] for source in spec.sources):
                sharing = [s.name for s in spec.sources if geometry[s.name] == key]
                if not all(writer.has_clean(target.name, source) for source in sharing):
                    work.append(CleanCell(target.name, key[0], key[1]))
            for source in spec.sources:
                for attack in spec.attacks:
                    for seed in spec.seeds:
                        cell = EvalCell(attack.label, source.name, target.name, seed)
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
                    writer.write_adversarial(cell, clean_cache[key], result.results)
                    computed["evaluated"] += 1
                task.advance()

        # 3. every target behind every defense: clean cost, non-adaptive and adaptive
        if spec.defenses is not None:
            from robust.harness.defense_cells import run_defense_cells

            computed.update(
                run_defense_cells(
                    spec, store, run_id, runner, executor, geometry, dataset_name, split, progress
                )
            )
        return _summarise(
            store, run_id, spec, fingerprint, dataset_name, split, computed, executor_info
        )


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
