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
again, so only the patch differs. The run directory also keeps `patch/advclip-patch.png`
and `patch/random-patch.png` (with sidecars) and a few examples under `examples/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from robust.attacks.patch_artifact import PatchArtifact, load_patch, random_patch_like
from robust.attacks.patch_geometry import PatchBoxes, apply_patch
from robust.data.dataset import ArrayImages, CaptionDataset
from robust.data.images import from_uint8_array, load_images, to_uint8_array
from robust.data.world import POSITIONS
from robust.eval import downstream
from robust.eval.caption_metrics import caption_change_rate, caption_metrics
from robust.eval.retrieval import RetrievalResult, attack_success
from robust.harness.evaluate import dataset_key, retrieval_results
from robust.harness.results import (
    CAPTION,
    CONTROL_ATTACK,
    KNN,
    PATCH_ATTACK,
    UNOCCLUDED,
    ZERO_SHOT,
)
from robust.harness.store import MetricRow, ResultStore
from robust.progress import Progress, ensure_progress
from robust.victims.base import Victim
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


def patch_boxes(
    artifact: PatchArtifact, count: int, image_size: int, seed: int, batch_size: int = 256
) -> PatchBoxes:
    """Where `patched_pixels` pastes the patch on `count` images (seeded, drawn per batch)."""
    generator = torch.Generator().manual_seed(int(seed))
    parts = [
        artifact.boxes(min(batch_size, count - start), image_size, generator)
        for start in range(0, count, batch_size)
    ]
    return PatchBoxes(*(torch.cat([getattr(p, f) for p in parts]) for f in ("top", "left", "side")))


def patched_pixels(
    artifact: PatchArtifact, pixels: np.ndarray, seed: int, batch_size: int = 256
) -> np.ndarray:
    """uint8 images `[N,H,W,3]` with the patch pasted at the artifact's placement (seeded)."""
    boxes = patch_boxes(artifact, len(pixels), int(pixels.shape[2]), seed, batch_size)
    chunks = []
    for start in range(0, len(pixels), batch_size):
        images = from_uint8_array(pixels[start : start + batch_size])
        chunk = slice(start, start + batch_size)
        chunk_boxes = PatchBoxes(boxes.top[chunk], boxes.left[chunk], boxes.side[chunk])
        chunks.append(to_uint8_array(apply_patch(images, artifact.patch, chunk_boxes)))
    return np.concatenate(chunks)


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


def _features(victim: Victim, pixels: np.ndarray, batch_size: int) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch_size):
            images = from_uint8_array(pixels[start : start + batch_size]).to(victim.device)
            rows.append(victim.encode_image(images).float().cpu())
    return torch.cat(rows)


class _TargetEvaluation:
    """All tasks of one target on clean and patched copies of a dataset."""

    def __init__(
        self,
        victim: Victim,
        dataset: CaptionDataset,
        variants: dict[str | None, np.ndarray],
        *,
        batch_size: int,
        k_test: int | None,
        knn_k: int,
        progress: Progress,
        occluded: np.ndarray | None = None,
    ) -> None:
        self.victim = victim
        self.data = {
            attack: replace(dataset, images=ArrayImages(pixels))
            for attack, pixels in variants.items()
        }
        self.batch_size = batch_size
        self.k_test = k_test
        self.knn_k = knn_k
        self.progress = progress
        self.labels = dataset.labels
        self.caption_image = dataset.caption_image
        self.references = dataset.captions_of(range(dataset.num_images))
        self.ranks: dict[str | None, dict] = {}
        self.unoccluded = None if occluded is None else np.flatnonzero(~occluded)

    def metrics(self) -> dict[tuple[str | None, str], dict[str, float]]:
        """(attack, scoring) -> metrics for every task this victim supports."""
        out: dict[tuple[str | None, str], dict[str, float]] = {}
        capabilities = self.victim.capabilities
        if "itc" in capabilities:
            out |= self._retrieval()
        if self.labels and "objects" in self.labels[0]:
            out |= self._classification("itc" in capabilities)
        if "caption" in capabilities:
            out |= self._captions()
        return out

    def _retrieval(self) -> dict[tuple[str | None, str], dict[str, float]]:
        results = {
            attack: retrieval_results(
                self.victim,
                data,
                batch_size=self.batch_size,
                k_test=self.k_test,
                progress=self.progress,
            )
            for attack, data in self.data.items()
        }
        self.ranks = results
        out = {}
        for attack, by_scoring in results.items():
            for scoring, result in by_scoring.items():
                values = result.metrics()
                if attack is not None:
                    values |= attack_success(results[None][scoring], result)
                if self.unoccluded is not None:
                    values |= self._unoccluded_metrics(results[None][scoring], result, attack)
                out[(attack, scoring)] = values
        return out

    def _unoccluded_metrics(
        self, clean: RetrievalResult, result: RetrievalResult, attack: str | None
    ) -> dict[str, float]:
        """Retrieval metrics (and ASR) over the queries of images the patch leaves whole."""
        subset = _query_subset(result, self.unoccluded, self.caption_image)
        values = subset.metrics()
        if attack is None:
            values["images"] = float(len(self.unoccluded))
        else:
            clean_subset = _query_subset(clean, self.unoccluded, self.caption_image)
            values |= attack_success(clean_subset, subset)
        return {f"{name}{UNOCCLUDED}": value for name, value in values.items()}

    def _classification(self, zero_shot: bool) -> dict[tuple[str | None, str], dict[str, float]]:
        features = {
            attack: _features(self.victim, np.asarray(data.images.pixels), self.batch_size)
            for attack, data in self.data.items()
        }
        out: dict[tuple[str | None, str], dict[str, float]] = {}
        for task in downstream.WORLD_TASKS:
            sets = task.label_sets(self.labels)
            predictors = {}
            if zero_shot:
                classes = downstream.class_embeddings(self.victim.encode_text, task).cpu()
                predictors[ZERO_SHOT] = lambda f, c=classes: downstream.zero_shot_predictions(f, c)
            predictors[KNN] = lambda f, s=sets, t=task: downstream.knn_predictions(
                f, features[None], s, t.classes, self.knn_k, leave_one_out=True
            )
            for scoring, predict in predictors.items():
                clean = predict(features[None])
                out.setdefault((None, scoring), {})[f"{task.name}_acc"] = downstream.accuracy(
                    clean, task.classes, sets
                )
                for attack in (a for a in features if a is not None):
                    out.setdefault((attack, scoring), {}).update(
                        downstream.attacked_metrics(
                            task.name, clean, predict(features[attack]), task.classes, sets
                        )
                    )
        return out

    def _captions(self) -> dict[tuple[str | None, str], dict[str, float]]:
        from robust.eval.captioning import generate_dataset_captions

        generated = {
            attack: generate_dataset_captions(
                self.victim, data, batch_size=self.batch_size, progress=self.progress
            )
            for attack, data in self.data.items()
        }
        scores = {attack: caption_metrics(c, self.references) for attack, c in generated.items()}
        out = {(None, CAPTION): scores[None]}
        for attack in (a for a in generated if a is not None):
            values = dict(scores[attack])
            values |= {f"{m}_drop": scores[None][m] - scores[attack][m] for m in scores[None]}
            values["caption_change_rate"] = caption_change_rate(generated[None], generated[attack])
            out[(attack, CAPTION)] = values
        return out


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
    """Evaluate a patch and its random-patch control on every target; store every metric."""
    artifact = patch if isinstance(patch, PatchArtifact) else load_patch(patch)
    for name in targets:  # unknown names fail before any work
        resolve_spec(name)
    progress = ensure_progress(progress)
    control = random_patch_like(artifact, control_seed)
    run_dir = Path(run_dir)
    artifact.save(run_dir / "patch" / f"{PATCH_ATTACK}.png")
    control.save(run_dir / "patch" / f"{CONTROL_ATTACK}.png")
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
    # each row's `seed`: the seed that made its patch (fitting, or drawing the control)
    attack_seeds = {PATCH_ATTACK: artifact.seed, CONTROL_ATTACK: control_seed}
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(spec, seeds)
        evaluation = PatchEvaluation(run_dir, run_id, artifact.source)
        for name in targets:
            victim = load_victim(name, device=device)
            clean = dataset_pixels(dataset, victim.image_size, victim.resize_mode)
            variants: dict[str | None, np.ndarray] = {
                None: clean,
                PATCH_ATTACK: patched_pixels(artifact, clean, placement_seed),
                CONTROL_ATTACK: patched_pixels(control, clean, placement_seed),
            }
            _save_examples(run_dir, name, variants, examples)
            occluded = None
            if dataset.labels and "objects" in dataset.labels[0]:
                boxes = patch_boxes(artifact, len(clean), victim.image_size, placement_seed)
                occluded = occluded_by_patch(dataset.labels, boxes, victim.image_size)
            target = _TargetEvaluation(
                victim,
                dataset,
                variants,
                batch_size=batch_size,
                k_test=k_test,
                knn_k=knn_k,
                progress=progress,
                occluded=occluded,
            )
            keys = {"victim": name, "dataset": dataset_name, "split": split, "target": name}
            rows = []
            for (attack, scoring), values in target.metrics().items():
                source = None if attack is None else artifact.source
                seed = attack_seeds.get(attack)
                rows.extend(
                    MetricRow(
                        metric=m,
                        value=v,
                        attack=attack,
                        seed=seed,
                        source=source,
                        scoring=scoring,
                        **keys,
                    )
                    for m, v in values.items()
                )
                evaluation.rows.append(
                    {"target": name, "attack": attack, "scoring": scoring, **values}
                )
            for attack, by_scoring in target.ranks.items():
                source = None if attack is None else artifact.source
                for scoring, result in by_scoring.items():
                    for direction, ranks in (("tr", result.tr_ranks), ("ir", result.ir_ranks)):
                        store.write_query_ranks(
                            run_id,
                            direction=direction,
                            ranks=ranks,
                            scoring=scoring,
                            attack=attack,
                            seed=attack_seeds.get(attack),
                            source=source,
                            **keys,
                        )
            store.write_metrics(run_id, rows)
            del victim
    return evaluation


# The demo-sized run: fit on toy-clip-vit, evaluate on the shipped toys (about a minute on
# one idle core). `robust demo` calls `run_patch_demo`.
DEMO_SOURCE = "toy-clip-vit"
DEMO_TARGETS: tuple[str, ...] = ("toy-clip-vit", "toy-clip-rn", "toy-blip-cap")
DEMO_FIT = ("world:train", 512)
DEMO_EVAL = ("world:test-1k", 100)
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
