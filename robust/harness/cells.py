"""The matrix's cells and the worker that computes them: craft, clean baseline, evaluation.

For each (attack, source, seed) adversarial examples are crafted once at the source's
resolution, quantised to uint8 and cached as PNGs; every target then sees them through
`load_images` at its own size and resize mode. The clean baseline of a (source, target) pair
takes exactly the same path (clean images loaded at the source's resolution, quantised, then
resized for the target), so preprocessing shift is never counted as attack success.

Universal attacks (AdvCLIP) are fitted once per (attack, source, seed) on their own fitting
data, their artifact kept in the cache entry, then applied to every dataset image at the
source's resolution and cached like any other adversarial example. A saved patch evaluated
as an experiment (`robust.harness.patch`) is pasted by a `PatchCell` at each target's own
geometry instead, into an entry of its own, and AnyAttack's targeted pairs are cached by a
`TargetedCell` per gallery and victim geometry. The worker never touches the results store:
`robust.harness.writer` does, in the driver's process.

Evaluation cells compute retrieval, and where their `Tasks` ask, the per-image outputs of
the world-label tasks and captioning (`TaskOutputs`); the experiment scores those against
the clean cell's outputs, as the writer scores adversarial retrieval against clean ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from robust.data.dataset import ArrayImages, CaptionDataset
from robust.errors import RobustError
from robust.eval.retrieval import RetrievalResult
from robust.harness.cache import AdversarialCache, AdversarialExamples, CacheEntry, jsonable
from robust.harness.evaluate import encoded_results, retrieval_results
from robust.harness.executors import (
    CleanCell,
    CraftCell,
    CraftShard,
    EvalCell,
    PatchCell,
    TargetedCell,
    Tasks,
)
from robust.harness.spec import AttackSpec, VictimRef
from robust.precision import precision_scope, prepare_model
from robust.progress import NullProgress, Progress, ensure_progress

if TYPE_CHECKING:
    from robust.attacks.base import UniversalAttack
    from robust.eval.rerank import EncodedGallery

__all__ = [
    "CellRunner",
    "CleanResult",
    "CraftResult",
    "EvalResult",
    "ExperimentSettings",
    "RunnerSpec",
    "TaskOutputs",
    "adversarial_dataset",
    "batch_seed",
    "craft_request",
    "valid_manifest",
]


TARGETED_BATCH = 64  # pairs per decoder batch: `craft_pair_images`'s, so the noise is the same
TARGETED_GALLERIES = ("adv", "floor", "ceiling", "noise")  # what a `TargetedCell` can cache


def batch_seed(seed: int, batch_index: int) -> int:
    """The generator seed of one attack batch: fixed by (seed, batch), not by run order."""
    digest = hashlib.sha256(f"{int(seed)}:{int(batch_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# -- what the worker is told ------------------------------------------------------------------


class RunnerSpec(Protocol):
    """What the worker reads of a run's spec: `ExperimentSpec` for the matrix,
    `ExperimentSettings` for experiments that bring their own dataset and cells."""

    dataset: str
    limit: int | None
    batch_size: int
    eval_batch_size: int
    k_test: int | None
    device: str
    precision: str

    def victim(self, name: str) -> VictimRef: ...

    def attack(self, label: str) -> AttackSpec: ...


@dataclass(frozen=True)
class ExperimentSettings:
    """The worker's settings for an experiment run on a dataset it is handed (patch, ...):
    victims load by their registered name or spec string, and no attack is crafted from a
    spec (its cells name the artifact they apply)."""

    dataset: str
    eval_batch_size: int = 64
    k_test: int | None = None
    device: str = "cpu"
    precision: str = "fp32"
    limit: int | None = None
    batch_size: int = 8

    def victim(self, name: str) -> VictimRef:
        return VictimRef(name=name, spec=name)

    def attack(self, label: str) -> AttackSpec:
        raise KeyError(label)


# -- results of cells ------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskOutputs:
    """Per-image outputs of the tasks beyond retrieval, for scoring against the clean ones.

    `predictions[(scoring, task)]` are a world-label task's predictions ("zero-shot" from
    class prompts, "knn" from a vote over the clean images' features); `captions` one
    generated caption per image.
    """

    predictions: dict[tuple[str, str], Any] = field(default_factory=dict)
    captions: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CraftResult:
    """A cached entry: the geometry its images were crafted at, and batches computed now."""

    cell: CraftCell | PatchCell | TargetedCell
    image_size: int
    resize_mode: str
    num_images: int
    crafted_batches: int


@dataclass(frozen=True)
class CleanResult:
    """A target's retrieval on clean images crossed from one (size, mode), per scoring."""

    cell: CleanCell
    results: dict[str, RetrievalResult]
    outputs: TaskOutputs = field(default_factory=TaskOutputs)


