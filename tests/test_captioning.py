"""Caption metrics: hand-worked values, pycocoevalcap reference values, properties, bad input.

Reference values marked "pycocoevalcap 1.2" were produced once by running the pip package
pycocoevalcap 1.2 (Bleu(4), Rouge(), Cider() scorers; its Java PTBTokenizer for the tokeniser
cases and the punctuated corpus) in a throwaway virtual environment outside this project and
are hard-coded here; the package is not a dependency.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robust.errors import RobustError
from robust.eval.caption_metrics import (
    CaptionInputError,
    bleu,
    caption_change_rate,
    caption_metrics,
    cider,
    cider_scores,
    embedding_similarity,
    rouge_l,
    rouge_l_scores,
    tokenize,
)

# --------------------------------------------------------------------------- tokenisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # expected = output of the Java PTBTokenizer as run by pycocoevalcap 1.2
        ("A man, riding a horse.", "a man riding a horse"),
        ("The dog's ball isn't red!", "the dog 's ball is n't red"),
        ("Two people -- one in a t-shirt -- at 10:30...", "two people one in a t-shirt at 10:30"),
        ('He said "hi" (loudly); ok?', "he said hi -lrb- loudly -rrb- ok"),
        ("A cat & a dog $5 [x]", "a cat & a dog $ 5 -lsb- x -rsb-"),
        ("Don\u2019t \u201cquote\u201d me", "do n't quote me"),
        ("can't won't I'm we'll they're", "ca n't wo n't i 'm we 'll they 're"),
        ("3.5 1,000 people", "3.5 1,000 people"),
        ("A black/white cat on a sofa.", "a black/white cat on a sofa"),
        ("Mr. Smith cannot go", "mr. smith can not go"),
        ("a  double   space\nnewline", "a double space newline"),
        ("It's 5 o'clock, isn't it?", "it 's 5 o'clock is n't it"),
        ("50% off #deal @home e-mail", "50 % off #deal @home e-mail"),
        ("U.S.A. flags", "u.s.a. flags"),
        ("Two kids' bikes.", "two kids bikes"),
        ("A 'quoted' word", "a quoted word"),
        ("ramp!! what?!", "ramp !! what ?!"),
        ("a no. 5 jersey, say no.", "a no. 5 jersey say no"),
        ("", ""),
        ("...!?", "!?"),
    ],
)
def test_tokenize_matches_java_ptb(text: str, expected: str) -> None:
    assert " ".join(tokenize(text)) == expected


# --------------------------------------------------------------------------- BLEU


def test_identical_hypothesis_gives_bleu4_and_rouge_one() -> None:
    gen = ["A cat sits on the mat."]
    refs = [["a cat sits on the mat", "a dog"]]
    # closest ref length 6 = hypothesis length, every n-gram matches: p_n = (c+1e-15)/(c+1e-9)
    assert bleu(gen, refs)[3] == pytest.approx(1.0, abs=1e-9)
    assert rouge_l(gen, refs) == pytest.approx(1.0)


def test_bleu_two_sentence_corpus_by_hand() -> None:
    gen = ["the the the cat", "a dog runs on the grass"]
    refs = [["the cat sat", "a cat on the mat here"], ["a dog runs on grass", "the dog runs"]]
    # Sentence 1 (4 words; ref lengths 3, 6 -> closest 3):
    #   1-grams the x3 (clipped to 1: max count of "the" in one ref), cat 1 -> 2 / 4
    #   2-grams "the the" x2 (0), "the cat" (1) -> 1 / 3;  3-grams 0 / 2;  4-grams 0 / 1
    # Sentence 2 (6 words; ref lengths 5, 3 -> closest 5):
    #   1-grams all six appear in some ref -> 6 / 6
    #   2-grams a dog, dog runs, runs on (on the, the grass miss) -> 3 / 5
    #   3-grams a dog runs, dog runs on -> 2 / 4;  4-grams a dog runs on -> 1 / 3
    # Corpus: matches [8, 4, 2, 1], candidates [10, 8, 6, 4]; length 10 > ref length 8: no BP.
    p = [8 / 10, 4 / 8, 2 / 6, 1 / 4]
    expected = [math.prod(p[:n]) ** (1 / n) for n in range(1, 5)]
    # = [0.8, 0.632456, 0.510873, 0.427287]
    assert bleu(gen, refs) == pytest.approx(expected, rel=1e-8)
    # pycocoevalcap 1.2, Bleu(4), same (pre-tokenised) input:
    pycoco = [0.7999999999200001, 0.6324555319625248, 0.5108729548623383, 0.4272870063276903]
    assert bleu(gen, refs) == pytest.approx(pycoco, rel=1e-12)


def test_bleu_brevity_penalty_and_tiny_smoothing() -> None:
    gen = ["the cat"]
    refs = [["the cat sat on the mat", "the cat sat"]]
    # Ref lengths 6 and 3; closest to 2 is 3. BP = exp(1 - 3/2) = exp(-0.5) = 0.6065307.
    # p1 = 2/2, p2 = 1/1. No 3- or 4-grams: p3 = p4 = (0 + 1e-15) / (0 + 1e-9) = 1e-6.
    bp = math.exp(-0.5)
    got = bleu(gen, refs)
    assert got[0] == pytest.approx(bp, rel=1e-8)
    assert got[1] == pytest.approx(bp, rel=1e-8)
    assert got[2] == pytest.approx(bp * (1e-6) ** (1 / 3), rel=1e-8)  # 0.0060653
    assert got[3] == pytest.approx(bp * (1e-12) ** (1 / 4), rel=1e-8)  # 0.00060653
    # pycocoevalcap 1.2:
    pycoco = [0.6065306591061034, 0.6065306589544709, 0.0060653065910610355, 0.0006065306591819196]
    assert got == pytest.approx(pycoco, rel=1e-12)


def test_bleu_closest_length_ties_go_to_the_shorter_reference() -> None:
    # Hypothesis length 4; refs of length 3 and 5 are equally close. pycocoevalcap takes 3, so
    # no brevity penalty; taking 5 would multiply by exp(1 - 5/4) = 0.78.
    got = bleu(["one two three four"], [["one two three", "one two three four five"]])
    assert got[0] == pytest.approx(1.0, abs=1e-9)


def test_bleu_max_n_and_pretokenised_input() -> None:
    gen = ["the the the cat", "a dog runs on the grass"]
    refs = [["the cat sat", "a cat on the mat here"], ["a dog runs on grass", "the dog runs"]]
    assert bleu(gen, refs, max_n=2) == pytest.approx(bleu(gen, refs)[:2])
    assert bleu(gen, refs, tokenizer=str.split) == pytest.approx(bleu(gen, refs))


# --------------------------------------------------------------------------- ROUGE-L


def test_rouge_l_with_known_lcs() -> None:
    gen = ["a man is riding a horse", ""]
    refs = [["a person riding a brown horse", "man riding"], ["a dog"]]
    # Image 1: LCS with ref 1 = "a riding a horse" = 4 -> P = 4/6, R = 4/6
    #          LCS with ref 2 = "man riding" = 2      -> P = 2/6, R = 2/2
    #          P_max = 2/3, R_max = 1 (from different refs, as pycocoevalcap does)
    #          F = (1 + 1.44) * P * R / (R + 1.44 * P) = 1.626667 / 1.96 = 0.829932
    # Image 2: empty caption -> 0.
    beta2 = 1.2**2
    first = (1 + beta2) * (2 / 3) * 1.0 / (1.0 + beta2 * (2 / 3))
    assert rouge_l_scores(gen, refs) == pytest.approx([first, 0.0])
    assert rouge_l(gen, refs) == pytest.approx(first / 2)
    # pycocoevalcap 1.2, Rouge():
    assert rouge_l(gen, refs) == pytest.approx(0.4149659863945578, rel=1e-12)
    assert rouge_l_scores(gen, refs)[0] == pytest.approx(0.8299319727891156, rel=1e-12)


def test_rouge_l_precision_and_recall_by_hand() -> None:
    # "the cat" vs "the cat sat on the mat" (LCS 2: P 1, R 1/3) and "the cat sat" (P 1, R 2/3):
    # F = 2.44 * 1 * (2/3) / (2/3 + 1.44) = 0.772152 (pycocoevalcap 1.2: 0.7721518987341772)
    got = rouge_l(["the cat"], [["the cat sat on the mat", "the cat sat"]])
    assert got == pytest.approx(2.44 * (2 / 3) / (2 / 3 + 1.44))
    assert got == pytest.approx(0.7721518987341772, rel=1e-12)


# --------------------------------------------------------------------------- CIDEr


def test_cider_three_images_by_hand() -> None:
    gen = ["red cube", "blue ball", "green"]
    refs = [["red cube", "red ball"], ["blue cube"], ["green cone"]]
    # N = 3 images. Document frequency over each image's reference set: "cube" is in images
    # 1 and 2 (df 2); every other reference n-gram is in one image (df 1).
    # idf = log(N) - log(max(1, df)): cube -> log 1.5; df-1 and unseen n-grams -> log 3.
    l3, l15 = math.log(3), math.log(1.5)
    # v: cosine of {red: l3, cube: l15} with {red: l3, ball: l3} = l3^2 / (|h| |r|)
    v = l3 / (math.sqrt(2) * math.sqrt(l3**2 + l15**2))  # 0.66337
    # Image 1 vs "red cube": n=1 and n=2 cosines 1, no 3-/4-grams (0); lengths equal.
    #         vs "red ball": n=1 cosine v ("ball" clipped to min(0, l3) = 0), n=2 none match.
    #         mean over n then refs, x10: 10 * ((1 + 1 + 0 + 0) + (v + 0 + 0 + 0)) / 4 / 2
    image1 = 10 * (2 + v) / 8
    # Image 2 "blue ball" vs "blue cube": n=1 {blue: l3, ball: l3} . {blue: l3, cube: l15} = v.
    image2 = 10 * v / 4
    # Image 3 "green" vs "green cone": n=1 cosine l3^2 / (l3 * sqrt(2) l3) = 1/sqrt(2); the
    # length (bigram count, as in pycocoevalcap) differs by 1: penalty exp(-1 / (2 * 6^2)).
    image3 = 10 * (math.exp(-1 / 72) / math.sqrt(2)) / 4
    assert cider_scores(gen, refs) == pytest.approx([image1, image2, image3], rel=1e-12)
    assert cider(gen, refs) == pytest.approx((image1 + image2 + image3) / 3, rel=1e-12)
    # pycocoevalcap 1.2, Cider():
    pycoco = [3.3292112154293134, 1.6584224308586262, 1.743384349760141]
    assert cider_scores(gen, refs) == pytest.approx(pycoco, rel=1e-12)
    assert cider(gen, refs) == pytest.approx(2.24367266534936, rel=1e-12)


def test_cider_of_one_image_is_zero() -> None:
    # With N = 1 every reference n-gram has idf log(1) - log(1) = 0.
    assert cider(["a red cube"], [["a red cube"]]) == 0.0


# --------------------------------------------------------------------------- whole metric set


_PUNCTUATED_GEN = [
    "A man riding a horse on the beach.",
    "Two dogs play with a red ball!",
    "A plate of food, with broccoli and rice.",
    "A cat sitting on a laptop's keyboard.",
]
_PUNCTUATED_REFS = [
    [
        "A man rides a brown horse along the beach.",
        "A person on horseback near the ocean.",
        "Someone riding a horse by the sea.",
    ],
    [
        "Two dogs playing with a ball in the grass.",
        "A pair of dogs chase a red ball.",
        "Dogs play fetch.",
    ],
    [
        "A plate with broccoli, rice and chicken.",
        "Food on a white plate.",
        "A dish of rice and vegetables.",
    ],
    [
        "A cat lying on a laptop keyboard.",
        "A kitten sits on top of a computer.",
        "The cat's on the laptop!",
    ],
]


@pytest.mark.parametrize(
    ("gen", "refs", "expected"),
    [
        # pycocoevalcap 1.2 on raw captions: its Java PTBTokenizer, then Bleu/Rouge/Cider
        (
            _PUNCTUATED_GEN,
            _PUNCTUATED_REFS,
            {
                "bleu1": 0.9677419354526535,
                "bleu2": 0.7083728641475256,
                "bleu3": 0.403000653467782,
                "bleu4": 4.3081509571066356e-05,
                "rouge_l": 0.7170949538014993,
                "cider": 1.7150032083124456,
            },
        ),
        # pycocoevalcap 1.2 scorers on the pre-tokenised corpus of the BLEU test above
        (
            ["the the the cat", "a dog runs on the grass"],
            [["the cat sat", "a cat on the mat here"], ["a dog runs on grass", "the dog runs"]],
            {
                "bleu1": 0.7999999999200001,
                "bleu2": 0.6324555319625248,
                "bleu3": 0.5108729548623383,
                "bleu4": 0.4272870063276903,
                "rouge_l": 0.7553904428904428,
                "cider": 3.2342342320907536,
            },
        ),
        # ... and of the ROUGE test (an empty generated caption included)
        (
            ["a man is riding a horse", ""],
            [["a person riding a brown horse", "man riding"], ["a dog"]],
            {
                "bleu1": 0.5971094252791215,
                "bleu2": 0.29252268250319813,
                "bleu3": 2.4840753121332403e-06,
                "bleu4": 7.778610910179157e-09,
                "rouge_l": 0.4149659863945578,
                "cider": 0.7913792797201123,
            },
        ),
    ],
)
def test_caption_metrics_match_pycocoevalcap(
    gen: list[str], refs: list[list[str]], expected: dict[str, float]
) -> None:
    got = caption_metrics(gen, refs)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_empty_generated_caption_scores_zero() -> None:
    refs = [["a red cube"], ["a blue ball"]]
    assert rouge_l_scores(["", "a blue ball"], refs)[0] == 0.0
    assert cider_scores(["", "a blue ball"], refs)[0] == 0.0
    metrics = caption_metrics(["", ""], refs)
    assert metrics["rouge_l"] == 0.0
    assert metrics["cider"] == 0.0
    assert all(metrics[f"bleu{n}"] == 0.0 for n in range(1, 5))  # BP exp(1 - huge) = 0


# --------------------------------------------------------------------------- properties

_WORDS = st.sampled_from("a the red blue cube ball on near big two dogs sits".split())


def _caption(min_words: int = 0) -> st.SearchStrategy[str]:
    return st.lists(_WORDS, min_size=min_words, max_size=9).map(" ".join)


_corpus = st.integers(1, 5).flatmap(
    lambda n: st.tuples(
        st.lists(_caption(), min_size=n, max_size=n),
        st.lists(st.lists(_caption(1), min_size=1, max_size=4), min_size=n, max_size=n),
    )
)


@settings(max_examples=60, deadline=None)
@given(_corpus)
def test_scores_are_in_range(corpus: tuple[list[str], list[list[str]]]) -> None:
    gen, refs = corpus
    metrics = caption_metrics(gen, refs)
    for n in range(1, 5):
        assert 0.0 <= metrics[f"bleu{n}"] <= 1.0
    assert 0.0 <= metrics["rouge_l"] <= 1.0
    assert 0.0 <= metrics["cider"] <= 10.0 + 1e-9
    assert all(0.0 <= s <= 10.0 + 1e-9 for s in cider_scores(gen, refs))


@settings(max_examples=60, deadline=None)
@given(st.lists(_caption(4), min_size=1, max_size=5))
def test_caption_against_itself_scores_one(captions: list[str]) -> None:
    refs = [[caption] for caption in captions]
    assert bleu(captions, refs) == pytest.approx([1.0] * 4, abs=1e-8)
    assert rouge_l(captions, refs) == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(_corpus, st.randoms(use_true_random=False))
def test_scores_do_not_depend_on_image_order(corpus, rng) -> None:
    gen, refs = corpus
    order = list(range(len(gen)))
    rng.shuffle(order)
    shuffled = caption_metrics([gen[i] for i in order], [refs[i] for i in order])
    assert shuffled == pytest.approx(caption_metrics(gen, refs), rel=1e-9, abs=1e-15)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("gen", "refs", "message"),
    [
        (["a cat", "a dog"], [["a cat"]], "2 generated captions but 1 reference lists"),
        (["a cat", "a dog"], [["a cat"], []], "image 1 has no reference captions"),
        (["a cat"], ["a cat"], "references[0] is a single string"),
        (["a cat"], [["a cat", "..."]], "references[0][1]"),
        ([], [], "no captions to score"),
        ([None], [["a cat"]], "generated[0] is NoneType"),
        (["a cat"], [["a cat", 3]], "references[0][1] is int"),
        ("a cat", [["a cat"]], "generated must be a list"),
    ],
)
def test_bad_input_is_one_clear_value_error(gen, refs, message: str) -> None:
    for metric in (caption_metrics, bleu, rouge_l, cider):
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            metric(gen, refs)


def test_input_error_is_a_user_facing_error() -> None:
    with pytest.raises(RobustError) as info:
        caption_metrics(["a"], [[]])
    assert isinstance(info.value, CaptionInputError)
    assert "\n" not in str(info.value)


def test_bleu_rejects_bad_max_n() -> None:
    with pytest.raises(ValueError, match="max_n"):
        bleu(["a cat"], [["a cat"]], max_n=0)


# --------------------------------------------------------------------------- change rate


def test_caption_change_rate_ignores_case_and_punctuation() -> None:
    clean = ["A red cube.", "a blue ball", "two dogs", "a cat"]
    adversarial = ["a red cube", "a blue ball!", "two cats", ""]
    assert caption_change_rate(clean, adversarial) == pytest.approx(0.5)
    assert caption_change_rate(clean, clean) == 0.0


def test_caption_change_rate_bad_input() -> None:
    with pytest.raises(ValueError, match="2 clean captions but 1 adversarial"):
        caption_change_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no captions"):
        caption_change_rate([], [])
    with pytest.raises(ValueError, match="not strings"):
        caption_change_rate("a cat", "a dog")


# --------------------------------------------------------------------------- embeddings

_VECTORS = {"a": (1.0, 0.0), "b": (0.0, 1.0), "c": (0.6, 0.8), "d": (3.0, 4.0)}


def _fake_encode(texts: list[str]) -> torch.Tensor:
    """Looks captions up in a fixed table; "d" is deliberately not unit length."""
    return torch.tensor([_VECTORS[text] for text in texts])


def test_embedding_similarity_with_a_fake_encoder() -> None:
    gen = ["a", "b"]
    refs = [["a", "b"], ["c"]]
    # image 1: cos(a, a) = 1, cos(a, b) = 0 -> max 1, mean 0.5
    # image 2: cos(b, c) = 0.8            -> max 0.8, mean 0.8
    got = embedding_similarity(gen, refs, _fake_encode)
    assert got == pytest.approx({"emb_sim_max": 0.9, "emb_sim_mean": 0.65})
    # batching does not change the result; an unnormalised encoder is normalised first
    assert embedding_similarity(gen, refs, _fake_encode, batch_size=1) == pytest.approx(got)
    assert embedding_similarity(gen, [["a", "b"], ["d"]], _fake_encode) == pytest.approx(got)


def test_embedding_similarity_bad_encoder_and_input() -> None:
    with pytest.raises(ValueError, match="encode returned"):
        embedding_similarity(["a"], [["a"]], lambda texts: torch.zeros(len(texts) + 1, 2))
    with pytest.raises(ValueError, match="no reference captions"):
        embedding_similarity(["a"], [[]], _fake_encode)
    with pytest.raises(ValueError, match="batch_size"):
        embedding_similarity(["a"], [["a"]], _fake_encode, batch_size=0)
