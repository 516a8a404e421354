"""Bias metrics on hand-built score matrices and captions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from robust.eval.bias import (
    IDEAL_DCG,
    BiasInputError,
    attribute_shift,
    caption_bias,
    caption_mentions,
    paired_ranks,
    relative_delta,
    relevance_bias,
)

# gallery [A0, A1, B0, B1]; both queries rank their A copy first and B copy second
SCORES = np.array([[0.9, 0.1, 0.5, 0.2], [0.3, 0.9, 0.2, 0.8]])
OWNERS = [0, 1]


def test_paired_ranks_are_one_based_positions():
    ranks = paired_ranks(SCORES, OWNERS)
    assert ranks.rank_a.tolist() == [1, 1]
    assert ranks.rank_b.tolist() == [2, 2]
    assert ranks.score_b.tolist() == [0.5, 0.8]


def test_relevance_bias_known_answers():
    bias = relevance_bias(paired_ranks(SCORES, OWNERS))
    assert bias["r1_a"] == 1.0 and bias["r1_b"] == 0.0
    assert bias["delta_r1"] == pytest.approx(200.0)
    assert bias["delta_r3"] == pytest.approx(0.0)
    assert bias["ndcg1_a"] == pytest.approx(1 / IDEAL_DCG)
    assert bias["ndcg1_a"] == pytest.approx(0.6131, abs=1e-4)
    assert bias["ndcg3_b"] == pytest.approx((1 / math.log2(3)) / IDEAL_DCG)
    expected = 200 * (1 - 1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert bias["delta_ndcg3"] == pytest.approx(expected)
    assert bias["delta_ndcg5"] == pytest.approx(expected)
    assert bias["rank_diff"] == pytest.approx(-1.0)
    assert bias["preference_rate"] == 0.0


def test_negative_delta_means_source_b_preferred():
    swapped = SCORES[:, [2, 3, 0, 1]]
    bias = relevance_bias(paired_ranks(swapped, OWNERS))
    assert bias["delta_r1"] == pytest.approx(-200.0)
    assert bias["rank_diff"] == pytest.approx(1.0)
    assert bias["preference_rate"] == 1.0


def test_ties_between_the_copies_favour_neither_source():
    tied = np.array([[0.7, 0.1, 0.7, 0.2]])
    ranks = paired_ranks(tied, [0])
    assert (ranks.rank_a[0], ranks.rank_b[0]) == (2, 2)
    bias = relevance_bias(ranks)
    assert math.isnan(bias["delta_r1"])
    assert bias["delta_r3"] == 0.0 and bias["preference_rate"] == 0.0


def test_metrics_are_averaged_over_caption_slots():
    # slot 0: A wins (delta +200); slot 1: B wins in both queries (delta -200)
    scores = np.array([[0.9, 0.1, 0.5, 0.2], [0.1, 0.5, 0.2, 0.9], [0.5, 0.1, 0.9, 0.2]])
    bias = relevance_bias(paired_ranks(scores, [0, 1, 0], slot=[0, 1, 1]))
    assert bias["delta_r1"] == pytest.approx(0.0)
    assert bias["r1_a"] == pytest.approx(0.5)
    assert bias["preference_rate"] == pytest.approx(0.5)


def test_rank_diff_ignores_queries_outside_the_top_100():
    pairs = 60
    scores = np.linspace(1.0, 0.0, 2 * pairs)[None, :].repeat(2, axis=0)
    # query 0: A copy first, B copy at rank 110 (excluded); query 1: A 1st, B 3rd
    scores[0, [0, pairs]] = [2.0, scores[0, 109]]
    scores[1, [1, pairs + 1]] = [2.0, 1.5]
    ranks = paired_ranks(scores, [0, 1])
    assert ranks.rank_b.tolist()[1] == 2
    assert ranks.rank_b[0] > 100
    assert relevance_bias(ranks)["rank_diff"] == pytest.approx(-1.0)


def test_relative_delta_definition():
    assert relative_delta(0.6, 0.4) == pytest.approx(40.0)
    assert relative_delta(0.4, 0.6) == pytest.approx(-40.0)
    assert math.isnan(relative_delta(0.0, 0.0))


def test_bad_shapes_fail_clearly():
    with pytest.raises(BiasInputError, match=r"\[queries, 2N\]"):
        paired_ranks(np.zeros((2, 3)), [0, 1])
    with pytest.raises(BiasInputError, match="outside"):
        paired_ranks(SCORES, [0, 2])


def _label(*objects):
    return {"objects": [{"color": c, "shape": s, "position": p} for c, s, p in objects]}


def test_attribute_shift_known_answer():
    labels = [
        _label(("red", "circle", "top")),
        _label(("blue", "square", "left")),
        _label(("red", "star", "top"), ("green", "circle", "center")),
    ]
    clean = np.eye(3)  # every caption retrieves its own image
    attacked = np.zeros((3, 3))
    attacked[:, 1] = 1.0  # the attack pulls every caption to the blue square
    rows = {(r.attribute, r.value): r for r in attribute_shift(clean, attacked, labels)}
    assert rows[("color", "red")].clean_share == pytest.approx(2 / 3)
    assert rows[("color", "red")].shift == pytest.approx(-2 / 3)
    assert rows[("color", "blue")].shift == pytest.approx(2 / 3)
    assert rows[("shape", "square")].attacked_share == 1.0
    assert rows[("position", "left")].shift == pytest.approx(2 / 3)
    assert len(rows) == 3 + 3 + 3


def test_caption_mentions_use_the_world_vocabulary():
    found = caption_mentions("Two shapes: a small red round dot and a big cyan plus sign")
    assert found == {"color": {"red", "cyan"}, "shape": {"circle", "cross"}, "count": 2}


def test_caption_bias_known_answers():
    clean = ["a red circle", "two shapes: a blue square and a green star"]
    attacked = ["a red circle and a pink box", "a blue square"]
    references = [["a red circle"], ["a blue square and a green star"]]
    bias = caption_bias(clean, attacked, references, target_concept="Pink")
    assert bias["change_rate"] == 1.0
    for attribute in ("color", "shape", "count"):
        assert bias[f"{attribute}_insertion_rate"] == 0.5
        assert bias[f"{attribute}_deletion_rate"] == 0.5
    assert bias["target_rate_clean"] == 0.0
    assert bias["target_rate_attacked"] == 0.5
    assert bias["target_insertion"] == 0.5
    assert bias["cider_drop"] == pytest.approx(bias["cider_clean"] - bias["cider_attacked"])
    assert bias["bleu1_drop"] > 0


def test_unchanged_captions_have_no_effect():
    captions = ["a red circle", "a blue square"]
    bias = caption_bias(captions, captions, [[c] for c in captions])
    assert bias["change_rate"] == 0.0
    assert bias["color_insertion_rate"] == bias["count_deletion_rate"] == 0.0
    assert bias["cider_drop"] == 0.0
