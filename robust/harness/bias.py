"""Bias measurements on real data and on a run's cache, recorded in a results store.

Three entry points, each a library call behind one `robust bias` command:

- `cache_relevance_bias`: clean vs adversarial copies of a matrix run's cached images in
  one gallery (source A = clean, B = adversarial), plus the attribute shift of top-1
  retrieval on world datasets;
- `pairs_relevance_bias`: a user's real vs generated image pairs (json format in README.md);
- `cache_caption_bias`: a captioner on clean vs cached adversarial images.

Clean images go through exactly the path adversarial ones took (quantised at the source's
resolution, then resized for the evaluated victim), so preprocessing is never counted as
bias. Every value is a store row under a new run whose record names the command and inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust.data.dataset import ArrayImages, CaptionDataset, FileImages
from robust.errors import RobustError
from robust.eval.bias import (
    AttributeShift,
    attribute_shift,
    caption_bias,
    paired_ranks,
    relevance_bias,
)
from robust.eval.retrieval import encode_dataset
from robust.harness.cache import AdversarialCache, CacheEntry
from robust.harness.evaluate import dataset_key
from robust.harness.results import CACHE_DIRNAME
from robust.harness.store import MetricRow, ResultStore
from robust.progress import Progress, ensure_progress

__all__ = [
    "PAIRS_SOURCES",
    "BiasReport",
    "cache_caption_bias",
    "cache_relevance_bias",
    "load_pairs",
    "pairs_relevance_bias",
]

PAIRS_SOURCES = ("real", "generated")


@dataclass(frozen=True)
class BiasReport:
    """One measurement: its scalar metrics, attribute shifts (world only) and store run."""

    run_dir: Path
    run_id: int
    victim: str
    metrics: dict[str, float]
    attribute_shifts: tuple[AttributeShift, ...] = field(default_factory=tuple)


# -- inputs ----------------------------------------------------------------------------


def _cache_entry(run_dir: Path, attack: str, source: str, seed: int) -> CacheEntry:
    entry = AdversarialCache(Path(run_dir) / CACHE_DIRNAME).entry(attack, source, seed)
    if not entry.is_complete():
        known = sorted(
            f"{e.attack_label} on {e.source} (seed {e.seed})"
            for e in AdversarialCache(Path(run_dir) / CACHE_DIRNAME).complete_entries()
        )
        raise RobustError(
            f"{run_dir} has no finished adversarial examples of {attack!r} on {source!r} "
            f"(seed {seed}); cached: {', '.join(known) or 'none (run `robust matrix` first)'}"
        )
    return entry


def _clean_and_adversarial(
    run_dir: Path, attack: str, source: str, seed: int
) -> tuple[CaptionDataset, np.ndarray, np.ndarray]:
    """The run's dataset, its clean images as the source saw them, and the cached ones."""
    from robust.data import load_dataset
    from robust.data.images import load_images, to_uint8_array

    examples = _cache_entry(run_dir, attack, source, seed).load()
    request = examples.manifest.get("plan", {}).get("request", {})
    dataset = load_dataset(request["dataset"], limit=request.get("limit"))
    size, mode = examples.manifest["image_size"], examples.manifest["resize_mode"]
    clean = to_uint8_array(load_images(dataset.images, range(dataset.num_images), size, mode))
    if clean.shape != examples.images.shape:
        raise RobustError(
            f"cached images {examples.images.shape} do not match the dataset {clean.shape}; "
            "delete the cache entry and run the matrix again"
        )
    return dataset, clean, examples.images


