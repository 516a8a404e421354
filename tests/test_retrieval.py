"""Retrieval evaluation: ranks, pessimistic ties, re-ranking, R@K and both ASR conventions."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robust.data.dataset import ArrayImages, CaptionDataset
from robust.eval.retrieval import (
    METRIC_NAMES,
    RetrievalResult,
    asr_coattack,
    asr_sga,
    attack_success,
    encode_dataset,
    evaluate_retrieval,
    rank_from_features,
)


def features_for(scores: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Image/text features whose dot products are exactly `scores` [N, T].

    Image rows are the score rows and text features the identity, so the similarity matrix is
    whatever a test writes down (the ranking math does not need unit norms).
    """
    scores_t = torch.tensor(scores, dtype=torch.float32)
    return scores_t, torch.eye(scores_t.shape[1])


class MatrixReranker:
    """A fake fusion model whose pair score is a fixed [N, T] matrix; records its calls."""

    def __init__(self, scores: np.ndarray) -> None:
        self.scores = torch.tensor(scores, dtype=torch.float32)
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def score_image_queries(
        self, image_indices: torch.Tensor, text_candidates: torch.Tensor
    ) -> torch.Tensor:
        assert image_indices.dtype == torch.int64 and text_candidates.dtype == torch.int64
        self.calls.append(("image", tuple(text_candidates.shape)))
        return self.scores[image_indices[:, None], text_candidates]

    def score_text_queries(
        self, text_indices: torch.Tensor, image_candidates: torch.Tensor
    ) -> torch.Tensor:
        assert text_indices.dtype == torch.int64 and image_candidates.dtype == torch.int64
        self.calls.append(("text", tuple(image_candidates.shape)))
        return self.scores[image_candidates, text_indices[:, None]]


def reference_ranks(
    itc: np.ndarray, correct: np.ndarray, rerank: np.ndarray | None = None, k: int = 0
) -> np.ndarray:
    """Rank per row by building the full ordered list, ties placing incorrect items first."""
    ranks = []
    for row in range(itc.shape[0]):
        order = np.lexsort((correct[row], -itc[row]))
        if rerank is not None:
            top = order[:k]
            top = top[np.lexsort((correct[row, top], -rerank[row, top]))]
            order = np.concatenate([top, order[k:]])
        hits = np.flatnonzero(correct[row, order])
        ranks.append(hits[0] if hits.size else itc.shape[1])
    return np.array(ranks, dtype=np.int64)


# Three images with two captions each; captions 2t and 2t+1 describe image t.
MULTI_CAPTION_SCORES = np.array(
    [
        [0.9, 0.1, 0.8, 0.2, 0.3, 0.0],
        [0.5, 0.4, 0.5, 0.1, 0.2, 0.3],
        [0.7, 0.6, 0.5, 0.4, 0.1, 0.2],
    ]
)
MULTI_CAPTION_IMAGE = np.array([0, 0, 1, 1, 2, 2])


def test_multi_caption_ranks_by_hand() -> None:
    result = rank_from_features(*features_for(MULTI_CAPTION_SCORES), MULTI_CAPTION_IMAGE)
    # image 0: caption 0 scores highest -> 0; image 1: best own caption 0.5 ties caption 0 (0.5),
    # counted against it -> 1; image 2: best own caption 0.2 behind captions 0-3 -> 4.
    assert result.tr_ranks.tolist() == [0, 1, 4]
    # caption 2 (image 1, 0.5) ties image 2 (0.5) and trails image 0 (0.8) -> 2;
    # caption 5 (image 2, 0.2) trails image 1 (0.3) -> 1.
    assert result.ir_ranks.tolist() == [0, 2, 2, 2, 2, 1]
    assert result.tr_ranks.dtype == np.int64 and result.ir_ranks.dtype == np.int64
    assert result.tr_correct(1).tolist() == [True, False, False]
    assert result.ir_correct(2).tolist() == [True, False, False, False, False, True]
    assert result.recall(1) == pytest.approx((1 / 3, 1 / 6))
    assert result.recall(5) == (1.0, 1.0)
    metrics = result.metrics()
    assert list(metrics) == list(METRIC_NAMES)
    expected = {"tr_r1": 1 / 3, "tr_r5": 1.0, "tr_r10": 1.0, "ir_r1": 1 / 6}
    expected |= {"ir_r5": 1.0, "ir_r10": 1.0}
    expected["r_mean"] = sum(expected.values()) / 6
    assert metrics == pytest.approx(expected)


