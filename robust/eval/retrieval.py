"""Image-text retrieval evaluation (Flickr30k/COCO practice) with per-query ranks kept.

Text retrieval (TR) asks each image for its captions among all captions; image retrieval (IR)
asks each caption for its image among all images. Every query's rank is stored, so R@K, the
attack success rate in either convention, or any other metric can be recomputed later.

Memory grows linearly with the gallery: queries are scored in chunks of `chunk_size` rows
and only ranks (plus the top-`k_test` candidates while re-ranking) survive each chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from robust.progress import NullProgress, Progress, ProgressTask

if TYPE_CHECKING:
    from robust.data.dataset import CaptionDataset

RECALL_KS: tuple[int, ...] = (1, 5, 10)
METRIC_NAMES: tuple[str, ...] = (
    "tr_r1",
    "tr_r5",
    "tr_r10",
    "ir_r1",
    "ir_r5",
    "ir_r10",
    "r_mean",
)

_NEG_INF = float("-inf")

# Re-scores candidates: (query indices [q], candidate indices [q, k]) -> scores [q, k].
_Rescore = Callable[[Tensor, Tensor], Tensor]


class Reranker(Protocol):
    """Re-scores ITC top-k candidates with a costlier model (ITM heads of fusion victims).

    Indices are global dataset indices as CPU LongTensors; the returned scores are
    `[q, k]`, higher meaning a better match, aligned with the candidate tensor.
    """

    def score_image_queries(self, image_indices: Tensor, text_candidates: Tensor) -> Tensor:
        """Scores `[q, k]` of image query `image_indices[a]` against `text_candidates[a, b]`."""
        ...

    def score_text_queries(self, text_indices: Tensor, image_candidates: Tensor) -> Tensor:
        """Scores `[q, k]` of caption query `text_indices[a]` against `image_candidates[a, b]`."""
        ...


def _as_rank_array(values: Any, name: str) -> np.ndarray:
    ranks = np.array(values, dtype=np.int64, copy=True)
    if ranks.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of ranks, got shape {ranks.shape}")
    if ranks.size and ranks.min() < 0:
        raise ValueError(f"{name} holds negative ranks; ranks are 0-based positions")
    ranks.setflags(write=False)
    return ranks


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"K must be a positive cut-off for R@K, got {k}")


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """Per-query 0-based ranks of the best correct gallery item, for TR and IR.

    `tr_ranks[i]` belongs to image query `i`, `ir_ranks[t]` to caption query `t`. A query
    with no correct item at all gets the gallery size (never correct at any K).
    Arrays are copied to read-only int64 so a stored result cannot change under its user.
    """

    tr_ranks: np.ndarray
    ir_ranks: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "tr_ranks", _as_rank_array(self.tr_ranks, "tr_ranks"))
        object.__setattr__(self, "ir_ranks", _as_rank_array(self.ir_ranks, "ir_ranks"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RetrievalResult):
            return NotImplemented
        return np.array_equal(self.tr_ranks, other.tr_ranks) and np.array_equal(
            self.ir_ranks, other.ir_ranks
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_images(self) -> int:
        return int(self.tr_ranks.shape[0])

    @property
    def num_captions(self) -> int:
        return int(self.ir_ranks.shape[0])

    def tr_correct(self, k: int) -> np.ndarray:
        """Which image queries find one of their captions in the top `k` (bool `[N]`)."""
        _check_k(k)
        return self.tr_ranks < k

    def ir_correct(self, k: int) -> np.ndarray:
        """Which caption queries find their image in the top `k` (bool `[T]`)."""
        _check_k(k)
        return self.ir_ranks < k

    def recall(self, k: int) -> tuple[float, float]:
        """(TR R@k, IR R@k) as fractions in [0, 1]; nan for an empty query set."""
        return _mean(self.tr_correct(k)), _mean(self.ir_correct(k))

    def metrics(self) -> dict[str, float]:
        """The standard table: tr_r1/5/10, ir_r1/5/10 and their mean `r_mean`, as fractions."""
        values: dict[str, float] = {}
        for k in RECALL_KS:
            values[f"tr_r{k}"], values[f"ir_r{k}"] = self.recall(k)
        ordered = {name: values[name] for name in METRIC_NAMES[:-1]}
        ordered["r_mean"] = float(np.mean(list(ordered.values())))
        return ordered


def _mean(flags: np.ndarray) -> float:
    return float(flags.mean()) if flags.size else float("nan")


def _pessimistic_ranks(scores: Tensor, correct: Tensor, competing: Tensor) -> Tensor:
    """Count competing items scoring >= the best correct item, per row.

    NaN scores count as -inf, so a broken score can only hurt the query. A row with no
    correct item gets every competing item counted.
    """
    scores = torch.where(torch.isnan(scores), _NEG_INF, scores)
    best_correct = scores.masked_fill(~correct, _NEG_INF).amax(dim=1, keepdim=True)
    return ((scores >= best_correct) & competing).sum(dim=1)


def _top_candidates(scores: Tensor, correct: Tensor, k: int) -> Tensor:
    """Indices `[q, k]` of each row's k highest scores, ties at the cut broken against the query.

    Among equal scores incorrect items enter the top k first: a correct item that ties its way
    into the re-ranked set could only gain from it.
    """
    scores = torch.where(torch.isnan(scores), _NEG_INF, scores)
    incorrect_first = torch.argsort(correct.to(torch.uint8), dim=1, stable=True)
    permuted = scores.gather(1, incorrect_first)
    order = torch.sort(permuted, dim=1, descending=True, stable=True).indices[:, :k]
    return incorrect_first.gather(1, order)


def _rank_chunk(
    scores: Tensor,
    correct: Tensor,
    query_indices: Tensor,
    k_test: int | None,
    rescore: _Rescore | None,
) -> Tensor:
    """Ranks for one chunk of queries, by ITC alone or with a top-`k_test` re-rank."""
    if rescore is None:
        return _pessimistic_ranks(scores, correct, ~correct)
    gallery_size = scores.shape[1]
    k = min(int(k_test or gallery_size), gallery_size)
    candidates = _top_candidates(scores, correct, k)
    candidate_correct = correct.gather(1, candidates)
    new_scores = rescore(query_indices.cpu(), candidates.cpu())
    new_scores = torch.as_tensor(new_scores).to(device=scores.device, dtype=torch.float32)
    if new_scores.shape != candidates.shape:
        raise ValueError(
            f"reranker returned scores of shape {tuple(new_scores.shape)}, expected "
            f"{tuple(candidates.shape)} (one score per query and candidate)"
        )
    inside = _pessimistic_ranks(new_scores, candidate_correct, ~candidate_correct)
    in_top = torch.zeros_like(correct).scatter_(1, candidates, True)
    outside = k + _pessimistic_ranks(scores, correct & ~in_top, ~correct & ~in_top)
    return torch.where(candidate_correct.any(dim=1), inside, outside)


def _rank_queries(
    queries: Tensor,
    gallery: Tensor,
    query_labels: Tensor,
    gallery_labels: Tensor,
    *,
    k_test: int | None,
    rescore: _Rescore | None,
    chunk_size: int,
    task: ProgressTask,
) -> np.ndarray:
    """Ranks of every query against the whole gallery, `chunk_size` queries at a time.

    Query `a` and gallery item `b` match when `query_labels[a] == gallery_labels[b]`.
    """
    ranks = torch.empty(queries.shape[0], dtype=torch.int64)
    for start in range(0, queries.shape[0], chunk_size):
        stop = min(start + chunk_size, queries.shape[0])
        scores = queries[start:stop] @ gallery.T
        correct = query_labels[start:stop, None] == gallery_labels[None, :]
        query_indices = torch.arange(start, stop, device=queries.device)
        ranks[start:stop] = _rank_chunk(scores, correct, query_indices, k_test, rescore).cpu()
        task.advance(stop - start)
    return ranks.numpy()


def rank_from_features(
    image_features: Tensor,
    text_features: Tensor,
    caption_image: np.ndarray,
    *,
    k_test: int | None = None,
    reranker: Reranker | None = None,
    chunk_size: int = 256,
    progress: Progress | None = None,
) -> RetrievalResult:
    """TR and IR ranks from ITC features, optionally re-ranking each query's top `k_test`.

    Similarity is the float32 dot product (features are expected L2-normalised). A query's
    rank is the number of *incorrect* gallery items scoring >= its best correct item, so ties
    count against the query: an attack that collapses every score to one constant must not
    look like retrieval success. With a `reranker` each query's top-`k_test` ITC items are
    re-scored and ordered by the new score (ties again pessimistic); every other gallery item
    stays after them in ITC order. Without a reranker `k_test` changes nothing, since ITC
    order restricted to the top k is ITC order.
    """
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            "image_features and text_features must be 2-D [items, dim], got shapes "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    num_images, num_captions = image_features.shape[0], text_features.shape[0]
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"image features have dimension {image_features.shape[1]} but text features "
            f"{text_features.shape[1]}; both must come from the same embedding space"
        )
    if num_images == 0 or num_captions == 0:
        raise ValueError("retrieval needs at least one image and one caption")
    caption_labels = np.asarray(caption_image, dtype=np.int64)
    if caption_labels.shape != (num_captions,):
        raise ValueError(
            f"caption_image must have one entry per caption ({num_captions}), "
            f"got shape {caption_labels.shape}"
        )
    if caption_labels.min() < 0 or caption_labels.max() >= num_images:
        raise ValueError(f"caption_image holds image indices outside [0, {num_images - 1}]")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if k_test is not None and k_test < 1:
        raise ValueError(f"k_test must be a positive number of candidates, got {k_test}")
    if reranker is not None and k_test is None:
        raise ValueError(
            "a reranker needs k_test (how many ITC candidates per query to re-score); "
            "pass k_test, e.g. 128 for Flickr30k or 256 for COCO"
        )
    progress = NullProgress() if progress is None else progress

    device = image_features.device
    images = image_features.detach().to(dtype=torch.float32)
    texts = text_features.detach().to(device=device, dtype=torch.float32)
    text_labels = torch.as_tensor(caption_labels, device=device)
    image_labels = torch.arange(num_images, device=device)
    score_images = None if reranker is None else reranker.score_image_queries
    score_texts = None if reranker is None else reranker.score_text_queries

    with torch.no_grad():
        task = progress.task("text retrieval (image queries)", num_images)
        with task:
            tr_ranks = _rank_queries(
                images,
                texts,
                image_labels,
                text_labels,
                k_test=k_test,
                rescore=score_images,
                chunk_size=chunk_size,
                task=task,
            )
        task = progress.task("image retrieval (caption queries)", num_captions)
        with task:
            ir_ranks = _rank_queries(
                texts,
                images,
                text_labels,
                image_labels,
                k_test=k_test,
                rescore=score_texts,
                chunk_size=chunk_size,
                task=task,
            )
    return RetrievalResult(tr_ranks=tr_ranks, ir_ranks=ir_ranks)


def encode_dataset(
    victim: Any,
    dataset: CaptionDataset,
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> tuple[Tensor, Tensor]:
    """ITC features of every image `[N, D]` and caption `[T, D]`, in dataset order.

    Images are loaded at the victim's own size and resize mode, batch by batch, so memory
    holds one batch of pixels at a time; features stay on the victim's device.
    """
    from robust.data.images import load_images

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    progress = NullProgress() if progress is None else progress
    device = torch.device(getattr(victim, "device", "cpu"))
    image_batches: list[Tensor] = []
    text_batches: list[Tensor] = []
    with torch.no_grad():
        task = progress.task("encoding images", dataset.num_images)
        with task:
            for start in range(0, dataset.num_images, batch_size):
                indices = list(range(start, min(start + batch_size, dataset.num_images)))
                pixels = load_images(
                    dataset.images, indices, size=victim.image_size, mode=victim.resize_mode
                )
                image_batches.append(victim.encode_image(pixels.to(device)).float())
                task.advance(len(indices))
        task = progress.task("encoding captions", dataset.num_captions)
        with task:
            for start in range(0, dataset.num_captions, batch_size):
                texts: Sequence[str] = dataset.captions[start : start + batch_size]
                text_batches.append(victim.encode_text(list(texts)).float())
                task.advance(len(texts))
    return torch.cat(image_batches), torch.cat(text_batches)


def evaluate_retrieval(
    victim: Any,
    dataset: CaptionDataset,
    *,
    batch_size: int = 64,
    k_test: int | None = None,
    reranker: Reranker | None = None,
    progress: Progress | None = None,
) -> RetrievalResult:
    """Encode a dataset with a victim and rank it: the clean or adversarial retrieval score."""
    image_features, text_features = encode_dataset(
        victim, dataset, batch_size=batch_size, progress=progress
    )
    return rank_from_features(
        image_features,
        text_features,
        dataset.caption_image,
        k_test=k_test,
        reranker=reranker,
        progress=progress,
    )


def asr_sga(clean_correct: np.ndarray, adv_correct: np.ndarray) -> float:
    """SGA's ASR@K: the share of clean-correct queries that the attack makes incorrect.

    Queries wrong before the attack are left out, so this isolates what the attack broke.
    Returns nan when no query was correct on clean data (the rate is undefined, not zero).
    """
    clean = np.asarray(clean_correct, dtype=bool)
    adversarial = np.asarray(adv_correct, dtype=bool)
    if clean.shape != adversarial.shape:
        raise ValueError(
            f"clean and adversarial correctness must cover the same queries, got shapes "
            f"{clean.shape} and {adversarial.shape}"
        )
    clean_count = int(clean.sum())
    if clean_count == 0:
        return float("nan")
    return int((clean & ~adversarial).sum()) / clean_count


def asr_coattack(clean_recall: float, adv_recall: float) -> float:
    """Co-Attack's convention: the drop in R@K, clean minus adversarial (a fraction)."""
    return float(clean_recall) - float(adv_recall)


def attack_success(
    clean: RetrievalResult,
    adversarial: RetrievalResult,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """Both ASR conventions for TR and IR at each K: `{tr,ir}_asr_r{K}` (SGA) and
    `{tr,ir}_drop_r{K}` (Co-Attack)."""
    if (clean.num_images, clean.num_captions) != (
        adversarial.num_images,
        adversarial.num_captions,
    ):
        raise ValueError(
            "clean and adversarial results cover different queries: "
            f"{clean.num_images} images / {clean.num_captions} captions vs "
            f"{adversarial.num_images} images / {adversarial.num_captions} captions; "
            "evaluate both on the same dataset"
        )
    values: dict[str, float] = {}
    for side in ("tr", "ir"):
        for k in ks:
            clean_correct = getattr(clean, f"{side}_correct")(k)
            adv_correct = getattr(adversarial, f"{side}_correct")(k)
            values[f"{side}_asr_r{k}"] = asr_sga(clean_correct, adv_correct)
            values[f"{side}_drop_r{k}"] = asr_coattack(_mean(clean_correct), _mean(adv_correct))
    return values
