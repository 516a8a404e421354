"""Universal-patch runs: fit a patch to a file, paste it on a dataset, evaluate it everywhere.

`run_patch_evaluation` writes one run into `run_dir/results.sqlite`. Every row has
`victim` = `target` = the evaluated victim, `source` = the victim the patch was fitted on,
and `attack` = "advclip-patch" (the patch), "random-patch" (the control: uniform noise of
the same size and placement) or absent (clean). `scoring` names the task:

- "itc" / "rerank": retrieval R@1/5/10 (`tr_r1`, ...), and on patched rows both ASR
  conventions (`{tr,ir}_asr_r{K}` SGA, `{tr,ir}_drop_r{K}` Co-Attack); on world data the
  same again with the suffix `_unoccluded`, over the queries of images whose patch box
  overlaps no grid cell holding a captioned object (clean rows add `images_unoccluded`),
  so hiding a named object is not counted as the patch's adversarial effect;
- "zero-shot": `{task}_acc` per world label task (shape, color, background), and on
  patched rows `{task}_acc_drop` and `{task}_fooling_rate`;
- "knn": the same three metrics from a k-NN vote over clean features (leave-one-out);
- "caption": `bleu1..4`, `rouge_l`, `cider`, and on patched rows `{metric}_drop` and
  `caption_change_rate`.

Each target sees its clean images loaded at its own resolution (uint8) and the patch
pasted at the same area fraction and placement on those images, then quantised to uint8
again, so only the patch differs. The run goes through the matrix's machinery: pasting is a
`PatchCell` whose images land in the adversarial cache (`cache/`, one entry per patch and
target geometry), the clean and patched evaluations are `CleanCell`/`EvalCell`s computed by
the same `CellRunner`, and `MatrixWriter` writes the rows; this module only says which
cells to run and scores the label and caption tasks against the clean cell's outputs. The
run directory also keeps `patch/advclip-patch.png` and `patch/random-patch.png` (with
sidecars) and a few examples under `examples/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robust.attacks.patch_artifact import (
    PatchArtifact,
    load_patch,
    patch_boxes,
    patched_pixels,
    random_patch_like,
)
from robust.attacks.patch_geometry import PatchBoxes
from robust.data.dataset import CaptionDataset
from robust.data.images import load_images, to_uint8_array
from robust.data.world import POSITIONS, ZOO_WORLD
from robust.eval import downstream
from robust.eval.caption_metrics import caption_change_rate, caption_metrics
from robust.eval.retrieval import RetrievalResult, attack_success
from robust.harness.cells import CellRunner, CleanResult, EvalResult, ExperimentSettings
from robust.harness.evaluate import dataset_key
from robust.harness.executors import CleanCell, EvalCell, LocalExecutor, PatchCell, Tasks
from robust.harness.results import (
    CACHE_DIRNAME,
    CAPTION,
    CONTROL_ATTACK,
    PATCH_ATTACK,
    UNOCCLUDED,
)
from robust.harness.store import ResultStore
from robust.harness.writer import MatrixWriter
from robust.progress import Progress, ensure_progress
from robust.victims.registry import load_victim, resolve_spec

CAPTION_METRICS = ("bleu4", "rouge_l", "cider")


def train_patch(
    victim_name: str,
    dataset: CaptionDataset,
    out_png: Path | str,
    *,
    params: dict[str, Any] | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: Progress | None = None,
) -> PatchArtifact:
    """Fit an AdvCLIP patch on `victim_name` over `dataset` and save it as PNG + sidecar."""
    from robust.attacks.advclip import AdvCLIP

    victim = load_victim(victim_name, device=device)
    attack = AdvCLIP(victim, seed=seed, **(params or {}))
    artifact = attack.fit(dataset, progress=progress)
    artifact.save(out_png)
    return artifact


def occluded_by_patch(labels: Sequence[dict], boxes: PatchBoxes, image_size: int) -> np.ndarray:
    """Per world image: does its patch box overlap a grid cell that holds a captioned object?

    A patch there may hide what the captions name, so retrieval can fail without any
    adversarial effect; the `*_unoccluded` metrics keep only the images it leaves whole.
    """
    cell = image_size / len(POSITIONS)
    occluded = np.zeros(len(labels), dtype=bool)
    for index, label in enumerate(labels):
        top, left = float(boxes.top[index]), float(boxes.left[index])
        side = float(boxes.side[index])
        occluded[index] = any(
            top < (obj["row"] + 1) * cell
            and top + side > obj["row"] * cell
            and left < (obj["col"] + 1) * cell
            and left + side > obj["col"] * cell
            for obj in label["objects"]
        )
    return occluded


def _query_subset(result: RetrievalResult, images: np.ndarray, caption_image) -> RetrievalResult:
    """The same ranks, for image queries in `images` and caption queries of those images."""
    keep = np.zeros(len(result.tr_ranks), dtype=bool)
    keep[images] = True
    return RetrievalResult(
        tr_ranks=result.tr_ranks[keep], ir_ranks=result.ir_ranks[keep[np.asarray(caption_image)]]
    )


def dataset_pixels(
    dataset: CaptionDataset, size: int, mode: str, batch_size: int = 256
) -> np.ndarray:
    """Every image of `dataset` at (size, mode) as uint8 `[N,H,W,3]`."""
    chunks = []
    for start in range(0, dataset.num_images, batch_size):
        indices = range(start, min(start + batch_size, dataset.num_images))
        chunks.append(to_uint8_array(load_images(dataset.images, indices, size, mode)))
    return np.concatenate(chunks)


def apply_patch_files(
    patch: PatchArtifact | Path | str,
    dataset: CaptionDataset,
    out_dir: Path | str,
    *,
    image_size: int | None = None,
    resize_mode: str = "crop",
    seed: int = 0,
) -> list[Path]:
    """Write every dataset image with the patch pasted, as PNGs at `image_size`
    (default: the patch's source resolution). `patch` is a loaded patch or its PNG path."""
    artifact = patch if isinstance(patch, PatchArtifact) else load_patch(patch)
    size = artifact.source_image_size if image_size is None else int(image_size)
    patched = patched_pixels(artifact, dataset_pixels(dataset, size, resize_mode), seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for image_id, pixels in zip(dataset.image_ids, patched, strict=True):
        path = out_dir / f"{image_id}.png"
        Image.fromarray(pixels, mode="RGB").save(path, format="PNG")
        paths.append(path)
    return paths


@dataclass(frozen=True)
class PatchEvaluation:
    """One patch evaluation run: where it is stored and its metrics per table row."""

    run_dir: Path
    run_id: int
    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def table(self, scoring: str) -> list[dict[str, Any]]:
        """Rows of one task: target, attack (None = clean) and metrics."""
        return [row for row in self.rows if row["scoring"] == scoring]


def patch_scores(
    dataset: CaptionDataset,
    clean: CleanResult,
    patched: EvalResult | None = None,
    unoccluded: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """scoring -> metrics of one cell: the clean cell's own (`patched` None), or a patched
    cell's scored against the clean one (ASR, accuracy drop and fooling rate, caption drop).

    `unoccluded` (world data) lists the images the patch box leaves whole; retrieval is
    scored again over their queries under the `_unoccluded` suffix.
    """
    scores: dict[str, dict[str, float]] = {}
    for scoring, result in (clean if patched is None else patched).results.items():
        values = result.metrics()
        if patched is not None:
            values |= attack_success(clean.results[scoring], result)
        if unoccluded is not None:
            before = clean.results[scoring]
            values |= _unoccluded_metrics(dataset, before, result, patched, unoccluded)
        scores[scoring] = values
    clean_predictions = clean.outputs.predictions
    for task in downstream.WORLD_TASKS:
        sets = task.label_sets(dataset.labels) if clean_predictions else ()
        for scoring in (scoring for scoring, name in clean_predictions if name == task.name):
            before = clean_predictions[(scoring, task.name)]
            if patched is None:
                value = downstream.accuracy(before, task.classes, sets)
                scores.setdefault(scoring, {})[f"{task.name}_acc"] = value
            else:
                after = patched.outputs.predictions[(scoring, task.name)]
                scores.setdefault(scoring, {}).update(
                    downstream.attacked_metrics(task.name, before, after, task.classes, sets)
                )
    if clean.outputs.captions is not None:
        references = dataset.captions_of(range(dataset.num_images))
        before = caption_metrics(list(clean.outputs.captions), references)
        if patched is None:
            scores[CAPTION] = before
        else:
            generated = list(patched.outputs.captions or ())
            values = caption_metrics(generated, references)
            values |= {f"{m}_drop": before[m] - values[m] for m in before}
            values["caption_change_rate"] = caption_change_rate(
                list(clean.outputs.captions), generated
            )
            scores[CAPTION] = values
    return scores


def _unoccluded_metrics(
    dataset: CaptionDataset,
    clean: RetrievalResult,
    result: RetrievalResult,
    patched: EvalResult | None,
    unoccluded: np.ndarray,
) -> dict[str, float]:
    """Retrieval metrics (and ASR) over the queries of images the patch leaves whole."""
    subset = _query_subset(result, unoccluded, dataset.caption_image)
    values = subset.metrics()
    if patched is None:
        values["images"] = float(len(unoccluded))
    else:
        values |= attack_success(_query_subset(clean, unoccluded, dataset.caption_image), subset)
    return {f"{name}{UNOCCLUDED}": value for name, value in values.items()}


def _save_examples(
    run_dir: Path, target: str, variants: dict[str | None, np.ndarray], count: int
) -> None:
    from robust.harness.cache import slug

    folder = run_dir / "examples" / slug(target)
    folder.mkdir(parents=True, exist_ok=True)
    for attack, pixels in variants.items():
        for index in range(min(count, len(pixels))):
            name = f"{index:03d}-{attack or 'clean'}.png"
            Image.fromarray(pixels[index], mode="RGB").save(folder / name, format="PNG")


def run_patch_evaluation(
    patch: PatchArtifact | Path | str,
    targets: Sequence[str],
    dataset: CaptionDataset,
    run_dir: Path | str,
    *,
    control_seed: int = 0,
    placement_seed: int = 0,
    batch_size: int = 64,
    k_test: int | None = None,
    knn_k: int = 10,
    examples: int = 4,
    device: str = "cpu",
    progress: Progress | None = None,
) -> PatchEvaluation:
    """Evaluate a patch and its random-patch control on every target; store every metric.

    Per target: two `PatchCell`s paste the patch and the control at the target's geometry,
    a `CleanCell` and two `EvalCell`s evaluate it, and each is scored by `patch_scores`.
    """
    artifact = patch if isinstance(patch, PatchArtifact) else load_patch(patch)
    for name in targets:  # unknown names fail before any work
        resolve_spec(name)
    progress = ensure_progress(progress)
    control = random_patch_like(artifact, control_seed)
    run_dir = Path(run_dir)
    # each row's `seed`: the seed that made its patch (fitting, or drawing the control)
    patches = {
        PATCH_ATTACK: (artifact, artifact.save(run_dir / "patch" / f"{PATCH_ATTACK}.png")),
        CONTROL_ATTACK: (control, control.save(run_dir / "patch" / f"{CONTROL_ATTACK}.png")),
    }
    dataset_name, split = dataset_key(dataset)
    spec = {
        "command": "patch-eval",
        "patch": artifact.sidecar() | {"curve": len(artifact.curve)},
        "targets": list(targets),
        "dataset": dataset.name,
        "batch_size": batch_size,
        "k_test": k_test,
        "knn_k": knn_k,
    }
    seeds = {"patch": artifact.seed, "control": control_seed, "placement": placement_seed}
    settings = ExperimentSettings(
        dataset=dataset.name, eval_batch_size=batch_size, k_test=k_test, device=device
    )
    runner = CellRunner(settings, run_dir / CACHE_DIRNAME, dataset=dataset, progress=progress)
    executor = LocalExecutor()
    tasks = Tasks(labels=True, captions=True, knn_k=knn_k, where_supported=True)
    world_labels = bool(dataset.labels) and "objects" in dataset.labels[0]
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(spec, seeds)
        writer = MatrixWriter(store, run_id, dataset_name, split)
        evaluation = PatchEvaluation(run_dir, run_id, artifact.source)
        for name in targets:
            at = runner.geometry(name)
            pastes = [
                PatchCell(label, artifact.source, made.seed, str(path), placement_seed, *at)
                for label, (made, path) in patches.items()
            ]
            for _ in executor.map(runner, pastes):
                pass
            evaluations = [
                EvalCell(cell.attack_label, cell.source, name, cell.seed, tasks, at)
                for cell in pastes
            ]
            clean, *attacked = executor.map(runner, [CleanCell(name, *at, tasks), *evaluations])
            variants = {None: runner.clean_pixels(*at)}
            for cell in pastes:
                entry = runner.entry(cell.attack_label, cell.source, cell.seed, cell.at)
                variants[cell.attack_label] = entry.load().images
            _save_examples(run_dir, name, variants, examples)
            unoccluded = None
            if world_labels:
                boxes = patch_boxes(artifact, dataset.num_images, at[0], placement_seed)
                unoccluded = np.flatnonzero(~occluded_by_patch(dataset.labels, boxes, at[0]))
            for result in (clean, *attacked):
                patched = None if isinstance(result, CleanResult) else result
                label = None if patched is None else patched.cell.attack_label
                source = None if patched is None else patched.cell.source
                seed = None if patched is None else patched.cell.seed
                scores = patch_scores(dataset, clean, patched, unoccluded)
                writer.write_scores(name, source, label, seed, scores, result.results)
                evaluation.rows.extend(
                    {"target": name, "attack": label, "scoring": scoring, **values}
                    for scoring, values in scores.items()
                )
    return evaluation


# The demo-sized run: fit on toy-clip-vit, evaluate on the shipped toys (about a minute on
# one idle core). `robust demo` calls `run_patch_demo`.
DEMO_SOURCE = "toy-clip-vit"
DEMO_TARGETS: tuple[str, ...] = ("toy-clip-vit", "toy-clip-rn", "toy-blip-cap")
DEMO_FIT = (f"{ZOO_WORLD}:train", 512)
DEMO_EVAL = (f"{ZOO_WORLD}:test-1k", 100)
DEMO_PARAMS: dict[str, Any] = {"steps": 100, "batch_size": 32, "area_fraction": 0.03}


def run_patch_demo(run_dir: Path | str, *, progress: Progress | None = None) -> PatchEvaluation:
    """Fit the demo patch and evaluate it (with its random-patch control) on the toys."""
    from robust.data import load_dataset

    run_dir = Path(run_dir)
    fit_name, fit_limit = DEMO_FIT
    eval_name, eval_limit = DEMO_EVAL
    artifact = train_patch(
        DEMO_SOURCE,
        load_dataset(fit_name, limit=fit_limit),
        run_dir / "trained" / "patch.png",
        params=DEMO_PARAMS,
        progress=progress,
    )
    return run_patch_evaluation(
        artifact,
        DEMO_TARGETS,
        load_dataset(eval_name, limit=eval_limit),
        run_dir,
        progress=progress,
    )