def load_pairs(path: Path | str) -> CaptionDataset:
    """A real-vs-generated json as one gallery: the N real images, then their N generated
    copies; captions point at the real copy (see README.md for the format)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RobustError(f"{path}: pairs file not found; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RobustError(f"{path}: not a readable json file ({error}); fix the file") from None
    items = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise RobustError(
            f'{path}: expected {{"pairs": [{{"captions": [...], "real": PATH, '
            '"generated": PATH}, ...]}'
        )
    captions: list[str] = []
    owners: list[int] = []
    for index, item in enumerate(items):
        missing = [key for key in ("captions", *PAIRS_SOURCES) if key not in item]
        if missing or not isinstance(item.get("captions"), list) or not item["captions"]:
            raise RobustError(
                f"{path}: pair {index} needs a non-empty captions list and real and generated "
                f"image paths (missing: {', '.join(missing) or 'captions'})"
            )
        for source in PAIRS_SOURCES:
            if not (path.parent / item[source]).is_file():
                raise RobustError(
                    f"{path}: pair {index}: {source} image {item[source]} not found "
                    f"(paths are relative to {path.parent})"
                )
        for caption in item["captions"]:
            if not isinstance(caption, str) or not caption.strip():
                raise RobustError(f"{path}: pair {index} has an empty caption; remove it")
            captions.append(caption)
            owners.append(index)
    relative = tuple(item[source] for source in PAIRS_SOURCES for item in items)
    return CaptionDataset(
        name=path.stem,
        images=FileImages(path.parent, relative),
        image_ids=relative,
        captions=tuple(captions),
        caption_image=np.asarray(owners, dtype=np.int64),
    )


def _slots(dataset: CaptionDataset) -> np.ndarray:
    """Each caption's position among its image's captions (the paper averages per slot)."""
    slots = np.zeros(dataset.num_captions, dtype=np.int64)
    for caption_indices in dataset.image_captions:
        slots[list(caption_indices)] = np.arange(len(caption_indices))
    return slots


# -- measurements ----------------------------------------------------------------------


def _paired_scores(
    victim: Any, gallery: CaptionDataset, batch_size: int, progress: Progress
) -> np.ndarray:
    images, texts = encode_dataset(victim, gallery, batch_size=batch_size, progress=progress)
    with torch.no_grad():
        return (texts @ images.T).float().cpu().numpy()


def _store(
    run_dir: Path, record: dict[str, Any], rows: list[MetricRow], seeds: dict[str, Any]
) -> int:
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(record, seeds)
        store.write_metrics(run_id, rows)
    return run_id


def _shift_metric(shift: AttributeShift) -> str:
    return f"bias_shift_{shift.attribute}_{shift.value.replace(' ', '_')}"


def cache_relevance_bias(
    run_dir: Path | str,
    attack: str,
    source: str,
    victim_name: str,
    *,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    progress: Progress | None = None,
) -> BiasReport:
    """Relevance bias of `victim_name` between clean (A) and adversarial (B) copies of the
    images `attack` crafted on `source` in the matrix run at `run_dir`."""
    from robust.victims.registry import load_victim

    run_dir = Path(run_dir)
    progress = ensure_progress(progress)
    dataset, clean, adversarial = _clean_and_adversarial(run_dir, attack, source, seed)
    count = dataset.num_images
    gallery = CaptionDataset(
        name=dataset.name,
        images=ArrayImages(np.concatenate([clean, adversarial])),
        image_ids=dataset.image_ids + tuple(f"{i}:adv" for i in dataset.image_ids),
        captions=dataset.captions,
        caption_image=dataset.caption_image,
    )
    victim = load_victim(victim_name, device=device)
    scores = _paired_scores(victim, gallery, batch_size, progress)
    metrics = relevance_bias(paired_ranks(scores, dataset.caption_image, slot=_slots(dataset)))
    shifts: tuple[AttributeShift, ...] = ()
    if dataset.labels is not None:
        shifts = tuple(attribute_shift(scores[:, :count], scores[:, count:], dataset.labels))
    name, split = dataset_key(dataset)
    keys = {"victim": victim_name, "dataset": name, "split": split, "attack": attack}
    keys |= {"seed": seed, "source": source, "target": victim_name, "scoring": "itc"}
    rows = [MetricRow(metric=f"bias_{k}", value=v, **keys) for k, v in metrics.items()]
    rows += [MetricRow(metric=_shift_metric(s), value=s.shift, **keys) for s in shifts]
    record = {
        "command": "bias cache",
        "attack": attack,
        "source": source,
        "victim": victim_name,
        "seed": seed,
        "sources": {"a": "clean", "b": "adversarial"},
    }
    run_id = _store(run_dir, record, rows, {"attack_seed": seed})
    return BiasReport(run_dir, run_id, victim_name, metrics, shifts)


def pairs_relevance_bias(
    pairs_path: Path | str,
    victim_name: str,
    run_dir: Path | str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    progress: Progress | None = None,
) -> BiasReport:
    """Relevance bias of `victim_name` between real (A) and generated (B) images of a pairs
    json; negative Relative Delta = the victim prefers generated images."""
    from robust.victims.registry import load_victim

    gallery = load_pairs(pairs_path)
    victim = load_victim(victim_name, device=device)
    scores = _paired_scores(victim, gallery, batch_size, ensure_progress(progress))
    metrics = relevance_bias(paired_ranks(scores, gallery.caption_image, slot=_slots(gallery)))
    rows = [
        MetricRow(
            victim=victim_name,
            dataset=gallery.name,
            split="pairs",
            metric=f"bias_{key}",
            value=value,
            target=victim_name,
        )
        for key, value in metrics.items()
    ]
    record = {
        "command": "bias pairs",
        "pairs": str(pairs_path),
        "victim": victim_name,
        "sources": {"a": "real", "b": "generated"},
    }
    run_id = _store(Path(run_dir), record, rows, {"none": "deterministic"})
    return BiasReport(Path(run_dir), run_id, victim_name, metrics)


def cache_caption_bias(
    run_dir: Path | str,
    attack: str,
    source: str,
    captioner: str,
    *,
    seed: int = 0,
    target_concept: str | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    progress: Progress | None = None,
) -> BiasReport:
    """What the adversarial images `attack` crafted on `source` do to `captioner`'s captions
    (change rate, world-attribute insertions/deletions, target concept, metric drop)."""
    from robust.eval.captioning import generate_dataset_captions
    from robust.victims.registry import load_victim

    run_dir = Path(run_dir)
    dataset, clean, adversarial = _clean_and_adversarial(run_dir, attack, source, seed)
    victim = load_victim(captioner, device=device)
    progress = ensure_progress(progress)
    captions = {
        which: generate_dataset_captions(
            victim,
            replace(dataset, images=ArrayImages(pixels)),
            batch_size=batch_size,
            progress=progress,
        )
        for which, pixels in (("clean", clean), ("adversarial", adversarial))
    }
    references = dataset.captions_of(range(dataset.num_images))
    metrics = caption_bias(
        captions["clean"], captions["adversarial"], references, target_concept=target_concept
    )
    name, split = dataset_key(dataset)
    keys = {"victim": captioner, "dataset": name, "split": split, "attack": attack}
    keys |= {"seed": seed, "source": source, "target": captioner, "scoring": "caption"}
    rows = [MetricRow(metric=f"caption_{k}", value=v, **keys) for k, v in metrics.items()]
    record = {
        "command": "bias caption",
        "attack": attack,
        "source": source,
        "captioner": captioner,
        "seed": seed,
        "target_concept": target_concept,
    }
    run_id = _store(run_dir, record, rows, {"attack_seed": seed, "decoding": "captioner default"})
    return BiasReport(run_dir, run_id, captioner, metrics)
