"""Toy ALBEF/TCL training: a tiny run saves a loadable official-layout checkpoint that learned."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robust.data.world import ZOO_WORLD, generate_world
from robust.errors import RobustError
from robust.eval.retrieval import evaluate_retrieval
from robust.resources import ZOO_DIR
from robust.victims.albef import AlbefVictim, load_albef_checkpoint
from robust.zoo.augment import augment_images
from robust.zoo.recipes import world_image_size
from robust.zoo.train_albef import (
    ALBEF_RECIPES,
    CHECKPOINT_FILE,
    AlbefRecipe,
    _caption_table,
    _make_batch,
    caption_keys,
    init_albef_model,
    new_masked_lm_head,
    sample_captions,
    tokenize_all,
    train_albef,
    training_losses,
)
from robust.zoo.vocab import build_world_vocab
from robust.zoo.warm_start import masked_lm_state

TINY_MODEL = {
    "image_size": 64,
    "patch_size": 16,
    "vision_width": 32,
    "vision_depth": 1,
    "vision_heads": 2,
    "vocab_size": 256,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
    "fusion_layer": 1,
    "encoder_width": 32,
    "embed_dim": 16,
}
TINY_ALBEF = AlbefRecipe(
    name="tiny-albef",
    family="albef",
    model=TINY_MODEL,
    epochs=12,
    batch_size=32,
    learning_rate=2e-3,
    warmup_fraction=0.1,
    fresh_lr_scale=1.0,
    vision_init=None,
    text_init=None,
)
# The shipped toy-albef recipe on the zoo's world (warm-started from toy-clip-vit and toy-mlm),
# cut to 32 steps
ZOO_ALBEF = ALBEF_RECIPES["toy-albef"].for_world(ZOO_WORLD)
SHORT_ALBEF = replace(ZOO_ALBEF, epochs=8, batch_size=32, warmup_fraction=0.1)
TINY_TCL = replace(
    TINY_ALBEF, name="tiny-tcl", family="tcl", image_image_weight=0.5, text_text_weight=0.5
)


@pytest.fixture(scope="module")
def world_train():
    return generate_world("train", count=128)


@pytest.fixture(scope="module")
def zoo_train():
    """World train of the zoo's world, which the shipped towers SHORT_ALBEF starts from read."""
    return generate_world("train", count=128, version=ZOO_WORLD)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> Path:
    """A world WordPiece vocab from a few images (the full one needs all of world train)."""
    return build_world_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt", train_images=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, zoo_train):
    folder = tmp_path_factory.mktemp("short-albef")
    report = train_albef(SHORT_ALBEF, folder, dataset=zoo_train)
    return report, folder


