"""BERT-Attack: budget, filters, determinism, objectives, candidate positions, loading."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robust.attacks import AttackConfigError, build_attack
from robust.attacks.bert_attack import BertAttack, BertAttackParams
from robust.attacks.stopwords import FILTER_WORDS
from robust.errors import WeightsNotFoundError
from tests.conftest import MLM_SPECIAL_TOKENS, MLM_WORDS

SPECIAL = MLM_SPECIAL_TOKENS
WORDS = MLM_WORDS
CAPTIONS = [
    "a red circle on the left",
    "the big blue square in the middle of the picture",
    "a small green triangle at the top",
    "a large yellow star and a pink hexagon",
    "an orange shape in the bottom right corner",
]


@pytest.fixture(scope="module")
def mlm_dir(tiny_mlm_dir) -> Path:
    return tiny_mlm_dir


@pytest.fixture(scope="module")
def victim(tiny_open_clip_dir):
    import robust

    return robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")


def make_mlm(mlm_dir: Path, boosts: dict[str, float] | None = None):
    """(model, tokenizer) with the output bias raised for `boosts` (same at every position)."""
    from robust.attacks.bert_attack import load_masked_lm

    model, tokenizer = load_masked_lm(mlm_dir)
    with torch.no_grad():
        for token, value in (boosts or {}).items():
            model.cls.predictions.bias[tokenizer.convert_tokens_to_ids(token)] = value
    return model, tokenizer


# Colours and shapes score high everywhere; stop-words and punctuation even higher, so the
# filters have to do their job.
BOOSTS = {
    "the": 60.0,
    "of": 58.0,
    ".": 57.0,
    "purple": 50.0,
    "white": 48.0,
    "star": 46.0,
    "corner": 44.0,
    "##ish": 42.0,
}


def changed_positions(before: str, after: str) -> list[int]:
    old, new = before.split(" "), after.split(" ")
    assert len(old) == len(new), (before, after)
    return [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]


def cosine_to(victim, texts: list[str], guide: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (victim.encode_text(texts) * F.normalize(guide, dim=-1)).sum(-1)


def random_guide(victim, count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, victim.image_size, victim.image_size, generator=generator)
    with torch.no_grad():
        return victim.encode_image(images)


@pytest.mark.parametrize("max_words", [1, 2])
def test_budget_and_stop_words(victim, mlm_dir, max_words):
    attack = BertAttack(victim, mlm=make_mlm(mlm_dir, BOOSTS), max_words=max_words)
    adversarial = attack(CAPTIONS, random_guide(victim, len(CAPTIONS)))
    assert len(adversarial) == len(CAPTIONS)
    changed_any = False
    for before, after in zip(CAPTIONS, adversarial, strict=True):
        positions = changed_positions(before, after)
        assert len(positions) <= max_words
        changed_any |= bool(positions)
        for index in positions:
            old_word, new_word = before.split(" ")[index], after.split(" ")[index]
            assert old_word not in FILTER_WORDS
            assert new_word not in FILTER_WORDS
            assert "##" not in new_word and not new_word.startswith("[")
    assert changed_any


def test_same_input_same_output_and_batch_independent(victim, mlm_dir):
    attack = BertAttack(victim, mlm=make_mlm(mlm_dir, BOOSTS), max_words=2)
    guide = random_guide(victim, len(CAPTIONS))
    first = attack(CAPTIONS, guide)
    assert attack(CAPTIONS, guide, generator=torch.Generator().manual_seed(5)) == first
    one_by_one = [attack([c], guide[i : i + 1])[0] for i, c in enumerate(CAPTIONS)]
    assert one_by_one == first


class CountingVictim(nn.Module):
    """Delegates to a victim and records how many texts it was asked to encode."""

    def __init__(self, victim) -> None:
        super().__init__()
        self.victim = victim
        self.device = victim.device
        self.encoded = 0

    def encode_text(self, texts):
        self.encoded += len(texts)
        return self.victim.encode_text(texts)


def test_reused_caption_set_matches_a_fresh_attack_and_encodes_less(victim, mlm_dir):
    """SGA attacks the same captions twice with different guides: the second call reuses the
    guide-free work and already-encoded texts, and still answers as a fresh attack does."""
    model_and_tokenizer = make_mlm(mlm_dir, BOOSTS)
    counting = CountingVictim(victim)
    attack = BertAttack(victim, mlm=model_and_tokenizer, max_words=2)
    attack.victim = counting
    first_guide = random_guide(victim, len(CAPTIONS), seed=1)
    second_guide = random_guide(victim, len(CAPTIONS), seed=2)
    attack(CAPTIONS, first_guide)
    first_call = counting.encoded
    reused = attack(CAPTIONS, second_guide)
    second_call = counting.encoded - first_call
    fresh = BertAttack(victim, mlm=model_and_tokenizer, max_words=2)(CAPTIONS, second_guide)
    assert reused == fresh
    assert second_call < first_call / 2
    attack(CAPTIONS[:2], second_guide[:2])  # another caption set starts afresh
    assert counting.encoded - first_call - second_call > 0


def test_guide_objective_never_raises_cosine(victim, mlm_dir):
    attack = BertAttack(victim, mlm=make_mlm(mlm_dir, BOOSTS), max_words=2)
    guide = random_guide(victim, len(CAPTIONS), seed=3)
    adversarial = attack(CAPTIONS, guide)
    before = cosine_to(victim, CAPTIONS, guide)
    after = cosine_to(victim, adversarial, guide)
    assert torch.all(after <= before + 1e-6)
    changed = [a != b for a, b in zip(CAPTIONS, adversarial, strict=True)]
    assert any(changed)
    assert torch.all(after[torch.tensor(changed)] < before[torch.tensor(changed)])


def test_kl_objective_picks_the_most_divergent_substitute(victim, mlm_dir):
    attack = BertAttack(victim, mlm=make_mlm(mlm_dir, BOOSTS), objective="kl", max_words=1)
    adversarial = attack(CAPTIONS)  # no guide needed

    def kl(original: str, texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            p = victim.encode_text([original]).log_softmax(-1)
            q = victim.encode_text(texts).log_softmax(-1)
        return (p.exp() * (p - q)).sum(-1)

    checked = 0
    for before, after in zip(CAPTIONS, adversarial, strict=True):
        positions = changed_positions(before, after)
        assert len(positions) <= 1
        if not positions:
            continue
        (index,) = positions
        word = next(w for w in attack.candidates_for(before) if w.index == index)
        words = before.split(" ")
        options = [" ".join(words[:index] + [s] + words[index + 1 :]) for s in word.substitutes]
        assert after in options
        divergences = kl(before, options)
        assert float(divergences[options.index(after)]) == pytest.approx(
            float(divergences.max()), rel=1e-4
        )
        assert float(divergences[options.index(after)]) > 0
        checked += 1
    assert checked


class PositionalMLM(nn.Module):
    """A 'masked LM' whose top token depends only on the position: token_at[p] at p."""

    def __init__(self, vocab_size: int, token_at: list[int]) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.register_buffer("token_at", torch.tensor(token_at))

    def forward(self, input_ids, attention_mask=None):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.vocab_size)
        logits[:, torch.arange(length), self.token_at[:length]] = 10.0
        return SimpleNamespace(logits=logits)


def test_candidates_are_read_at_the_words_own_position(victim, mlm_dir):
    _, tokenizer = make_mlm(mlm_dir)
    ids = tokenizer.convert_tokens_to_ids
    # position 0 is [CLS]; a previous-position read would give word j the token of word j-1.
    token_at = ids(["[CLS]", "purple", "green", "yellow", "white", "orange", "pink", "blue"])
    attack = BertAttack(victim, mlm=(PositionalMLM(len(tokenizer), token_at), tokenizer))
    caption = "red circle left square"
    candidates = attack.candidates_for(caption)
    assert [c.index for c in candidates] == [0, 1, 2, 3]
    assert [c.positions for c in candidates] == [(1,), (2,), (3,), (4,)]
    # Only the top token passes the 0.3 logit threshold (all others score 0).
    assert [c.substitutes for c in candidates] == [("purple",), ("green",), ("yellow",), ("white",)]

    # Stop-words keep their positions but are never attackable.
    candidates = attack.candidates_for("the red circle")
    assert [(c.index, c.positions, c.substitutes) for c in candidates] == [
        (1, (2,), ("green",)),
        (2, (3,), ("yellow",)),
    ]

    expected = {0: "purple", 1: "green", 2: "yellow", 3: "white"}
    attack = BertAttack(
        victim, mlm=(PositionalMLM(len(tokenizer), token_at), tokenizer), objective="kl",
        max_words=4,
    )  # fmt: skip
    adversarial = attack([caption])[0]
    positions = changed_positions(caption, adversarial)
    assert positions
    for index in positions:
        assert adversarial.split(" ")[index] == expected[index]


def test_official_offset_reads_the_previous_tokens_predictions(victim, mlm_dir):
    _, tokenizer = make_mlm(mlm_dir)
    ids = tokenizer.convert_tokens_to_ids
    token_at = ids(["[CLS]", "purple", "green", "yellow", "white", "orange", "pink", "blue"])
    pair = (PositionalMLM(len(tokenizer), token_at), tokenizer)
    attack = BertAttack(victim, mlm=pair, subword_offset="official")
    caption = "red circle left square"
    candidates = attack.candidates_for(caption)
    # word j reads position j: [CLS] (never a substitute) for word 0, word j-1's token after
    assert [c.positions for c in candidates] == [(0,), (1,), (2,), (3,)]
    assert [c.substitutes for c in candidates] == [(), ("purple",), ("green",), ("yellow",)]

    attack = BertAttack(victim, mlm=pair, subword_offset="official", objective="kl", max_words=4)
    adversarial = attack([caption])[0].split(" ")
    assert adversarial[0] == "red"  # no substitute at [CLS]
    assert adversarial[1:] == ["purple", "green", "yellow"]


def test_official_offset_shifts_every_sub_word_of_a_combination(victim, mlm_dir):
    model, tokenizer = make_mlm(mlm_dir)
    own = BertAttack(victim, mlm=(model, tokenizer), use_combinations=True)
    official = BertAttack(
        victim, mlm=(model, tokenizer), use_combinations=True, subword_offset="official"
    )
    caption = "a pink hexagon on the left"
    positions = [
        next(c for c in attack.candidates_for(caption) if c.word == "hexagon").positions
        for attack in (own, official)
    ]
    assert positions == [(3, 4), (2, 3)]


def test_source_max_length_follows_the_official_scripts():
    from robust.attacks.bert_attack import resolved_max_length

    family = SimpleNamespace
    assert resolved_max_length("source", family(family="albef")) == 30
    assert resolved_max_length("source", family(family="tcl")) == 30
    assert resolved_max_length("source", family(family="clip")) == 77
    assert resolved_max_length(12, family(family="clip")) == 12


def test_source_max_length_lets_a_clip_source_attack_long_captions(victim, mlm_dir):
    assert victim.family == "clip"
    pair = make_mlm(mlm_dir, BOOSTS)
    long_caption = " ".join(["red", "circle", "left", "square"] * 9)  # 36 sub-words
    short = BertAttack(victim, mlm=pair)
    per_source = BertAttack(victim, mlm=pair, max_length="source")
    assert per_source.max_length == 77 and short.max_length == 30
    assert max(c.index for c in short.candidates_for(long_caption)) == 27  # 28 fit in 30
    assert max(c.index for c in per_source.candidates_for(long_caption)) == 35
    assert per_source.config()["max_length"] == "source"


def test_multi_subword_words_and_combinations(victim, mlm_dir):
    boosts = {"purple": 50.0, "green": 49.0, "##ish": 48.0, "##y": 47.0}
    model, tokenizer = make_mlm(mlm_dir, boosts)
    caption = "a pink hexagon on the left"
    assert tokenizer.tokenize("hexagon") == ["hex", "##agon"]

    plain = BertAttack(victim, mlm=(model, tokenizer))
    hexagon = next(c for c in plain.candidates_for(caption) if c.word == "hexagon")
    assert hexagon.positions == (3, 4)
    assert hexagon.substitutes == ()  # multi-sub-word words need use_combinations

    attack = BertAttack(victim, mlm=(model, tokenizer), use_combinations=True, max_words=1)
    hexagon = next(c for c in attack.candidates_for(caption) if c.word == "hexagon")
    assert hexagon.positions == (3, 4)
    assert hexagon.substitutes
    assert set(hexagon.substitutes) <= {"purpleish", "purpley", "greenish", "greeny"}
    # Sorted by the MLM's perplexity of the sub-word sequence alone, lowest first.
    with torch.no_grad():
        pieces = [tokenizer.tokenize(word) for word in hexagon.substitutes]
        rows = torch.tensor([tokenizer.convert_tokens_to_ids(p) for p in pieces])
        logits = model(input_ids=rows).logits
        perplexity = F.cross_entropy(logits.transpose(1, 2), rows, reduction="none").mean(1).exp()
    assert torch.all(perplexity[1:] >= perplexity[:-1])

    # The only attackable word has two sub-words: the combination path makes the substitution
    # (under "kl" any real change beats the unchanged caption).
    only_hexagon = "the hexagon"
    kl_attack = BertAttack(victim, mlm=(model, tokenizer), use_combinations=True, objective="kl")
    adversarial = kl_attack([only_hexagon])[0]
    positions = changed_positions(only_hexagon, adversarial)
    assert positions == [1]
    assert adversarial.split(" ")[1] in hexagon.substitutes

    captions = [caption, *CAPTIONS]
    adversarial = attack(captions, random_guide(victim, len(captions)))
    for before, after in zip(captions, adversarial, strict=True):
        assert len(changed_positions(before, after)) <= 1


def test_words_beyond_max_length_are_skipped(victim, mlm_dir):
    attack = BertAttack(victim, mlm=make_mlm(mlm_dir, BOOSTS), max_length=5)
    candidates = attack.candidates_for("red circle left square star")
    # max_length 5 = [CLS] + 3 sub-words + [SEP]
    assert [c.word for c in candidates] == ["red", "circle", "left"]
    adversarial = attack(["red circle left square star"], random_guide(victim, 1))[0]
    assert all(i < 3 for i in changed_positions("red circle left square star", adversarial))


def test_empty_and_unattackable_captions_pass_through(victim, mlm_dir):
    attack = BertAttack(victim, mlm=make_mlm(mlm_dir, BOOSTS))
    texts = ["", "the of a", "a  red circle"]
    adversarial = attack(texts, random_guide(victim, len(texts)))
    assert adversarial[:2] == texts[:2]
    assert len(changed_positions(texts[2], adversarial[2])) <= 1
    assert attack([], torch.zeros(0, 16)) == []


def test_config_is_complete(victim, mlm_dir):
    attack = BertAttack(victim, mlm=mlm_dir, seed=3, top_k=5, objective="kl")
    config = attack.config()
    params = {f.name for f in fields(BertAttackParams)}
    assert set(config) == {"attack", "kind", "source", "seed", "mlm", *params}
    assert config["attack"] == "bert_attack" and config["kind"] == "text"
    assert config["source"] == victim.name and config["seed"] == 3
    assert config["top_k"] == 5 and config["objective"] == "kl" and config["max_words"] == 1
    assert config["threshold_pred_score"] == 0.3 and config["max_length"] == 30
    assert config["mlm"] == str(mlm_dir)
    paired = BertAttack(victim, mlm=make_mlm(mlm_dir))
    assert paired.config()["mlm"] == "BertForMaskedLM"


def test_loading_from_a_folder_is_silent(victim, mlm_dir, capfd):
    attack = BertAttack(victim, mlm=mlm_dir)
    attack(["a red circle"], random_guide(victim, 1))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize(
    "params",
    [
        {"max_words": 0},
        {"top_k": -1},
        {"top_k": 2.5},
        {"max_length": 2},
        {"objective": "cosine"},
        {"threshold_pred_score": "high"},
        {"threshold_pred_score": float("nan")},
        {"use_combinations": "yes"},
        {"subword_offset": "previous"},
        {"max_length": "clip"},
        {"max_length": 0},
        {"importance_batch_size": 0},
        {"candidate_batch_size": True},
        {"budget": 3},
    ],
)
def test_bad_params_are_config_errors(victim, mlm_dir, params):
    pair = make_mlm(mlm_dir)
    with pytest.raises(AttackConfigError):
        BertAttack(victim, mlm=pair, **params)
    with pytest.raises(AttackConfigError):
        build_attack("bert_attack", victim, params, mlm=pair)


def test_guide_is_required_and_checked(victim, mlm_dir):
    attack = BertAttack(victim, mlm=make_mlm(mlm_dir, BOOSTS))
    with pytest.raises(AttackConfigError, match="guide_embeddings"):
        attack(CAPTIONS)
    with pytest.raises(AttackConfigError, match="guide_embeddings"):
        attack(CAPTIONS, random_guide(victim, 2))


@pytest.mark.parametrize("name", ["missing-folder", "toy-nonexistent-mlm"])
def test_missing_mlm_is_one_line_error(victim, tmp_path, name):
    mlm = tmp_path / name if name == "missing-folder" else name
    with pytest.raises(WeightsNotFoundError) as error:
        BertAttack(victim, mlm=mlm)
    message = str(error.value)
    assert "\n" not in message
    assert name in message