@pytest.mark.parametrize("diagonal", [0.5, 0.9])
def test_recall_at_1_5_10_on_a_staircase(diagonal: float) -> None:
    # 12 images, one caption each. Image i's caption is beaten by the i captions j < i
    # (0.9 against 0.5); caption j's image is beaten by the 11 - j images i > j. With the
    # diagonal raised to 0.9 those become ties, which still count against the query.
    size = 12
    lower = np.tril(np.full((size, size), 0.9), k=-1)
    upper = np.triu(np.full((size, size), 0.1), k=1)
    scores = lower + upper + np.eye(size) * diagonal
    result = rank_from_features(*features_for(scores), np.arange(size))
    assert result.tr_ranks.tolist() == list(range(size))
    assert result.ir_ranks.tolist() == list(reversed(range(size)))
    metrics = result.metrics()
    for side in ("tr", "ir"):
        assert metrics[f"{side}_r1"] == pytest.approx(1 / 12)
        assert metrics[f"{side}_r5"] == pytest.approx(5 / 12)
        assert metrics[f"{side}_r10"] == pytest.approx(10 / 12)
    assert metrics["r_mean"] == pytest.approx((1 + 5 + 10) / 36)


def test_collapsed_or_broken_scores_are_never_retrieval_success() -> None:
    images, captions_per_image = 12, 2
    caption_image = np.repeat(np.arange(images), captions_per_image)
    constant = torch.ones(1, 4) / 2.0
    result = rank_from_features(
        constant.expand(images, 4), constant.expand(len(caption_image), 4), caption_image
    )
    assert set(result.tr_ranks.tolist()) == {len(caption_image) - captions_per_image}
    assert set(result.ir_ranks.tolist()) == {images - 1}
    assert all(value == 0.0 for value in result.metrics().values())

    nan_images = torch.full((images, 4), float("nan"))
    broken = rank_from_features(nan_images, torch.randn(len(caption_image), 4), caption_image)
    assert broken.metrics()["r_mean"] == 0.0


def test_chunk_size_does_not_change_ranks() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(9, 5, generator=generator)
    texts = torch.randn(23, 5, generator=generator)
    texts[7] = texts[3]  # exact ties across the gallery
    caption_image = torch.randint(0, 9, (23,), generator=generator).numpy()
    reranker = MatrixReranker(torch.randn(9, 23, generator=generator).round(decimals=1).numpy())
    for k_test, used in ((None, None), (4, reranker)):
        results = [
            rank_from_features(
                images, texts, caption_image, k_test=k_test, reranker=used, chunk_size=chunk
            )
            for chunk in (1, 2, 5, 1000)
        ]
        assert all(result == results[0] for result in results[1:])


def test_reranker_with_k_test_covering_gallery_equals_ranking_all_pairs_by_its_score() -> None:
    generator = torch.Generator().manual_seed(1)
    num_images, captions_per_image = 7, 3
    caption_image = np.repeat(np.arange(num_images), captions_per_image)
    num_captions = len(caption_image)
    pair_scores = torch.randint(0, 5, (num_images, num_captions), generator=generator).numpy()
    reranker = MatrixReranker(pair_scores / 4.0)
    itc_images = torch.randn(num_images, 6, generator=generator)
    itc_texts = torch.randn(num_captions, 6, generator=generator)

    reranked = rank_from_features(
        itc_images, itc_texts, caption_image, k_test=num_captions, reranker=reranker, chunk_size=3
    )
    brute_force = rank_from_features(*features_for(pair_scores / 4.0), caption_image)
    assert reranked == brute_force
    correct = caption_image[None, :] == np.arange(num_images)[:, None]
    assert reranked.tr_ranks.tolist() == reference_ranks(pair_scores, correct).tolist()
    assert reranked.ir_ranks.tolist() == reference_ranks(pair_scores.T, correct.T).tolist()
    # batched: one call per chunk of queries, every candidate re-scored
    assert ("image", (3, num_captions)) in reranker.calls
    assert ("text", (3, num_images)) in reranker.calls


# ITC and re-rank scores for 4 images with one caption each (caption t describes image t).
SMALL_ITC = np.array(
    [
        [0.1, 0.9, 0.8, 0.7],
        [0.9, 0.8, 0.2, 0.1],
        [0.6, 0.3, 0.9, 0.5],
        [0.9, 0.5, 0.1, 0.5],
    ]
)
SMALL_RERANK = np.array(
    [
        [1.0, 1.0, 0.3, 0.4],
        [0.0, 1.0, 0.5, 0.5],
        [0.5, 0.0, 0.1, 0.9],
        [0.0, 0.2, 0.0, 1.0],
    ]
)