def itc_loss(victim: AlbefVictim, dataset, temperature: float = 0.07) -> float:
    """Symmetric InfoNCE of each image against its first caption, at a fixed temperature."""
    images = torch.from_numpy(dataset.images.pixels).permute(0, 3, 1, 2).float() / 255
    texts = [dataset.captions[captions[0]] for captions in dataset.image_captions]
    with torch.no_grad():
        logits = victim.encode_image(images) @ victim.encode_text(texts).T / temperature
    targets = torch.arange(len(texts))
    return float((F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2)


def test_short_run_loads_with_the_real_loader_and_beats_its_warm_start(trained, zoo_train):
    report, folder = trained
    for name in (CHECKPOINT_FILE, "config.json", "vocab.txt", "training.json"):
        assert (folder / name).is_file(), name
    checkpoint = torch.load(folder / CHECKPOINT_FILE, weights_only=True)
    assert set(checkpoint) == {"model", "config"}
    victim = load_albef_checkpoint(folder / CHECKPOINT_FILE, family="albef")
    assert victim.config == SHORT_ALBEF.model_config()

    start, _ = init_albef_model(SHORT_ALBEF)
    untrained = AlbefVictim("init", start.eval(), folder / "vocab.txt")
    before, after = itc_loss(untrained, zoo_train), itc_loss(victim, zoo_train)
    assert after < before - 0.3, (before, after)
    with torch.no_grad():
        recall_before = evaluate_retrieval(untrained, zoo_train).metrics()
        recall_after = evaluate_retrieval(victim, zoo_train).metrics()
    assert recall_after["r_mean"] > recall_before["r_mean"] + 0.05, (recall_before, recall_after)
    assert report.steps == SHORT_ALBEF.epochs * (128 // SHORT_ALBEF.batch_size)
    assert math.isfinite(report.final_loss)


def test_training_record_round_trips_the_recipe(trained):
    report, folder = trained
    record = json.loads((folder / "training.json").read_text())
    assert record["recipe"] == SHORT_ALBEF.config()
    assert AlbefRecipe(**record["recipe"]) == SHORT_ALBEF
    assert record["steps"] == report.steps
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 64
    assert set(record["final_loss_terms"]) == {"itc", "itm"}
    assert record["warm_started_weights"] > 0
    # the vocabulary beside the checkpoint is toy-mlm's, which the text layers came from
    _, mlm_vocab = masked_lm_state("toy-mlm")
    assert (folder / "vocab.txt").read_text().split("\n")[:-1] == mlm_vocab


def test_tcl_adds_finite_intra_modal_terms(world_train, vocab_file):
    victim = AlbefVictim("tcl", init_albef_model(TINY_TCL)[0], vocab_file, family="tcl")
    ids, masks = tokenize_all(victim, world_train.captions)
    table, counts = _caption_table(world_train)
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    batch = _make_batch(
        TINY_TCL, torch.from_numpy(world_train.images.pixels).permute(0, 3, 1, 2),
        np.arange(16), table, counts, ids, masks, caption_keys(ids), rng, generator,
    )  # fmt: skip
    temperature = torch.nn.Parameter(torch.tensor(0.07))
    losses = training_losses(victim, temperature, batch, TINY_TCL, generator)
    assert {"itc", "itm", "image_image", "text_text", "loss"} <= set(losses)
    assert all(torch.isfinite(value) for value in losses.values())
    losses["loss"].backward()
    assert temperature.grad is not None and torch.isfinite(temperature.grad)

    albef_losses = training_losses(victim, temperature, batch, TINY_ALBEF, generator)
    assert "image_image" not in albef_losses and "text_text" not in albef_losses

    # ALBEF's MLM term: the fusion encoder predicts masked words against the image, so its
    # gradient reaches the cross-attention; the head is required exactly when it is on.
    with_mlm = replace(TINY_ALBEF, mlm_weight=1.0)
    head = new_masked_lm_head(victim.config, with_mlm)
    victim.model.zero_grad()
    losses = training_losses(victim, temperature, batch, with_mlm, generator, head)
    assert torch.isfinite(losses["mlm"]) and losses["mlm"] > 0
    losses["mlm"].backward()
    cross = [p.grad for n, p in victim.model.named_parameters() if ".crossattention." in n]
    assert cross and all(g is not None and g.abs().sum() > 0 for g in cross)
    with pytest.raises(ValueError, match="MLM head"):
        training_losses(victim, temperature, batch, with_mlm, generator)


def test_views_shift_without_flipping_and_captions_differ():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=generator)
    assert torch.equal(augment_images(images, max_shift=0, brightness=0.0, generator=generator),
                       images)  # fmt: skip
    shifted = augment_images(images, max_shift=2, brightness=0.0, generator=generator)
    assert shifted.shape == images.shape
    # Every shifted view equals the reflect-padded original at some offset within +-2 px.
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    for index in range(4):
        assert any(
            torch.equal(shifted[index], padded[index, :, dy : dy + 16, dx : dx + 16])
            for dy in range(5)
            for dx in range(5)
        )
    table = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 0, 0, 0, 0]])
    counts = np.array([5, 5, 1])
    chosen = sample_captions(table, counts, np.arange(3), np.random.default_rng(0), per_image=3)
    assert chosen.shape == (3, 3)
    assert len(set(chosen[0])) == 3 and len(set(chosen[1])) == 3
    assert np.all(chosen[:2] // 5 == np.arange(2)[:, None])
    assert np.all(chosen[2] == 10)  # an image with one caption repeats it


def test_mlm_head_with_room_for_another_worlds_vocabulary_starts_as_the_masked_lm_head():
    """On another world a recipe keeps room for any world vocabulary (VOCAB_SIZE); its MLM
    head still predicts toy-mlm's tokens exactly as toy-mlm's own head does."""
    from transformers import BertForMaskedLM

    recipe = replace(ALBEF_RECIPES["toy-albef"].for_world("world-v3"), mlm_weight=1.0)
    head = new_masked_lm_head(recipe.model_config(), recipe)
    masked_lm = BertForMaskedLM.from_pretrained(ZOO_DIR / "toy-mlm").eval()
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 64, generator=generator)
    words = masked_lm.bert.embeddings.word_embeddings.weight
    known = len(words)
    assert len(head.bias) > known  # the case this test is about
    room = torch.randn(len(head.bias) - known, words.shape[1], generator=generator)
    with torch.no_grad():
        logits = head(hidden, torch.cat([words, room]))
        torch.testing.assert_close(logits[..., :known], masked_lm.cls(hidden))


def test_shipped_recipes_warm_start_from_the_zoo():
    for name, recipe in ALBEF_RECIPES.items():
        assert recipe.name == name and recipe.model_config().image_size == 64
        assert (recipe.vision_init, recipe.text_init) == ("toy-clip-vit", "toy-mlm")
        zoo_size = recipe.for_world(ZOO_WORLD).model_config().image_size
        assert zoo_size == world_image_size(ZOO_WORLD)
    model, copied = init_albef_model(ZOO_ALBEF)  # the shipped towers fit
    assert len(copied) == len(model.state_dict()) - sum(
        1 for key in model.state_dict()
        if ".crossattention." in key or key.startswith(("text_proj", "itm_head"))
    )  # fmt: skip
    assert ALBEF_RECIPES["toy-tcl"].intra_modal and not ALBEF_RECIPES["toy-albef"].intra_modal