@dataclass(frozen=True)
class EvalResult:
    """A target's retrieval on one cache entry's adversarial examples, per scoring.

    `parts` (where the cell's tasks ask for the modality split) holds the same retrieval on
    the half-adversarial galleries, per part (`robust.harness.results.MODALITY_PARTS`).
    """

    cell: EvalCell
    results: dict[str, RetrievalResult]
    outputs: TaskOutputs = field(default_factory=TaskOutputs)
    parts: dict[str, dict[str, RetrievalResult]] = field(default_factory=dict)


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
        spec: RunnerSpec,
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
        self._clean_features: dict[tuple[str, int, str], torch.Tensor] = {}
        self._clean_gallery: tuple[tuple[str, int, str], EncodedGallery] | None = None

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
        self._clean_features = {}
        self._clean_gallery = None

    def __call__(
        self, cell: CraftCell | CraftShard | PatchCell | TargetedCell | CleanCell | EvalCell
    ) -> Any:
        with precision_scope(self.spec.precision, self.spec.device):
            if isinstance(cell, CraftCell):
                return self.craft(cell)
            if isinstance(cell, CraftShard):
                return self.craft(cell.cell, batches=frozenset(cell.batches))
            if isinstance(cell, PatchCell):
                return self.paste(cell)
            if isinstance(cell, TargetedCell):
                return self.targeted(cell)
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
        self._clean_gallery = None  # the previous target's encodings
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

    def geometry(self, name: str) -> tuple[int, str]:
        """The (image_size, resize_mode) the named victim sees images at (loads it)."""
        victim = self.victim(name)
        return (int(victim.image_size), str(victim.resize_mode))

    def entry(
        self, attack_label: str, source: str, seed: int, at: tuple[int, str] | None = None
    ) -> CacheEntry:
        return self.cache.entry(attack_label, source, seed, at)

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

    def paste(self, cell: PatchCell) -> CraftResult:
        """Paste a saved patch on every clean image at the cell's geometry; cache the result.

        The entry's request names the patch file's bytes, so a different patch saved under
        the same name is pasted again rather than read back.
        """
        from robust.attacks.patch_artifact import load_patch, patched_pixels, sidecar_path

        entry = self.entry(cell.attack_label, cell.source, cell.seed, cell.at)
        dataset = self.dataset
        digest = hashlib.sha256()
        for path in (Path(cell.patch_file), sidecar_path(cell.patch_file)):
            digest.update(path.read_bytes())
        request = jsonable(
            {**asdict(cell), "patch_sha256": digest.hexdigest(), "dataset": dataset.name}
            | {"num_images": dataset.num_images}
        )
        manifest = valid_manifest(entry, request)
        if manifest is not None:
            return CraftResult(cell, cell.image_size, cell.resize_mode, dataset.num_images, 0)
        artifact = load_patch(cell.patch_file)
        plan = {"request": request, "config": artifact.config}
        plan |= {"num_images": dataset.num_images, "dataset": dataset.name}
        entry.begin(plan)
        pixels = patched_pixels(
            artifact, self.clean_pixels(cell.image_size, cell.resize_mode), cell.placement_seed
        )
        indices = list(range(dataset.num_images))
        entry.write_batch(0, indices, pixels, dataset.captions_of(indices))
        info = {"attack": artifact.attack, "dataset": dataset.name}
        entry.finish(artifact.sidecar(), info | {"image_size": cell.image_size})
        return CraftResult(cell, cell.image_size, cell.resize_mode, dataset.num_images, 1)

    def targeted(self, cell: TargetedCell) -> CraftResult:
        """Cache one gallery of AnyAttack pairs at the cell's geometry, batch by batch.

        The noise is decoded in batches of `TARGETED_BATCH` pairs, as `craft_pair_images`
        does, and each float image is resized before rounding. Image `i` carries its target's
        captions, so an evaluation scores it against them; the plan records the pairs. The
        request names the decoder by its file name, which holds a hash of its weights.
        """
        from robust.attacks.anyattack import AnyAttack, load_decoder
        from robust.data.images import cross_resolution, load_images, to_uint8_array
        from robust.eval.targeted import pair_images

        if cell.gallery not in TARGETED_GALLERIES:
            raise RobustError(
                f"unknown AnyAttack gallery {cell.gallery!r}; choose one of "
                f"{', '.join(TARGETED_GALLERIES)}"
            )
        entry = self.entry(cell.attack_label, cell.source, cell.seed, cell.at)
        dataset = self.dataset
        request = {**asdict(cell), "decoder_file": Path(cell.decoder_file).name}
        request = jsonable(request | {"dataset": dataset.name})
        request |= {"num_images": dataset.num_images}
        manifest = valid_manifest(entry, request)
        if manifest is not None:
            return CraftResult(cell, cell.image_size, cell.resize_mode, cell.pairs, 0)
        pairs = pair_images(dataset, cell.pairs, cell.seed)
        encoder = self.victim(cell.source)
        decoder = load_decoder(cell.decoder_file).to(self.spec.device).eval()
        attack = AnyAttack(encoder, decoder, eps=cell.eps)
        plan = {"request": request, "config": attack.config(), "num_images": cell.pairs}
        plan |= {"pairs": {"clean": pairs.clean, "target": pairs.target}}
        done = entry.begin(plan)
        size = decoder.config.image_size
        crafted = 0
        description = f"anyattack: {cell.gallery} at {cell.image_size} px"
        with self.progress.task(description, cell.pairs) as task:
            for batch_index, start in enumerate(range(0, cell.pairs, TARGETED_BATCH)):
                indices = list(range(start, min(start + TARGETED_BATCH, cell.pairs)))
                if batch_index in done:
                    task.advance(len(indices))
                    continue
                clean_ids, target_ids = pairs.clean[indices], pairs.target[indices]
                if cell.gallery == "ceiling":
                    images = load_images(
                        dataset.images, target_ids, encoder.image_size, encoder.resize_mode
                    )
                else:
                    images = load_images(dataset.images, clean_ids, size, encoder.resize_mode)
                if cell.gallery in ("adv", "noise"):
                    target = load_images(
                        dataset.images, target_ids, encoder.image_size, encoder.resize_mode
                    )
                    with torch.no_grad():
                        noise = attack.noise(target.to(encoder.device)).cpu()
                    if cell.gallery == "adv":
                        images = (images + noise).clamp(0.0, 1.0)
                    else:
                        images = (noise / (2 * attack.eps) + 0.5).clamp(0.0, 1.0)
                pixels = to_uint8_array(cross_resolution(images, *cell.at))
                texts = dataset.captions_of(target_ids.tolist())
                entry.write_batch(batch_index, indices, pixels, texts)
                crafted += 1
                task.advance(len(indices))
        info = {"attack": "anyattack", "dataset": dataset.name, "image_size": cell.image_size}
        entry.finish(jsonable(attack.config()), info | {"resize_mode": cell.resize_mode})
        return CraftResult(cell, cell.image_size, cell.resize_mode, cell.pairs, crafted)

    def clean(self, cell: CleanCell) -> CleanResult:
        """The target on clean images crossed from (size, mode): the pair's fair baseline."""
        target = self.victim(cell.target)
        pixels = self.clean_pixels(cell.image_size, cell.resize_mode)
        data = replace(self.dataset, images=ArrayImages(pixels))
        at = (cell.image_size, cell.resize_mode)
        outputs = self._outputs(target, data, cell.tasks, at)
        if self._splits(target, cell.tasks):
            gallery = self.clean_gallery(target, at)
            results = encoded_results(
                target, gallery, gallery, data.caption_image, k_test=self.spec.k_test,
                progress=self.progress,
            )  # fmt: skip
            return CleanResult(cell, results, outputs)
        return CleanResult(cell, self._retrieve(target, data, cell.tasks), outputs)

    def evaluate(self, cell: EvalCell) -> EvalResult:
        """The target on one cache entry's adversarial images and captions."""
        target = self.victim(cell.target)
        examples = self.entry(cell.attack_label, cell.source, cell.seed, cell.at).load()
        if cell.tasks.targeted:
            return self._evaluate_targeted(cell, target, examples)
        data = adversarial_dataset(self.dataset, examples.images, examples.texts)
        at = cell.at or (examples.manifest["image_size"], examples.manifest["resize_mode"])
        outputs = self._outputs(target, data, cell.tasks, at)
        if self._splits(target, cell.tasks):
            return self._evaluate_parts(cell, target, data, at, outputs)
        return EvalResult(cell, self._retrieve(target, data, cell.tasks), outputs)

    def _splits(self, target: Any, tasks: Tasks) -> bool:
        """Whether a cell scores the modality split (retrieval the target can do)."""
        return tasks.modality_split and tasks.retrieval and "itc" in target.capabilities

    def clean_gallery(self, target: Any, at: tuple[int, str]) -> EncodedGallery:
        """The target's encodings of the clean images at `at` and the clean captions.

        Kept for one (target, geometry) at a time, so the half-adversarial galleries of the
        evaluations that follow a clean cell reuse its encodings instead of encoding again.
        """
        from robust.eval.rerank import encode_gallery

        key = (target.name, int(at[0]), str(at[1]))
        if self._clean_gallery is None or self._clean_gallery[0] != key:
            self._clean_gallery = None  # free the previous geometry's before encoding this one
            data = replace(self.dataset, images=ArrayImages(self.clean_pixels(*at)))
            gallery = encode_gallery(
                target, data, batch_size=self.spec.eval_batch_size, progress=self.progress
            )
            self._clean_gallery = (key, gallery)
        return self._clean_gallery[1]

    def _evaluate_parts(
        self,
        cell: EvalCell,
        target: Any,
        data: CaptionDataset,
        at: tuple[int, str],
        outputs: TaskOutputs,
    ) -> EvalResult:
        """Retrieval on the adversarial gallery and on both half-adversarial ones: the
        adversarial images against the clean captions, the clean images against the
        adversarial captions, each half encoded once."""
        from robust.eval.rerank import encode_gallery
        from robust.harness.results import IMAGE_ONLY, TEXT_ONLY

        adversarial = encode_gallery(
            target, data, batch_size=self.spec.eval_batch_size, progress=self.progress
        )
        clean = self.clean_gallery(target, at)
        score = partial(
            encoded_results, target, caption_image=data.caption_image, k_test=self.spec.k_test,
            progress=self.progress,
        )  # fmt: skip
        parts = {IMAGE_ONLY: score(adversarial, clean), TEXT_ONLY: score(clean, adversarial)}
        return EvalResult(cell, score(adversarial, adversarial), outputs, parts=parts)

    def _evaluate_targeted(
        self, cell: EvalCell, target: Any, examples: AdversarialExamples
    ) -> EvalResult:
        """A `TargetedCell`'s entry: image `i` against the target captions it carries."""
        from robust.data.images import from_uint8_array
        from robust.eval.targeted import targeted_retrieval
        from robust.harness.results import ITC

        texts = [text for group in examples.texts for text in group]
        caption_pair = np.repeat(
            np.arange(len(examples.texts)), [len(group) for group in examples.texts]
        )
        results = {}
        if cell.tasks.retrieval and "itc" in target.capabilities:
            gallery = {ITC: from_uint8_array(examples.images)}
            results = targeted_retrieval(target, gallery, texts, caption_pair)
        data = CaptionDataset(
            name=f"anyattack:{self.dataset.name}",
            images=ArrayImages(examples.images),
            image_ids=tuple(f"pair{i:05d}" for i in range(len(examples.texts))),
            captions=tuple(texts),
            caption_image=caption_pair,
        )
        at = cell.at or (examples.manifest["image_size"], examples.manifest["resize_mode"])
        return EvalResult(cell, results, self._outputs(target, data, cell.tasks, at))

    def _retrieve(
        self, target: Any, data: CaptionDataset, tasks: Tasks
    ) -> dict[str, RetrievalResult]:
        if not tasks.retrieval or (tasks.where_supported and "itc" not in target.capabilities):
            return {}
        return retrieval_results(
            target,
            data,
            batch_size=self.spec.eval_batch_size,
            k_test=self.spec.k_test,
            progress=self.progress,
        )

    def _outputs(
        self, target: Any, data: CaptionDataset, tasks: Tasks, at: tuple[int, str]
    ) -> TaskOutputs:
        """The label predictions and captions `tasks` ask for, where the target can do them."""
        from robust.eval.captioning import generate_dataset_captions

        predictions: dict[tuple[str, str], Any] = {}
        labels = data.labels
        if tasks.labels and labels and "objects" in labels[0]:
            from robust.eval import downstream
            from robust.harness.results import KNN, ZERO_SHOT

            features = self._image_features(target, data)
            bank = self._clean_image_features(target, at)
            zero_shot = "itc" in target.capabilities
            for task in downstream.WORLD_TASKS:
                if zero_shot:
                    classes = downstream.class_embeddings(target.encode_text, task).cpu()
                    predictions[(ZERO_SHOT, task.name)] = downstream.zero_shot_predictions(
                        features, classes
                    )
                predictions[(KNN, task.name)] = downstream.knn_predictions(
                    features, bank, task.label_sets(labels), task.classes, tasks.knn_k,
                    leave_one_out=True,
                )  # fmt: skip
        captions = None
        if tasks.captions and "caption" in target.capabilities:
            captions = tuple(
                generate_dataset_captions(
                    target, data, batch_size=self.spec.eval_batch_size, progress=self.progress
                )
            )
        return TaskOutputs(predictions, captions)

    def _image_features(self, target: Any, data: CaptionDataset) -> torch.Tensor:
        """Image embeddings of `data` at the target's geometry, batched like retrieval."""
        from robust.data.images import load_images

        rows = []
        step = self.spec.eval_batch_size
        with torch.no_grad():
            for start in range(0, data.num_images, step):
                indices = range(start, min(start + step, data.num_images))
                images = load_images(data.images, indices, target.image_size, target.resize_mode)
                rows.append(target.encode_image(images.to(target.device)).float().cpu())
        return torch.cat(rows)

    def _clean_image_features(self, target: Any, at: tuple[int, str]) -> torch.Tensor:
        """The target's features of the clean images at `at`: the k-NN vote's neighbours."""
        key = (target.name, int(at[0]), str(at[1]))
        if key not in self._clean_features:
            pixels = self.clean_pixels(at[0], at[1])
            data = replace(self.dataset, images=ArrayImages(pixels))
            self._clean_features = {key: self._image_features(target, data)}
        return self._clean_features[key]


def valid_manifest(entry: CacheEntry, request: dict[str, Any]) -> dict[str, Any] | None:
    """The entry's manifest if it is complete and was crafted for `request`, else None."""
    if not entry.is_complete():
        return None
    manifest = entry.manifest()
    return manifest if manifest.get("plan", {}).get("request") == request else None


def craft_request(spec: RunnerSpec, cell: CraftCell) -> dict[str, Any]:
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
