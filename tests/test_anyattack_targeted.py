"""AnyAttack's targeted reading: the caption target rate, and a released decoder end to end."""

from __future__ import annotations

import math

import pytest

from robust.data.world import caption_fits_scene, read_claims
from robust.eval.targeted import caption_claim_scores, targeted_claim_scores

STAR = {"shape": "star", "color": "red", "size": "large", "position": "top"}
BOX = {"shape": "square", "color": "blue", "size": "small", "position": "left"}
TARGET = {"background": "gray", "objects": [BOX, STAR]}
CLEAN = {"background": "black", "objects": [{**STAR, "color": "green", "shape": "circle"}]}
NOT_WORLD = "two dogs play in the snow"


def test_a_caption_cut_off_keeps_the_claims_it_completes():
    cut = read_claims("a picture of two objects, a big red star at the top, a little blue")
    assert cut.objects == (("large", "red", "star", "top"),)
    ended = read_claims("an image with a red star in the top right corner,")
    assert ended.objects == ((None, "red", "star", "top right"),)
    assert read_claims(NOT_WORLD).objects == ()
    assert caption_fits_scene(cut, TARGET, complete=False)
    assert not caption_fits_scene(cut, TARGET)  # the box is left out


@pytest.mark.parametrize(
    ("caption", "objects", "colors", "shapes", "all_true"),
    [
        ("a picture of two objects, a big red star at the top and a tiny blue box", 1, 1, 1, 1),
        ("a red star and a blue square on a gray background", 1, 1, 1, 1),
        ("a red star, a little blue", 1, 1, 1, 1),  # cut off: what it completes is true
        ("a red star and a green circle", 0.5, 0.5, 0.5, 0),
        ("a blue star", 0, 1, 1, 0),  # a colour and a shape the scene has, not one object
        ("a red star and a blue square on a black background", 1, 1, 1, 0),
        ("a green circle at the top", 0, 0, 0, 0),
    ],
)
def test_a_caption_scores_the_claims_true_of_the_scene(caption, objects, colors, shapes, all_true):
    scores = caption_claim_scores([caption], [TARGET])
    assert scores["objects_true"] == pytest.approx(objects)
    assert scores["color_true"] == pytest.approx(colors)
    assert scores["shape_true"] == pytest.approx(shapes)
    assert scores["all_true"] == all_true
    assert scores["readable"] == 1.0


def test_sizes_and_positions_count_in_all_true_only_where_named():
    wrong_size = caption_claim_scores(["a small red star at the top and a blue box"], [TARGET])
    assert wrong_size["objects_true"] == 1.0 and wrong_size["all_true"] == 0.0  # it is large
    moved = caption_claim_scores(["a red star on the left"], [TARGET])
    assert moved["objects_true"] == 1.0 and moved["all_true"] == 0.0
    assert caption_claim_scores(["a red star"], [TARGET])["all_true"] == 1.0


def test_an_unreadable_caption_claims_nothing_and_fits_nothing():
    scores = caption_claim_scores([NOT_WORLD, "a red star and a green circle"], [TARGET, TARGET])
    assert scores["readable"] == 0.5
    assert scores["objects_true"] == 0.5  # pooled over the claims made: 1 of 2
    assert scores["all_true"] == 0.0
    nothing = caption_claim_scores([NOT_WORLD], [TARGET])
    assert math.isnan(nothing["objects_true"]) and nothing["readable"] == 0.0


def test_each_gallery_is_read_against_the_target_and_the_clean_scene():
    generated = {
        "adv": ["a red star and a blue box", NOT_WORLD],
        "floor": ["a green circle at the top", "a green circle"],
        "ceiling": ["a red star and a blue box", "a red star and a blue box"],
    }
    scores = targeted_claim_scores(generated, [TARGET, TARGET], [CLEAN, CLEAN])
    assert scores["adv_vs_target_objects_true"] == 1.0
    assert scores["adv_vs_target_all_true"] == 0.5
    assert scores["adv_caption_readable"] == 0.5
    assert scores["floor_vs_target_objects_true"] == 0.0
    assert scores["floor_vs_clean_all_true"] == 1.0
    assert scores["ceiling_vs_target_all_true"] == 1.0
    assert scores["ceiling_vs_clean_objects_true"] == 0.0
    assert len(scores) == 3 * (2 * 4 + 1)


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="2 captions but 1 scenes"):
        caption_claim_scores(["a red star", "a red star"], [TARGET])
    with pytest.raises(ValueError, match="no captions"):
        caption_claim_scores([], [])
