"""Targeted-attack evaluation: does a victim take an adversarial image for its target?

Each pair `i` holds a clean image and a target image; the attack turns the clean image into
adversarial image `i`. Three galleries are scored against the *target's* captions:
- `adv`: the adversarial images (the attack's success),
- `floor`: the clean images (what an attack that does nothing gets),
- `ceiling`: the target images themselves (the best a perfect attack could get).
Retrieval uses the standard ranks, with caption `t` belonging to pair `caption_pair[t]`:
TR R@K asks whether an image finds its target's captions, IR R@K whether a target caption
finds its pair's image. Captioning scores generated captions against the target's and the
clean image's reference captions and, where the dataset has world scene labels, reads each
caption back into its claims (`robust.data.world.read_claims`) and checks them against
the target's and the clean image's scenes (`caption_claim_scores`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robust.data.dataset import CaptionDataset
from robust.data.world import caption_fits_scene, read_claims
from robust.eval.caption_metrics import caption_metrics, embedding_similarity
from robust.eval.retrieval import RetrievalResult, rank_from_features
from robust.victims.base import Victim

GALLERIES: tuple[str, ...] = ("adv", "floor", "ceiling")
CAPTION_METRICS: tuple[str, ...] = ("bleu1", "bleu4", "rouge_l", "cider", "emb_sim_mean")
CLAIM_METRICS: tuple[str, ...] = ("objects_true", "color_true", "shape_true", "all_true")


@dataclass(frozen=True)
class TargetPairs:
    """Seeded (clean, target) image indices into one dataset; no pair shares an image."""

    clean: np.ndarray
    target: np.ndarray
    seed: int

    def __len__(self) -> int:
        return int(self.clean.shape[0])


def class_key(label: dict | None) -> tuple[str, ...]:
    """The class of a world image for pairing: its first object's shape and colour."""
    if not label or not label.get("objects"):
        return ()
    first = label["objects"][0]
    return (str(first["shape"]), str(first["color"]))


def pair_images(dataset: CaptionDataset, count: int, seed: int = 0) -> TargetPairs:
    """`count` clean/target pairs whose cleans and targets each cycle through every class.

    Images are grouped by `class_key` and drawn round-robin over the groups in a seeded
    order, so as soon as `count` reaches the number of classes every class appears among
    the cleans and among the targets (the reference's class-sorted ImageNet order used 20
    classes for 1,000 pairs). A pair never shares its image or, where possible, its class.
    """
    if not 1 <= count <= dataset.num_images // 2:
        raise ValueError(
            f"count must be in 1..{dataset.num_images // 2} (half of the "
            f"{dataset.num_images} images: cleans and targets are distinct), got {count}"
        )
    rng = np.random.default_rng(seed)
    labels = dataset.labels or (None,) * dataset.num_images
    keys = [class_key(label) for label in labels]
    order = _round_robin(keys, 2 * count, rng)
    clean, target = order[0::2].copy(), order[1::2].copy()
    for _ in range(4):
        clashes = [i for i in range(count) if keys[clean[i]] == keys[target[i]] and keys[clean[i]]]
        if not clashes:
            break
        for i in clashes:
            j = (i + 1 + int(rng.integers(count - 1))) % count if count > 1 else i
            target[i], target[j] = target[j], target[i]
    return TargetPairs(clean=clean, target=target, seed=seed)