def test_itm_negatives_are_never_positives_and_follow_the_easy_schedule():
    from robust.zoo.itm_negatives import easy_share, sample_negatives

    generator = torch.Generator().manual_seed(0)
    similarity = torch.zeros(400, 4)
    similarity[:, 3] = 50.0  # column 3 is by far the hardest negative
    positives = torch.zeros(400, 4, dtype=torch.bool)
    positives[:, 0] = True
    hard = sample_negatives(similarity, positives, generator, easy_fraction=0.0)
    easy = sample_negatives(similarity, positives, generator, easy_fraction=1.0)
    assert (hard == 3).all()
    assert not (easy == 0).any() and {1, 2, 3} == set(easy.tolist())
    assert easy_share((1.0, 0.0), 0, 11) == 1.0 and easy_share((1.0, 0.0), 10, 11) == 0.0
    assert easy_share((1.0, 0.0), 5, 11) == pytest.approx(0.5)
    with pytest.raises(RobustError, match="itm_easy_schedule"):
        replace(ALBEF_RECIPES["toy-albef"], itm_easy_schedule=(1.5, 0.0))


def test_random_erasing_reaches_both_views(world_train, vocab_file):
    recipe = replace(TINY_TCL, erase_probability=1.0, augment=False)
    victim = AlbefVictim("tcl", init_albef_model(recipe)[0], vocab_file, family="tcl")
    ids, masks = tokenize_all(victim, world_train.captions)
    table, counts = _caption_table(world_train)
    pixels = torch.from_numpy(world_train.images.pixels).permute(0, 3, 1, 2)

    def batch(erase: float):
        return _make_batch(
            replace(recipe, erase_probability=erase), pixels, np.arange(8), table, counts, ids,
            masks, caption_keys(ids), np.random.default_rng(0), torch.Generator().manual_seed(0),
        )  # fmt: skip

    erased, plain = batch(1.0), batch(0.0)
    for view, reference in ((erased.images, plain.images), (erased.images_2, plain.images_2)):
        changed = (view != reference).any(dim=1).flatten(1).sum(dim=1)  # erased pixels
        assert (changed > 0).all() and (changed < 0.1 * 64 * 64).all()
    assert AlbefRecipe(**recipe.config()) == recipe  # erase_area survives the JSON record


def test_the_attribute_head_reads_the_itc_embeddings_and_is_required_exactly_when_on(
    world_train, vocab_file
):
    from robust.zoo.scene_attributes import scene_attribute_targets

    recipe = replace(TINY_ALBEF, attribute_weight=0.5, attribute_kinds=["shape"])
    assert recipe.attribute_kinds == ("shape",)  # a JSON list round-trips to the tuple
    victim = AlbefVictim("albef", init_albef_model(recipe)[0], vocab_file)
    ids, masks = tokenize_all(victim, world_train.captions)
    table, counts = _caption_table(world_train)
    generator = torch.Generator().manual_seed(0)
    indices = np.arange(16)
    batch = _make_batch(
        recipe, torch.from_numpy(world_train.images.pixels).permute(0, 3, 1, 2),
        indices, table, counts, ids, masks, caption_keys(ids), np.random.default_rng(0),
        generator,
    )  # fmt: skip
    targets = scene_attribute_targets(world_train.labels, recipe.world, recipe.attribute_kinds)
    batch.attributes = targets[torch.from_numpy(indices)]
    head = torch.nn.Linear(TINY_MODEL["embed_dim"], targets.shape[1])
    temperature = torch.nn.Parameter(torch.tensor(0.07))
    with pytest.raises(ValueError, match="attribute head"):
        training_losses(victim, temperature, batch, recipe, generator)

    def text_projection_gradient(text_side: bool) -> float:
        victim.model.zero_grad()
        chosen = replace(recipe, attribute_text=text_side)
        losses = training_losses(victim, temperature, batch, chosen, generator, attribute_head=head)
        assert torch.isfinite(losses["attribute"]) and losses["attribute"] > 0
        losses["attribute"].backward()
        assert victim.model.vision_proj.weight.grad.abs().sum() > 0
        grad = victim.model.text_proj.weight.grad
        return 0.0 if grad is None else float(grad.abs().sum())

    assert text_projection_gradient(False) == 0.0  # the image side alone
    assert text_projection_gradient(True) > 0.0  # captions answer to the same head


def test_a_run_with_the_attribute_loss_records_it(tmp_path, world_train, vocab_file):
    recipe = replace(TINY_ALBEF, epochs=1, attribute_weight=0.5, attribute_text=True)
    train_albef(recipe, tmp_path, dataset=world_train, vocab_file=vocab_file)
    record = json.loads((tmp_path / "training.json").read_text())
    assert set(record["final_loss_terms"]) == {"itc", "itm", "attribute"}
    assert AlbefRecipe(**record["recipe"]) == recipe
