"""Bias effects: which of two image sources a retriever prefers, what an attack shifts
retrieval towards, and what it inserts into or deletes from captions.

Relevance bias (Xu et al., SIGIR 2024; definitions in shared/research/ecosystem.md §4): a
paired gallery holds two copies of every image, one from source A (real, or clean) and one
from source B (generated, or adversarial), both relevant to the image's captions. Per
source, R@k is the share of queries whose copy is in the top k and NDCG@k the copy's
discounted gain over an ideal DCG that counts both relevant copies (1/log2 2 + 1/log2 3).
Relative Delta = 2 (M_A - M_B) / (M_A + M_B) x 100: negative means the retriever prefers
source B. RankDiff is mean(rank_A - rank_B) over queries with both copies in the top 100
(positive: B ranks higher); the preference rate is the share of queries scoring B's copy
above A's. As in the paper, every quantity is computed per caption slot (the j-th caption
of every image) and then averaged over slots.

Ranks are 1-based and pessimistic: a copy's rank counts every gallery item scoring at
least as high as it (itself included), so an exact tie between the two copies lowers both
alike and favours neither source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from robust.errors import RobustError
from robust.eval.caption_metrics import caption_change_rate, caption_metrics, tokenize

__all__ = [
    "BIAS_KS",
    "IDEAL_DCG",
    "RANK_DIFF_CUTOFF",
    "WORLD_ATTRIBUTES",
    "AttributeShift",
    "BiasInputError",
    "PairedRanks",
    "attribute_shift",
    "caption_bias",
    "caption_mentions",
    "paired_ranks",
    "relative_delta",
    "relevance_bias",
]

BIAS_KS: Final[tuple[int, ...]] = (1, 3, 5)
RANK_DIFF_CUTOFF: Final[int] = 100
IDEAL_DCG: Final[float] = 1 / math.log2(2) + 1 / math.log2(3)
WORLD_ATTRIBUTES: Final[tuple[str, ...]] = ("color", "shape", "position")
CAPTION_ATTRIBUTES: Final[tuple[str, ...]] = ("color", "shape", "count")


class BiasInputError(RobustError, ValueError):
    """Score matrices, labels or captions whose shapes do not fit together."""


# -- relevance bias on a paired gallery --------------------------------------------------


@dataclass(frozen=True)
class PairedRanks:
    """Each query's two relevant copies: 1-based ranks and scores, plus its caption slot."""

    rank_a: np.ndarray
    rank_b: np.ndarray
    score_a: np.ndarray
    score_b: np.ndarray
    slot: np.ndarray