def _round_robin(
    keys: Sequence[tuple[str, ...]], count: int, rng: np.random.Generator
) -> np.ndarray:
    groups: dict[tuple[str, ...], list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    queues = [list(rng.permutation(members)) for _, members in sorted(groups.items())]
    queues = [queues[i] for i in rng.permutation(len(queues))]
    chosen: list[int] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(int(queue.pop()))
    return np.asarray(chosen, dtype=np.int64)


def target_captions(dataset: CaptionDataset, pairs: TargetPairs) -> tuple[list[str], np.ndarray]:
    """Every caption of every pair's target, and the pair each caption belongs to."""
    texts: list[str] = []
    owner: list[int] = []
    for pair, captions in enumerate(dataset.captions_of(pairs.target.tolist())):
        texts.extend(captions)
        owner.extend([pair] * len(captions))
    return texts, np.asarray(owner, dtype=np.int64)


def targeted_retrieval(
    victim: Victim,
    galleries: dict[str, torch.Tensor],
    captions: Sequence[str],
    caption_pair: np.ndarray,
    *,
    batch_size: int = 128,
) -> dict[str, RetrievalResult]:
    """Ranks of each gallery (images at the victim's size) against the target captions."""
    with torch.no_grad():
        text_features = torch.cat(
            [
                victim.encode_text(list(captions[start : start + batch_size]))
                for start in range(0, len(captions), batch_size)
            ]
        )
        results = {}
        for name, images in galleries.items():
            features = torch.cat(
                [
                    victim.encode_image(images[start : start + batch_size].to(victim.device))
                    for start in range(0, images.shape[0], batch_size)
                ]
            )
            results[name] = rank_from_features(features, text_features, caption_pair)
    return results


def targeted_caption_scores(
    generated: Mapping[str, Sequence[str]],
    target_references: Sequence[Sequence[str]],
    clean_references: Sequence[Sequence[str]],
    encode_text: Callable[[list[str]], torch.Tensor],
) -> dict[str, float]:
    """Score each gallery's generated captions against target and clean references.

    Metric names are `{gallery}_vs_target_{m}` and `{gallery}_vs_clean_{m}` for `m` in
    `CAPTION_METRICS` (BLEU, ROUGE-L, CIDEr, and the text-embedding cosine under
    `encode_text`, e.g. the encoder's text tower).
    """
    metrics: dict[str, float] = {}
    with torch.no_grad():
        for name, captions in generated.items():
            for against, references in (("target", target_references), ("clean", clean_references)):
                scores = caption_metrics(list(captions), references)
                scores.update(embedding_similarity(list(captions), references, encode_text))
                for metric in CAPTION_METRICS:
                    metrics[f"{name}_vs_{against}_{metric}"] = float(scores[metric])
    return metrics


def caption_claim_scores(
    captions: Sequence[str], scenes: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """How far captions name what is in their scenes (world labels, one per caption).

    A caption's claims are its object phrases that read as world phrases
    (`robust.data.world.read_claims`: a captioner's output cut off mid-phrase keeps its
    complete phrases). Counted over all captions' claims together:
    - `objects_true`: object claims whose colour and shape are those of one object of the
      scene (the caption names an object the scene holds);
    - `color_true`, `shape_true`: the colours and the shapes the claims name that some
      object of the scene has, each on its own;
    (NaN where no caption makes a claim) and per caption:
    - `all_true`: captions with at least one object claim, each matched to a distinct
      object of the scene with every attribute it names (size, fill and position too) and
      the background if named (`caption_fits_scene`, objects left out allowed);
    - `readable`: captions with at least one object claim.
    A caption with no claim adds nothing to the pooled shares and fails `all_true`.
    """
    if len(captions) != len(scenes):
        raise ValueError(f"{len(captions)} captions but {len(scenes)} scenes")
    if not captions:
        raise ValueError("no captions to score")
    true = dict.fromkeys(("objects", "color", "shape"), 0)
    claims = all_true = readable = 0
    for caption, scene in zip(captions, scenes, strict=True):
        claim = read_claims(caption)
        if not claim.objects:
            continue
        objects = scene["objects"]
        readable += 1
        all_true += caption_fits_scene(claim, dict(scene), complete=False)
        for _, color, shape, _ in claim.objects:
            claims += 1
            true["objects"] += any(o["color"] == color and o["shape"] == shape for o in objects)
            true["color"] += any(o["color"] == color for o in objects)
            true["shape"] += any(o["shape"] == shape for o in objects)
    scores = {f"{key}_true": n / claims if claims else float("nan") for key, n in true.items()}
    return scores | {"all_true": all_true / len(captions), "readable": readable / len(captions)}


def targeted_claim_scores(
    generated: Mapping[str, Sequence[str]],
    target_scenes: Sequence[Mapping[str, Any]],
    clean_scenes: Sequence[Mapping[str, Any]],
) -> dict[str, float]:
    """Each gallery's generated captions read against the target's and the clean scenes.

    Metric names are `{gallery}_vs_{target|clean}_{m}` for `m` in `CLAIM_METRICS` and
    `{gallery}_caption_readable`: `adv_vs_target_objects_true` is how much of what the
    captioner says about an adversarial image is true of its target; the clean images
    (`floor_vs_target_*`) give the rate an attack that does nothing gets, the target
    images (`ceiling_vs_target_*`) the rate a perfect one would.
    """
    metrics: dict[str, float] = {}
    for name, captions in generated.items():
        for against, scenes in (("target", target_scenes), ("clean", clean_scenes)):
            scores = caption_claim_scores(captions, scenes)
            for metric in CLAIM_METRICS:
                metrics[f"{name}_vs_{against}_{metric}"] = scores[metric]
        metrics[f"{name}_caption_readable"] = scores["readable"]
    return metrics


__all__ = [
    "CAPTION_METRICS",
    "CLAIM_METRICS",
    "GALLERIES",
    "TargetPairs",
    "caption_claim_scores",
    "class_key",
    "pair_images",
    "target_captions",
    "targeted_caption_scores",
    "targeted_claim_scores",
    "targeted_retrieval",
]