def test_small_k_test_keeps_items_outside_the_top_k_after_it() -> None:
    reranker = MatrixReranker(SMALL_RERANK)
    result = rank_from_features(*features_for(SMALL_ITC), np.arange(4), k_test=2, reranker=reranker)
    # image 0: own caption is 4th by ITC, outside the top 2, so the reranker's 1.0 for it is
    #   never asked for: both top-2 captions, then caption 3 (0.7) come first -> 3.
    # image 1: top 2 = captions 0, 1; reranker prefers its own caption -> 0.
    # image 2: top 2 = captions 2, 0; reranker puts caption 0 first -> 1; caption 3's high
    #   re-rank score does not lift it since it was outside the top 2.
    # image 3: own caption ties caption 1 at the cut (0.5); the tie goes against the query,
    #   so caption 1 takes the last slot and its own caption follows the top 2 -> 2.
    assert result.tr_ranks.tolist() == [3, 0, 1, 2]
    # caption 0: its image is behind images 1, 3 (top 2) and image 2 (0.6) -> 3;
    # caption 1: top 2 = images 0, 1, re-rank tie at 1.0 counts against it -> 1;
    # caption 2: top 2 = images 2, 0, reranker prefers image 0 -> 1;
    # caption 3: its image ties image 2 at the cut and loses the slot -> 2.
    assert result.ir_ranks.tolist() == [3, 1, 1, 2]
    assert {shape for _, shape in reranker.calls} == {(4, 2)}
    correct = np.eye(4, dtype=bool)
    assert result.tr_ranks.tolist() == reference_ranks(SMALL_ITC, correct, SMALL_RERANK, 2).tolist()
    # without the cut the reranker alone would decide, and image 0 would come out on top
    full = rank_from_features(*features_for(SMALL_ITC), np.arange(4), k_test=4, reranker=reranker)
    assert full.tr_ranks[0] == 1


