"""The image towers' supervised start on scene attributes (`zoo train --attribute-epochs`)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from robust.data.world import generate_world
from robust.progress import ensure_progress
from robust.zoo.recipes import RECIPES
from robust.zoo.scene_attributes import (
    attribute_loss,
    prior_loss,
    scene_attribute_names,
    scene_attribute_targets,
    top_k_precision,
    top_k_precision_by_kind,
)
from robust.zoo.train import train_attribute_start, train_clip
from tests.cli_helpers import assert_one_line_error, invoke

LABEL = {
    "background": "gray",
    "background_style": "flat",
    "count": 2,
    "objects": [
        {"shape": "star", "color": "red", "size": "small", "position": "top left"},
        {"shape": "letter q", "color": "cyan", "size": "large", "position": "center",
         "texture": "striped"},
    ],
}  # fmt: skip


def test_a_scene_holds_exactly_its_attributes():
    names = scene_attribute_names("world-v3")
    targets = scene_attribute_targets([LABEL], "world-v3")
    held = {names[i] for i in torch.nonzero(targets[0]).flatten().tolist()}
    assert held == {
        "background:gray", "count:2", "shape:star", "shape:letter q", "color:red",
        "color:cyan", "size:small", "size:large", "position:top left", "position:center",
        "texture:striped",
    }  # fmt: skip


def test_each_version_names_only_what_it_draws():
    first = scene_attribute_names("world")
    assert "shape:letter q" not in first and not any(n.startswith("texture:") for n in first)
    assert len(scene_attribute_names("world-v3")) == len(first) + 24 + 4


def test_kinds_keep_only_their_columns_in_the_same_order():
    everything = scene_attribute_targets([LABEL], "world-v3")
    names = scene_attribute_names("world-v3")
    kept = scene_attribute_names("world-v3", ("color", "shape"))
    assert kept == tuple(n for n in names if n.startswith(("shape:", "color:")))
    columns = [names.index(n) for n in kept]
    subset = scene_attribute_targets([LABEL], "world-v3", ("color", "shape"))
    assert torch.equal(subset, everything[:, columns])


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="'shapes'.*choose from shape, color"):
        scene_attribute_names("world-v3", ("shapes",))
    with pytest.raises(ValueError, match="texture"):
        scene_attribute_names("world", ("texture",))  # the first world has no fills


def test_a_label_the_version_never_draws_is_refused():
    with pytest.raises(ValueError, match="letter q.*never draws"):
        scene_attribute_targets([LABEL], "world")


def test_world_labels_fit_their_version():
    split = generate_world("val", count=40, version="world-v3")
    targets = scene_attribute_targets(split.labels, "world-v3")
    names = scene_attribute_names("world-v3")

    def held(kind: str) -> torch.Tensor:
        return targets[:, [i for i, n in enumerate(names) if n.startswith(kind + ":")]].sum(dim=1)

    counts = torch.tensor([float(label["count"]) for label in split.labels])
    assert torch.equal(held("background"), torch.ones(40))
    assert torch.equal(held("count"), torch.ones(40))
    assert torch.equal(held("position"), counts)  # objects sit in distinct cells
    for kind in ("shape", "color", "size", "texture"):
        assert ((held(kind) >= 1) & (held(kind) <= counts)).all(), kind


def test_scores_of_perfect_and_uninformed_towers():
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    assert top_k_precision(targets * 10 - 5, targets) == 1.0
    assert top_k_precision(-targets, targets) == 0.0
    # predicting each attribute's frequency is what the prior scores
    frequency = targets.mean(dim=0).clamp(1e-6, 1 - 1e-6)
    logits = torch.logit(frequency).expand_as(targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert prior_loss(targets) == pytest.approx(float(expected), rel=1e-4)


def test_precision_by_kind_tells_a_colour_reader_from_a_shape_reader():
    names = ("shape:star", "shape:cross", "color:red", "color:blue")
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    colour_reader = torch.tensor([[0.0, 0.0, 5.0, -5.0], [0.0, 0.0, -5.0, 5.0]])
    colour_reader[:, :2] = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])  # shapes the wrong way
    assert top_k_precision_by_kind(colour_reader, targets, names) == {"shape": 0.0, "color": 1.0}


@pytest.mark.parametrize("with_text", [False, True])
def test_the_caption_side_answers_to_the_shared_head_only_when_asked(with_text):
    head = torch.nn.Linear(8, 5)
    targets = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 1.0]])
    images = torch.randn(2, 8, requires_grad=True)
    texts = torch.randn(2, 8, requires_grad=True)
    loss = attribute_loss(head, targets, images, texts if with_text else None)
    loss.backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert (texts.grad is not None) == with_text
    image_only = torch.nn.functional.binary_cross_entropy_with_logits(head(images), targets)
    if not with_text:
        assert torch.allclose(loss, image_only)
    else:
        text_only = torch.nn.functional.binary_cross_entropy_with_logits(head(texts), targets)
        assert torch.allclose(loss, (image_only + text_only) / 2)


@pytest.fixture(scope="module")
def tiny_recipe():
    """A ResNet tower small enough to train on CPU in seconds, at 32 px."""
    base = RECIPES["toy-clip-rn"]
    vision = dict(base.model_cfg["vision_cfg"], image_size=32, width=8)
    text = dict(base.model_cfg["text_cfg"], width=32, layers=1)
    return replace(
        base,
        model_cfg={**base.model_cfg, "embed_dim": 32, "vision_cfg": vision, "text_cfg": text},
        preprocess_cfg=dict(base.preprocess_cfg, size=32),
        batch_size=64,
        attribute_learning_rate=1e-2,
        save_dtype="float32",
    )


def test_the_attribute_start_trains_the_image_tower_alone_and_learns(tiny_recipe):
    from open_clip.model import CLIP

    recipe = replace(tiny_recipe, attribute_epochs=6)
    split = generate_world("train", count=512, size=32)
    targets = scene_attribute_targets(split.labels, "world")
    torch.manual_seed(0)
    model = CLIP(**recipe.model_cfg)
    head = torch.nn.Linear(32, targets.shape[1])
    text_before = {n: p.detach().clone() for n, p in model.transformer.named_parameters()}
    visual_before = model.visual.conv1.weight.detach().clone()
    pixels = torch.from_numpy(split.images.pixels).permute(0, 3, 1, 2).float() / 255.0

    def images(indices, *, erase):
        assert not erase  # erasing could hide an object its label names
        return pixels[indices]

    record = train_attribute_start(
        model, head, targets, images, recipe, np.random.default_rng(0), ensure_progress(None)
    )
    assert record["steps"] == 6 * (512 // 64)
    assert record["final_loss"] < record["prior_loss"]
    assert not torch.equal(model.visual.conv1.weight, visual_before)
    for name, parameter in model.transformer.named_parameters():
        assert torch.equal(parameter, text_before[name]), name


def test_training_json_records_the_start_and_held_out_scores(tiny_recipe, tmp_path):
    recipe = replace(tiny_recipe, attribute_epochs=1, attribute_weight=0.5, epochs=1)
    dataset = generate_world("train", count=128, size=32)
    report = train_clip(recipe, tmp_path / "toy", dataset=dataset)
    record = json.loads((tmp_path / "toy" / "training.json").read_text())
    assert record["attribute_start"]["steps"] == 2
    scores = record["attribute_scores"]
    assert scores["images"] == "world:val[:500]"
    assert 0.0 <= scores["top_k_precision"] <= 1.0
    assert set(scores["top_k_precision_by_kind"]) == {
        "shape", "color", "size", "position", "background", "count"
    }  # fmt: skip
    assert scores["loss"] > 0 and scores["prior_loss"] > 0
    assert report.steps == 2 and record["recipe"]["attribute_weight"] == 0.5


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--attribute-epochs", "-1"), ("--attribute-epochs", "0 or more")),
        (("--attribute-weight", "-0.5"), ("--attribute-weight", "0 or more")),
        (("--attribute-text",), ("--attribute-text needs --attribute-weight",)),
        (("--attribute-kinds", "shape,hue"), ("--attribute-kinds", "'hue'", "color")),
        (("--attribute-kinds", "shape"), ("--attribute-kinds needs --attribute-epochs",)),
    ],
)
def test_bad_attribute_options_are_one_line(args, fragments):
    # on `world`, where the recipe itself starts no attribute head, so each option is alone
    result = invoke("zoo", "train", "toy-clip-rn", "--world", "world", *args)
    assert_one_line_error(result, *fragments)


def test_the_supervised_start_belongs_to_the_clip_toys():
    result = invoke("zoo", "train", "toy-albef", "--attribute-epochs", "2")
    assert_one_line_error(result, "--attribute-epochs does not apply to toy-albef")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--attribute-weight", "-0.5"), ("--attribute-weight", "0 or more")),
        (("--attribute-text",), ("--attribute-text needs --attribute-weight",)),
        (("--attribute-kinds", "shape"), ("--attribute-kinds needs --attribute-weight above 0",)),
        (("--attribute-kinds", "hue"), ("--attribute-kinds", "'hue'", "color")),
    ],
)
def test_the_fusion_toys_attribute_options_are_checked_alike(args, fragments):
    assert_one_line_error(invoke("zoo", "train", "toy-tcl", *args), *fragments)