def paired_ranks(
    scores: np.ndarray, query_owner: Sequence[int], *, slot: Sequence[int] | None = None
) -> PairedRanks:
    """Ranks of the two copies of each query's image in a mixed gallery.

    `scores[q]` scores query q against the gallery laid out as `[A_0..A_{N-1}, B_0..B_{N-1}]`;
    `query_owner[q]` is the index i of q's image, so its relevant items are columns i and
    N + i. `slot[q]` (default: all 0) is which of its image's captions q is.
    """
    scores = np.asarray(scores, dtype=np.float64)
    owner = np.asarray(query_owner, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[1] % 2 or scores.shape[1] == 0:
        raise BiasInputError(
            f"scores must be [queries, 2N] (N images of source A, then their N copies of "
            f"source B), got shape {scores.shape}"
        )
    pairs = scores.shape[1] // 2
    if owner.shape != (scores.shape[0],) or owner.size == 0:
        raise BiasInputError(
            f"query_owner must give one image index per query ({scores.shape[0]}), "
            f"got shape {owner.shape}"
        )
    if owner.min() < 0 or owner.max() >= pairs:
        raise BiasInputError(f"query_owner holds image indices outside [0, {pairs - 1}]")
    slots = np.zeros_like(owner) if slot is None else np.asarray(slot, dtype=np.int64)
    if slots.shape != owner.shape:
        raise BiasInputError(f"slot must have one entry per query, got shape {slots.shape}")
    rows = np.arange(scores.shape[0])
    score_a = scores[rows, owner]
    score_b = scores[rows, owner + pairs]
    rank_a = (scores >= score_a[:, None]).sum(axis=1)
    rank_b = (scores >= score_b[:, None]).sum(axis=1)
    return PairedRanks(rank_a, rank_b, score_a, score_b, slots)


def relative_delta(metric_a: float, metric_b: float) -> float:
    """2 (A - B) / (A + B) in percent; NaN when both are zero (no evidence either way)."""
    total = metric_a + metric_b
    return float("nan") if total == 0 else 200.0 * (metric_a - metric_b) / total


def _gain(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0) / IDEAL_DCG


def _slot_bias(ranks: PairedRanks, keep: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    rank_a, rank_b = ranks.rank_a[keep], ranks.rank_b[keep]
    values: dict[str, float] = {}
    for k in ks:
        per_source = {
            f"r{k}": ((rank_a <= k).mean(), (rank_b <= k).mean()),
            f"ndcg{k}": (_gain(rank_a, k).mean(), _gain(rank_b, k).mean()),
        }
        for metric, (a, b) in per_source.items():
            values[f"{metric}_a"], values[f"{metric}_b"] = float(a), float(b)
            values[f"delta_{metric}"] = relative_delta(float(a), float(b))
    near = (rank_a <= RANK_DIFF_CUTOFF) & (rank_b <= RANK_DIFF_CUTOFF)
    values["rank_diff"] = float((rank_a - rank_b)[near].mean()) if near.any() else float("nan")
    values["preference_rate"] = float((ranks.score_b[keep] > ranks.score_a[keep]).mean())
    return values


def relevance_bias(ranks: PairedRanks, ks: Sequence[int] = BIAS_KS) -> dict[str, float]:
    """R@k and NDCG@k per source, their Relative Delta, RankDiff and B's preference rate,
    each computed per caption slot and averaged over slots (NaN slots skipped)."""
    if any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise BiasInputError(f"ks must be positive integers, got {list(ks)}")
    per_slot = [_slot_bias(ranks, ranks.slot == s, ks) for s in np.unique(ranks.slot)]
    averaged = {}
    for key in per_slot[0]:
        finite = [values[key] for values in per_slot if not math.isnan(values[key])]
        averaged[key] = float(np.mean(finite)) if finite else float("nan")
    return averaged


# -- attribute shift -------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeShift:
    """How often caption queries retrieve (top 1) an image showing `value` of `attribute`,
    on the clean and on the attacked gallery; `shift` = attacked - clean."""

    attribute: str
    value: str
    clean_share: float
    attacked_share: float

    @property
    def shift(self) -> float:
        return self.attacked_share - self.clean_share


def _attribute_values(label: dict, attribute: str) -> set[str]:
    return {str(obj[attribute]) for obj in label.get("objects", ())}


def attribute_shift(
    clean_scores: np.ndarray,
    attacked_scores: np.ndarray,
    labels: Sequence[dict],
    attributes: Sequence[str] = WORLD_ATTRIBUTES,
) -> list[AttributeShift]:
    """Does an attack shift retrieval toward a colour, shape or position?

    `clean_scores` and `attacked_scores` are `[queries, N]` caption-to-image scores against
    the clean and the attacked copies of the same N images; `labels[i]` are image i's world
    labels. One row per (attribute, value) present in the gallery.
    """
    clean = np.asarray(clean_scores)
    attacked = np.asarray(attacked_scores)
    if clean.ndim != 2 or clean.shape != attacked.shape:
        raise BiasInputError(
            f"clean and attacked scores must both be [queries, N], got {clean.shape} and "
            f"{attacked.shape}"
        )
    if len(labels) != clean.shape[1]:
        raise BiasInputError(
            f"{len(labels)} image labels for a gallery of {clean.shape[1]}; pass the "
            "dataset's labels (world datasets have them)"
        )
    top_clean = clean.argmax(axis=1)
    top_attacked = attacked.argmax(axis=1)
    rows = []
    for attribute in attributes:
        present = [_attribute_values(label, attribute) for label in labels]
        for value in sorted(set().union(*present)):
            has = np.array([value in values for values in present])
            rows.append(
                AttributeShift(
                    attribute,
                    value,
                    float(has[top_clean].mean()),
                    float(has[top_attacked].mean()),
                )
            )
    return rows


# -- captioning bias -------------------------------------------------------------------


def caption_mentions(caption: str) -> dict[str, set[str] | int]:
    """The world colours and shapes a caption names, and how many shapes it mentions; read
    with the zoo world's vocabulary, a superset of the first world's (its letters)."""
    from robust.data.world import ZOO_WORLD, caption_vocabulary

    text = f" {' '.join(tokenize(caption))} "
    found: dict[str, set[str] | int] = {}
    mentions = 0
    for attribute, words in caption_vocabulary(ZOO_WORLD).items():
        values = set()
        for value, phrases in words.items():
            hits = sum(text.count(f" {phrase} ") for phrase in phrases)
            if hits:
                values.add(value)
                if attribute == "shape":
                    mentions += hits
        found[attribute] = values
    found["count"] = mentions
    return found


def _changes(before: dict, after: dict, attribute: str) -> tuple[bool, bool]:
    """(inserted, deleted) for one attribute between two captions' mentions."""
    if attribute == "count":
        return after["count"] > before["count"], after["count"] < before["count"]
    return bool(after[attribute] - before[attribute]), bool(before[attribute] - after[attribute])


def _contains(caption: str, concept: Sequence[str]) -> bool:
    tokens = tokenize(caption)
    width = len(concept)
    return any(tokens[i : i + width] == list(concept) for i in range(len(tokens) - width + 1))


def caption_bias(
    clean: Sequence[str],
    attacked: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    target_concept: str | None = None,
) -> dict[str, float]:
    """What an attack does to a captioner's output, one caption per image.

    - `change_rate`: share of images whose caption changed;
    - `{color,shape,count}_insertion_rate` / `_deletion_rate`: share of images whose attacked
      caption names a colour/shape the clean one did not (or drops one), or more/fewer shapes;
    - `target_rate_clean`, `target_rate_attacked`, `target_insertion`: share of captions
      containing `target_concept` and the attack's increase of it (targeted attacks);
    - `{metric}_clean`, `{metric}_attacked`, `{metric}_drop`: BLEU, ROUGE-L and CIDEr against
      the references, and clean minus attacked.
    """
    rate = caption_change_rate(clean, attacked)
    values: dict[str, float] = {"change_rate": rate}
    before = [caption_mentions(caption) for caption in clean]
    after = [caption_mentions(caption) for caption in attacked]
    for attribute in CAPTION_ATTRIBUTES:
        flags = np.array([_changes(b, a, attribute) for b, a in zip(before, after, strict=True)])
        values[f"{attribute}_insertion_rate"] = float(flags[:, 0].mean())
        values[f"{attribute}_deletion_rate"] = float(flags[:, 1].mean())
    if target_concept is not None:
        concept = tokenize(target_concept)
        if not concept:
            raise BiasInputError(f"target concept {target_concept!r} has no words; name one")
        in_clean = float(np.mean([_contains(caption, concept) for caption in clean]))
        in_attacked = float(np.mean([_contains(caption, concept) for caption in attacked]))
        values["target_rate_clean"] = in_clean
        values["target_rate_attacked"] = in_attacked
        values["target_insertion"] = in_attacked - in_clean
    clean_metrics = caption_metrics(clean, references)
    attacked_metrics = caption_metrics(attacked, references)
    for metric, clean_value in clean_metrics.items():
        values[f"{metric}_clean"] = clean_value
        values[f"{metric}_attacked"] = attacked_metrics[metric]
        values[f"{metric}_drop"] = clean_value - attacked_metrics[metric]
    return values
