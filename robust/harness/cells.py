"""The matrix's cells and the worker that computes them: craft, clean baseline, evaluation.

For each (attack, source, seed) adversarial examples are crafted once at the source's
resolution, quantised to uint8 and cached as PNGs; every target then sees them through
`load_images` at its own size and resize mode. The clean baseline of a (source, target) pair
takes exactly the same path (clean images loaded at the source's resolution, quantised, then
resized for the target), so preprocessing shift is never counted as attack success.

Universal attacks (AdvCLIP) are fitted once per (attack, source, seed) on their own fitting
data, their artifact kept in the cache entry, then applied to every dataset image at the
source's resolution and cached like any other adversarial example. The worker never touches
the results store: `robust.harness.writer` does, in the driver's process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robust.data.dataset import ArrayImages, CaptionDataset
from robust.errors import RobustError
from robust.eval.retrieval import RetrievalResult
from robust.harness.cache import AdversarialCache, CacheEntry, jsonable
from robust.harness.evaluate import retrieval_results
from robust.harness.executors import (
    CleanCell,
    CraftCell,
    CraftShard,
    EvalCell,
)
from robust.harness.spec import ExperimentSpec
from robust.precision import precision_scope, prepare_model
from robust.progress import NullProgress, Progress, ensure_progress

if TYPE_CHECKING:
    from robust.attacks.base import UniversalAttack

__all__ = [
    "CellRunner",
    "CleanResult",
    "CraftResult",
    "EvalResult",
    "adversarial_dataset",
    "batch_seed",
    "craft_request",
    "valid_manifest",
]


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
