"""Toy BLIP / masked-LM trainers: tiny runs write folders the real loaders load, and learn."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from robust.errors import RobustError
from robust.zoo.train_blip import (
    BLIP_RECIPES,
    BlipCaptionRecipe,
    BlipRetrievalRecipe,
    MlmRecipe,
    caption_training_loss,
    init_text_from_masked_lm,
    load_text_init,
    mask_tokens,
    masked_lm_loss,
    masked_token_accuracy,
    new_blip_caption_victim,
    new_blip_retrieval_victim,
    new_masked_lm,
    retrieval_losses,
    train_blip_captioner,
    train_blip_recipe,
    train_blip_retrieval,
    train_mlm,
    world_tokenizer,
)

TRAIN_IMAGES = 64
TINY_VISION = {
    "initializer_range": 0.05,
    "patch_size": 16,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}
TINY_TEXT = {
    "initializer_range": 0.1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


@pytest.fixture(scope="module")
def world_train():
    from robust.data.world import generate_world

    return generate_world("train", count=TRAIN_IMAGES)


@pytest.fixture(scope="module")
def first_batch(world_train):
    """The first 16 training images (as [0, 1] floats) and one caption of each."""
    pixels = torch.from_numpy(world_train.images.pixels[:16]).permute(0, 3, 1, 2).float() / 255
    texts = [world_train.captions[world_train.image_captions[i][0]] for i in range(16)]
    return pixels, texts


TINY_MLM = MlmRecipe(
    name="toy-mlm-test",
    hidden_size=TINY_TEXT["hidden_size"],
    intermediate_size=TINY_TEXT["intermediate_size"],
    num_hidden_layers=TINY_TEXT["num_hidden_layers"],
    num_attention_heads=TINY_TEXT["num_attention_heads"],
    epochs=4,
    batch_size=16,
    learning_rate=5e-3,
)


@pytest.fixture(scope="module")
def tiny_mlm_dir(world_train, tmp_path_factory) -> Path:
    """A tiny masked LM with the tiny BLIP text sizes; the BLIP trainers start from it."""
    folder = tmp_path_factory.mktemp("toy-mlm")
    return train_mlm(TINY_MLM, folder, dataset=world_train).output_dir


def read_record(folder: Path) -> dict:
    return json.loads((folder / "training.json").read_text())


def test_recipes_cover_the_three_toy_victims():
    assert set(BLIP_RECIPES) == {"toy-blip", "toy-blip-cap", "toy-mlm"}
    for name, recipe in BLIP_RECIPES.items():
        assert recipe.name == name
        assert json.dumps(recipe.config())  # recorded verbatim in training.json


def test_world_tokenizer_puts_enc_right_after_dec():
    tokenizer = world_tokenizer(blip=True, vocab_images=TRAIN_IMAGES)
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert tokenizer.convert_tokens_to_ids(list(specials)) == [0, 1, 2, 3, 4]
    dec = tokenizer.bos_token_id
    assert tokenizer.convert_ids_to_tokens(dec) == "[DEC]"
    assert tokenizer.convert_tokens_to_ids("[ENC]") == dec + 1 == len(tokenizer) - 1
    # the world vocabulary, not a placeholder: world words are whole tokens
    assert tokenizer.tokenize("a red circle") == ["a", "red", "circle"]


def test_train_blip_retrieval_writes_a_loadable_folder_that_learned(
    first_batch, tiny_mlm_dir, tmp_path
):
    from robust.data.world import generate_world
    from robust.victims.blip import BlipRetrievalVictim, load_blip_retrieval

    # 16 images seen 60 times: enough for ITC to leave its plateau in a few seconds
    batch_images = generate_world("train", count=16)
    recipe = BlipRetrievalRecipe(
        name="toy-blip-test",
        vision=TINY_VISION,
        text=TINY_TEXT,
        embed_dim=16,
        epochs=60,
        batch_size=16,
        learning_rate=3e-3,
        warmup_fraction=0.1,
        text_init=str(tiny_mlm_dir),
        vision_init=None,
        bf16_autocast=False,
    )
    report = train_blip_retrieval(recipe, tmp_path / "toy-blip", dataset=batch_images)
    assert report.steps == 60
    victim = load_blip_retrieval(str(report.output_dir))
    assert isinstance(victim, BlipRetrievalVictim)
    assert victim.image_size == 64 and victim.mean == pytest.approx(recipe.mean)
    assert victim.token_ids.enc == victim.token_ids.dec + 1
    _, mlm_vocab = load_text_init(str(tiny_mlm_dir))
    assert victim.tokenizer.convert_ids_to_tokens(list(range(len(mlm_vocab)))) == mlm_vocab
    assert read_record(report.output_dir)["steps"] == report.steps

    fresh = new_blip_retrieval_victim(recipe, victim.tokenizer)
    pixels, texts = first_batch

    def itc_loss(model) -> float:
        with torch.no_grad():
            itc, _ = retrieval_losses(
                model, pixels, texts, recipe.temperature, torch.Generator().manual_seed(0)
            )
        return float(itc)

    chance = math.log(len(texts))  # where collapsed embeddings sit
    assert itc_loss(victim) < min(itc_loss(fresh), chance) - 0.2
    assert victim.itm_logits(pixels[:2], texts[:2]).shape == (2,)


def test_train_blip_captioner_writes_a_loadable_folder_that_learned(
    world_train, first_batch, tiny_mlm_dir, tmp_path
):
    from robust.victims.blip import BlipCaptionVictim, load_blip_captioner

    recipe = BlipCaptionRecipe(
        name="toy-blip-cap-test",
        vision=TINY_VISION,
        text=TINY_TEXT,
        epochs=6,
        batch_size=16,
        learning_rate=3e-3,
        warmup_fraction=0.1,
        text_init=str(tiny_mlm_dir),
        bf16_autocast=False,
    )
    report = train_blip_captioner(recipe, tmp_path / "toy-blip-cap", dataset=world_train)
    victim = load_blip_captioner(str(report.output_dir))
    assert isinstance(victim, BlipCaptionVictim)
    assert victim.prompt_ids(1)[0, 0] == victim.token_ids.dec

    fresh = new_blip_caption_victim(recipe, victim.tokenizer)
    pixels, texts = first_batch
    with torch.no_grad():
        trained_loss = float(caption_training_loss(victim, pixels, texts))
        fresh_loss = float(caption_training_loss(fresh, pixels, texts))
        # the training objective is the victim's own caption_loss, averaged
        assert trained_loss == pytest.approx(float(victim.caption_loss(pixels, texts).mean()))
    assert trained_loss < fresh_loss - 1.0
    captions = victim.generate_captions(pixels[:2], max_length=12)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_train_mlm_writes_a_masked_lm_folder_that_learned(world_train, tiny_mlm_dir):
    from transformers import AutoTokenizer, BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(tiny_mlm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_mlm_dir)
    assert tokenizer.mask_token_id == 4 and tokenizer.pad_token_id == 0
    assert model.config.vocab_size == len(tokenizer)

    captions = list(world_train.captions[:64])
    tokens = tokenizer(captions, padding="longest", return_tensors="pt")
    corrupted, labels = mask_tokens(
        tokens["input_ids"], tokens["attention_mask"], tokenizer, torch.Generator().manual_seed(1)
    )
    fresh = new_masked_lm(TINY_MLM, tokenizer).eval()
    with torch.no_grad():
        trained_loss = float(masked_lm_loss(model, corrupted, tokens["attention_mask"], labels))
        fresh_loss = float(masked_lm_loss(fresh, corrupted, tokens["attention_mask"], labels))
    assert trained_loss < fresh_loss - 1.0
    assert masked_token_accuracy(model, tokenizer, captions) > masked_token_accuracy(
        fresh, tokenizer, captions
    )


def test_mask_tokens_follows_bert_masking():
    tokenizer = world_tokenizer(blip=False, vocab_images=TRAIN_IMAGES)
    captions = ["a small red circle in the top left corner on a white background"] * 200
    tokens = tokenizer(captions, return_tensors="pt")
    ids, attention = tokens["input_ids"], tokens["attention_mask"]
    corrupted, labels = mask_tokens(ids, attention, tokenizer, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS] and [SEP] never chosen
    assert torch.equal(labels[chosen], ids[chosen])
    assert 0.12 < chosen.float().sum() / (ids.numel() - 2 * len(captions)) < 0.18
    masked = (corrupted == tokenizer.mask_token_id) & chosen
    assert 0.7 < masked.sum() / chosen.sum() < 0.9
    assert torch.equal(corrupted[~chosen], ids[~chosen])


def test_recipe_overrides_stay_dataclass_replaceable():
    recipe = replace(BLIP_RECIPES["toy-blip"], epochs=1, train_images=128)
    assert recipe.epochs == 1 and recipe.train_images == 128


def test_blip_text_starts_from_the_masked_lm(tiny_mlm_dir):
    masked_lm, vocab = load_text_init(str(tiny_mlm_dir))
    tokenizer = world_tokenizer(blip=True, vocab=vocab)
    recipe = BlipCaptionRecipe(name="c", vision=TINY_VISION, text=TINY_TEXT)
    decoder = new_blip_caption_victim(recipe, tokenizer).model.text_decoder
    copied = init_text_from_masked_lm(decoder, masked_lm)
    assert "cls.predictions.transform.dense.weight" in copied
    assert not any("crossattention" in key for key in copied)
    source = masked_lm.bert.encoder.layer[0].attention.self.query.weight
    assert torch.equal(decoder.bert.encoder.layer[0].attention.self.query.weight, source)
    rows = masked_lm.config.vocab_size
    assert torch.equal(
        decoder.bert.embeddings.word_embeddings.weight[:rows],
        masked_lm.bert.embeddings.word_embeddings.weight,
    )


def test_missing_text_init_is_one_clear_error(tmp_path):
    with pytest.raises(RobustError, match="train it first"):
        load_text_init(str(tmp_path / "no-such-mlm"))


def test_train_blip_recipe_refuses_a_foreign_recipe(tmp_path):
    from robust.zoo.recipes import RECIPES

    with pytest.raises(RobustError, match="no trainer"):
        train_blip_recipe(RECIPES["toy-clip-vit"], tmp_path)
