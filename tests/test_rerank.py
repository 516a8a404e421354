"""ITM re-ranking: batched cached scoring equals brute-force ITM over every pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust.data.images import load_images
from robust.eval.rerank import ItmReranker, default_k_test, evaluate_reranked
from robust.victims.albef import AlbefVictim
from robust.victims.blip import BlipRetrievalVictim
from tests.test_albef import WORDS, tiny_model
from tests.test_blip import make_tokenizer, tiny_config


@pytest.fixture(scope="module")
def albef(tmp_path_factory) -> AlbefVictim:
    path = tmp_path_factory.mktemp("rerank-vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return AlbefVictim("tiny-albef", tiny_model(), path).eval()


@pytest.fixture(scope="module")
def blip(tmp_path_factory) -> BlipRetrievalVictim:
    from transformers import BlipForImageTextRetrieval

    from robust.victims.blip import save_blip

    tokenizer = make_tokenizer(tmp_path_factory.mktemp("rerank-blip-vocab"))
    torch.manual_seed(0)
    model = BlipForImageTextRetrieval(tiny_config(tokenizer)).eval()
    folder = tmp_path_factory.mktemp("rerank-blip")
    save_blip(model, tokenizer, folder, mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32)
    return BlipRetrievalVictim.from_spec(str(folder), "tiny-blip")


def brute_force_scores(victim, dataset) -> torch.Tensor:
    """Every (image, caption) pair through the victim's own pairwise ITM, fused per family."""
    images = load_images(dataset.images, range(dataset.num_images), victim.image_size, "squash")
    scores = torch.empty(dataset.num_images, dataset.num_captions)
    with torch.no_grad():
        image_features = victim.encode_image(images)
        text_features = victim.encode_text(list(dataset.captions))
        for i in range(dataset.num_images):
            repeated = images[i : i + 1].expand(dataset.num_captions, -1, -1, -1)
            scores[i] = victim.itm_logits(repeated, list(dataset.captions))
    if victim.retrieval_score_fusion == "itm+itc":
        scores = scores + image_features @ text_features.T
    return scores


# Brute force and the re-ranker reach the same scores by different batching, so scores that
# agree to round-off may order either way; a tiny random model scores many pairs that close.
ROUND_OFF = 1e-6


def pessimistic_rank_bounds(
    scores: torch.Tensor, caption_image: np.ndarray
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Per TR and IR query, the (lowest, highest) pessimistic rank that scores within
    ROUND_OFF of these allow: wrong candidates clearly above the right one always count, those
    within round-off of it may."""
    correct = torch.as_tensor(caption_image)[None, :] == torch.arange(scores.shape[0])[:, None]

    def bounds(row: torch.Tensor, target: torch.Tensor, wrong: torch.Tensor) -> tuple[int, int]:
        low = int(((row > target + ROUND_OFF) & wrong).sum())
        return low, int(((row >= target - ROUND_OFF) & wrong).sum())

    tr = [
        bounds(scores[i], scores[i][correct[i]].max(), ~correct[i]) for i in range(scores.shape[0])
    ]
    ir = [
        bounds(scores[:, t], scores[caption_image[t], t], ~correct[:, t])
        for t in range(scores.shape[1])
    ]
    return tr, ir


@pytest.mark.parametrize("family", ["albef", "blip"])
def test_reranking_the_whole_gallery_equals_brute_force_itm(family, albef, blip, world_small):
    victim = albef if family == "albef" else blip
    dataset = world_small.subset(6)
    expected_scores = brute_force_scores(victim, dataset)
    itc, reranked = evaluate_reranked(victim, dataset, k_test=dataset.num_captions)
    expected_tr, expected_ir = pessimistic_rank_bounds(expected_scores, dataset.caption_image)
    for ranks, expected in ((reranked.tr_ranks, expected_tr), (reranked.ir_ranks, expected_ir)):
        assert all(low <= rank <= high for rank, (low, high) in zip(ranks, expected, strict=True))
    # every image query is decided beyond round-off, so the bounds pin its rank exactly (the
    # tiny random BLIP scores one caption nearly alike against every image, so its caption
    # queries are only bounded)
    assert all(low == high for low, high in expected_tr)
    assert itc.tr_ranks.shape == reranked.tr_ranks.shape


def test_cached_pair_scores_match_pairwise_itm(albef, world_small):
    from robust.eval.retrieval import encode_dataset

    dataset = world_small.subset(4)
    image_features, text_features = encode_dataset(albef, dataset)
    reranker = ItmReranker.build(
        albef, dataset, image_features, text_features, batch_size=3, pair_batch_size=5
    )
    candidates = torch.tensor([[0, 7, 19], [3, 2, 1]])
    scores = reranker.score_image_queries(torch.tensor([1, 2]), candidates)
    images = load_images(dataset.images, [1, 1, 1, 2, 2, 2], albef.image_size, "squash")
    texts = [dataset.captions[t] for t in candidates.flatten().tolist()]
    with torch.no_grad():
        expected = albef.itm_logits(images, texts).view(2, 3)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    # the cache keeps only up to the longest caption's tokens, not all padded positions
    longest = max(int(albef.tokenize([text])[1].sum()) for text in dataset.captions)
    assert reranker.text_inputs.shape[1] == reranker.text_mask.shape[1] == longest


@pytest.mark.parametrize("family", ["albef", "blip"])
def test_defended_fusion_victim_reranks_its_defended_images(family, albef, blip, world_small):
    """The re-ranker's cached halves see the defense: its scores equal pairwise ITM of the
    defended images (ALBEF's cached cross-attention keys/values included)."""
    from robust.defenses.defended import DefendedVictim
    from robust.defenses.transforms import GaussianSmoothing
    from robust.eval.retrieval import encode_dataset

    victim = albef if family == "albef" else blip
    defense = GaussianSmoothing(5)
    dataset = world_small.subset(3)
    queries, candidates = torch.tensor([0, 2]), torch.tensor([[0, 4], [5, 1]])
    scores = {}
    for scored in (victim, DefendedVictim(victim, defense)):
        reranker = ItmReranker.build(scored, dataset, *encode_dataset(scored, dataset))
        scores[scored.name] = reranker.score_image_queries(queries, candidates)
    images = load_images(dataset.images, [0, 0, 2, 2], victim.image_size, "squash")
    texts = [dataset.captions[t] for t in candidates.flatten().tolist()]
    with torch.no_grad():
        expected = victim.itm_logits(defense(images), texts)
        if victim.retrieval_score_fusion == "itm+itc":
            expected += (victim.encode_image(defense(images)) * victim.encode_text(texts)).sum(-1)
    defended_scores = scores[f"{victim.name}+{defense.name}"]
    torch.testing.assert_close(defended_scores, expected.view(2, 2), rtol=1e-5, atol=1e-5)
    if family == "albef":  # the tiny random BLIP's embeddings ignore the pixels altogether
        assert not torch.allclose(defended_scores, scores[victim.name], rtol=1e-5, atol=1e-5)


def test_reranker_refuses_dual_encoders(tiny_open_clip_dir, world_small):
    import robust

    victim = robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")
    with pytest.raises(ValueError, match="no ITM head"):
        ItmReranker(victim, *(torch.zeros(1),) * 5)


def test_default_k_test_follows_the_official_configs(world_small):
    from robust.data.world import generate_world

    assert default_k_test(world_small) == 128
    assert default_k_test(generate_world("test-5k", count=1001)) == 256
