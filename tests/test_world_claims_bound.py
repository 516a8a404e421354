"""The one-word swaps of a world caption and the additive reader that bounds BERT-Attack on a
world version (tools/world_claims_bound.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from robust.data.world import COLORS, attribute_swaps, confusable_words, parse_caption

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import world_claims_bound as bound  # noqa: E402

CAPTION = "a red square and a big blue letter q on a white background"
SCENE = {
    "background": "white",
    "objects": [
        {"shape": "square", "color": "red", "size": "small", "position": "top left"},
        {"shape": "letter q", "color": "blue", "size": "large", "position": "bottom"},
    ],
}


def test_attribute_swaps_replace_one_name_each_including_multi_word_names():
    swaps = attribute_swaps(CAPTION, "world-v3")
    replaced = {name for name, _ in swaps}
    assert replaced == {"red", "square", "big", "blue", "letter q"}
    confusable = confusable_words("world-v3")
    assert len(swaps) == sum(len(confusable[name]) for name in replaced)
    assert ("red", CAPTION.replace("red", "green")) in swaps
    assert ("letter q", CAPTION.replace("letter q", "letter r")) in swaps
    for _, text in swaps:
        assert text != CAPTION
        assert len(set(text.split(" ")) ^ set(CAPTION.split(" "))) <= 4


def test_claims_tie_sizes_and_fills_to_their_object():
    caption = bound.caption_claims(parse_caption(CAPTION))
    assert caption == {
        ("background", "white"),
        ("object", "red", "square"),
        ("object", "blue", "letter q"),
        ("size", "large", "blue", "letter q"),
    }
    assert caption <= bound.scene_claims(SCENE)
    assert bound.additive_score(caption, bound.scene_claims(SCENE), penalty=2.0) == 4


def test_worst_swap_makes_exactly_the_costliest_claim_false():
    scene = bound.scene_claims(SCENE)
    worst = bound.worst_swap(CAPTION, scene, penalty=1.0, version="world-v3")
    # a colour or shape swap falsifies the object and its size claim together: 2 of 4 false
    assert bound.additive_score(worst, scene, penalty=1.0) == 0
    assert len(worst - scene) == 2
    assert worst != bound.caption_claims(parse_caption(CAPTION))


def test_tr_r1_needs_an_own_caption_strictly_above_every_other():
    own = bound.caption_claims(parse_caption(CAPTION))
    # image 1 holds the blue q on white but no red square: its own caption (the red square)
    # is false of it, while image 0's caption is three quarters true of it
    other = frozenset({("object", "red", "square")})
    scenes = [bound.scene_claims(SCENE), own - other]
    owner = np.array([0, 1])
    assert bound.tr_r1_correct([own, other], owner, scenes, 1.0).tolist() == [True, False]
    # the other image's caption ties with image 0's own caption: a tie is a miss
    assert not bound.tr_r1_correct([other, other], owner, scenes, 1.0)[0]


def test_every_swap_of_every_world_caption_still_parses():
    for color in list(COLORS)[:2]:
        caption = f"a {color} striped triangle and a small green box"
        for _, text in attribute_swaps(caption, "world"):
            parse_caption(text)