def test_rejects_bad_input() -> None:
    images, texts = features_for(SMALL_ITC)
    with pytest.raises(ValueError, match="k_test"):
        rank_from_features(images, texts, np.arange(4), reranker=MatrixReranker(SMALL_RERANK))

    class OneScorePerQuery(MatrixReranker):
        def score_image_queries(self, image_indices, text_candidates):  # type: ignore[override]
            return super().score_image_queries(image_indices, text_candidates)[:, :1]

    with pytest.raises(ValueError, match="shape"):
        rank_from_features(
            images, texts, np.arange(4), k_test=2, reranker=OneScorePerQuery(SMALL_RERANK)
        )
    with pytest.raises(ValueError, match="caption_image"):
        rank_from_features(images, texts, np.array([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="dimension"):
        rank_from_features(images, texts[:, :3], np.arange(4))


def test_asr_sga_counts_only_clean_correct_queries() -> None:
    clean = np.array([True, True, False, True])
    adversarial = np.array([False, True, True, False])
    # 3 clean-correct queries, 2 of them broken; the third query's gain is ignored
    assert asr_sga(clean, adversarial) == pytest.approx(2 / 3)
    assert asr_sga(clean, clean) == 0.0
    assert math.isnan(asr_sga(np.zeros(4, dtype=bool), adversarial))
    with pytest.raises(ValueError):
        asr_sga(clean, adversarial[:3])


def test_asr_coattack_is_the_recall_drop() -> None:
    assert asr_coattack(0.8, 0.5) == pytest.approx(0.3)
    assert asr_coattack(0.5, 0.6) == pytest.approx(-0.1)


def test_attack_success_reports_both_conventions() -> None:
    clean = RetrievalResult(tr_ranks=np.array([0, 3, 7]), ir_ranks=np.array([0, 0, 5, 12, 1, 9]))
    adversarial = RetrievalResult(
        tr_ranks=np.array([2, 0, 20]), ir_ranks=np.array([0, 4, 10, 0, 1, 9])
    )
    values = attack_success(clean, adversarial)
    expected = {
        "tr_asr_r1": 1.0,
        "tr_drop_r1": 0.0,
        "tr_asr_r5": 0.0,
        "tr_drop_r5": 0.0,
        "tr_asr_r10": 1 / 3,
        "tr_drop_r10": 1 / 3,
        "ir_asr_r1": 1 / 2,
        "ir_drop_r1": 0.0,
        "ir_asr_r5": 0.0,
        "ir_drop_r5": -1 / 6,
        "ir_asr_r10": 1 / 5,
        "ir_drop_r10": 0.0,
    }
    assert set(values) == set(expected)
    assert values == pytest.approx(expected)
    never_correct = RetrievalResult(tr_ranks=np.full(3, 50), ir_ranks=np.full(6, 50))
    assert math.isnan(attack_success(never_correct, adversarial, ks=(1,))["tr_asr_r1"])
    with pytest.raises(ValueError, match="different queries"):
        attack_success(clean, RetrievalResult(tr_ranks=np.zeros(3), ir_ranks=np.zeros(5)))


@st.composite
def retrieval_problems(draw: st.DrawFn) -> tuple:
    num_images = draw(st.integers(1, 5))
    counts = draw(st.lists(st.integers(1, 3), min_size=num_images, max_size=num_images))
    caption_image = np.repeat(np.arange(num_images), counts)
    num_captions = len(caption_image)
    dim = draw(st.integers(1, 3))
    values = st.integers(-2, 2)
    image_values = draw(st.lists(values, min_size=num_images * dim, max_size=num_images * dim))
    text_values = draw(st.lists(values, min_size=num_captions * dim, max_size=num_captions * dim))
    rerank_values = draw(
        st.lists(values, min_size=num_images * num_captions, max_size=num_images * num_captions)
    )
    k_test = draw(st.one_of(st.none(), st.integers(1, 8)))
    chunk_size = draw(st.integers(1, 4))
    return (
        torch.tensor(image_values, dtype=torch.float32).reshape(num_images, dim),
        torch.tensor(text_values, dtype=torch.float32).reshape(num_captions, dim),
        caption_image,
        np.array(rerank_values, dtype=np.float64).reshape(num_images, num_captions),
        k_test,
        chunk_size,
    )


@settings(max_examples=60, deadline=None)
@given(retrieval_problems())
def test_ranks_are_in_range_recall_is_monotone_and_match_reference(problem: tuple) -> None:
    images, texts, caption_image, rerank, k_test, chunk_size = problem
    reranker = None if k_test is None else MatrixReranker(rerank)
    result = rank_from_features(
        images, texts, caption_image, k_test=k_test, reranker=reranker, chunk_size=chunk_size
    )
    num_images, num_captions = len(images), len(texts)
    assert 0 <= result.tr_ranks.min() and result.tr_ranks.max() <= num_captions - 1
    assert 0 <= result.ir_ranks.min() and result.ir_ranks.max() <= num_images - 1
    recalls = [result.recall(k) for k in range(1, max(num_images, num_captions) + 2)]
    for lower, higher in zip(recalls, recalls[1:], strict=False):
        assert lower[0] <= higher[0] and lower[1] <= higher[1]
    assert recalls[-1] == (1.0, 1.0)

    itc = (images @ texts.T).numpy()
    correct = caption_image[None, :] == np.arange(num_images)[:, None]
    if reranker is None:
        expected_tr = reference_ranks(itc, correct)
        expected_ir = reference_ranks(itc.T, correct.T)
    else:
        expected_tr = reference_ranks(itc, correct, rerank, min(k_test, num_captions))
        expected_ir = reference_ranks(itc.T, correct.T, rerank.T, min(k_test, num_images))
    assert result.tr_ranks.tolist() == expected_tr.tolist()
    assert result.ir_ranks.tolist() == expected_ir.tolist()


class FakeVictim(nn.Module):
    """A tiny ITC model: fixed random projection of mean colour; hashed caption embeddings."""

    image_size = 8
    resize_mode = "squash"
    device = torch.device("cpu")

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.projection = nn.Parameter(torch.randn(3, dim, generator=generator))
        self.dim = dim
        self.image_batches: list[tuple[int, ...]] = []

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.image_batches.append(tuple(images.shape))
        features = images.mean(dim=(2, 3)) @ self.projection
        return nn.functional.normalize(features, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            generator = torch.Generator().manual_seed(zlib.crc32(text.encode()))
            rows.append(torch.randn(self.dim, generator=generator))
        return nn.functional.normalize(torch.stack(rows), dim=-1)


def test_evaluate_retrieval_encodes_every_image_and_caption_in_order() -> None:
    from robust.data.images import load_images

    rng = np.random.default_rng(0)
    num_images = 5
    pixels = rng.integers(0, 256, size=(num_images, 10, 12, 3), dtype=np.uint8)
    caption_image = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    dataset = CaptionDataset(
        name="tiny",
        images=ArrayImages(pixels),
        image_ids=tuple(f"img{i}" for i in range(num_images)),
        captions=tuple(f"caption {t} of image {i}" for t, i in enumerate(caption_image)),
        caption_image=caption_image,
    )
    victim = FakeVictim()

    image_features, text_features = encode_dataset(victim, dataset, batch_size=2)
    assert victim.image_batches == [(2, 3, 8, 8), (2, 3, 8, 8), (1, 3, 8, 8)]
    assert not image_features.requires_grad
    with torch.no_grad():
        expected_images = victim.encode_image(load_images(dataset.images, range(5), size=8))
        expected_texts = victim.encode_text(list(dataset.captions))
    torch.testing.assert_close(image_features, expected_images)
    torch.testing.assert_close(text_features, expected_texts)

    result = evaluate_retrieval(victim, dataset, batch_size=4)
    assert result == rank_from_features(expected_images, expected_texts, caption_image)
    assert (result.num_images, result.num_captions) == (5, 9)
