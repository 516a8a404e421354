"""ITM refinement: mined negatives exclude every match, only ITM weights move, ITC stays
bit-identical, and the refined member is saved in its own format with its history."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from robust.data.world import generate_world
from robust.errors import RobustError
from robust.resources import ZOO_DIR
from robust.victims.registry import load_victim
from robust.zoo.itm_refine import (
    REFINABLE,
    ItmRefineRecipe,
    draw_negatives,
    itm_parameters,
    mine_hard_negatives,
    positive_pairs,
    refine_itm,
    refine_zoo_member,
    world_matches,
)

TINY_RECIPE = ItmRefineRecipe(epochs=3, batch_size=32, learning_rate=1e-3, negatives_from_top=4)


@pytest.fixture(scope="module")
def world_train_small():
    return generate_world("train", count=48)


def test_positive_pairs_join_images_that_share_a_caption_text():
    dataset = SimpleNamespace(
        captions=["a red box", "a blue star", "a red box", "a green dot"],
        caption_image=[0, 0, 1, 2],
    )
    captions, images = positive_pairs(dataset)
    pairs = set(zip(captions.tolist(), images.tolist(), strict=True))
    assert pairs == {(0, 0), (0, 1), (1, 0), (2, 0), (2, 1), (3, 2)}


def test_mined_negatives_are_the_nearest_non_matches():
    image_features = F.normalize(
        torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.4]]), dim=1
    )
    text_features = F.normalize(
        torch.tensor([[1.0, 0.05], [0.0, 1.0], [0.95, 0.1], [0.6, 0.4]]), dim=1
    )
    # caption 2 matches images 0 and 1 (its text is also a caption of image 1)
    positives = (torch.tensor([0, 1, 2, 2, 3]), torch.tensor([0, 2, 0, 1, 3]))
    image_negatives, text_negatives = mine_hard_negatives(
        image_features, text_features, positives, top=2
    )
    assert image_negatives.tolist() == [[1, 3], [3, 1], [3, 2], [1, 0]]
    assert text_negatives.tolist() == [[3, 1], [0, 3], [3, 2], [2, 0]]


def test_mining_more_negatives_than_non_matches_is_one_clear_error():
    features = F.normalize(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    positives = (torch.tensor([0, 0, 0, 1, 2, 3]), torch.tensor([0, 1, 2, 1, 2, 3]))
    with pytest.raises(RobustError, match="negatives_from_top 2"):
        mine_hard_negatives(features, features, positives, top=2)


def test_draws_that_truly_match_are_drawn_again():
    candidates = torch.tensor([[1, 2], [0, 2], [0, 1]])
    queries = torch.tensor([0, 1, 2] * 20)

    def is_match(caption, image):
        return image == 2  # image 2 fits every caption

    drawn = draw_negatives(
        candidates, queries, torch.Generator().manual_seed(0), is_match, query_is_caption=True
    )
    assert (drawn != 2).all()
    assert (drawn != queries).all()  # still drawn from each query's own row
    assert set(drawn[queries == 2].tolist()) == {0, 1}
    unfiltered = draw_negatives(
        candidates, queries, torch.Generator().manual_seed(0), None, query_is_caption=True
    )
    assert (unfiltered == 2).any()


def test_world_matches_reads_the_scene_labels(world_train_small):
    is_match = world_matches(world_train_small)
    for caption, image in enumerate(world_train_small.caption_image[:50]):
        assert is_match(caption, int(image))
    others = [
        (c, i)
        for c in range(50)
        for i in range(world_train_small.num_images)
        if i != world_train_small.caption_image[c]
    ]
    assert not all(is_match(c, i) for c, i in others)
    assert world_matches(SimpleNamespace(labels=None, captions=["x"])) is None


@pytest.mark.parametrize("field", ["epochs", "batch_size", "learning_rate", "negatives_from_top"])
def test_recipe_rejects_non_positive_settings(field):
    with pytest.raises(RobustError, match=field):
        ItmRefineRecipe(**{field: 0})


@pytest.mark.parametrize("name", sorted(REFINABLE))
def test_refinement_trains_only_itm_and_leaves_itc_bit_identical(name, world_train_small):
    victim = load_victim(name)
    images = torch.rand(
        4, 3, victim.image_size, victim.image_size, generator=torch.Generator().manual_seed(1)
    )
    texts = list(world_train_small.captions[:6])
    with torch.no_grad():
        itc_before = (victim.encode_image(images), victim.encode_text(texts))
    state_before = {k: v.clone() for k, v in victim.state_dict().items()}
    flags_before = [p.requires_grad for p in victim.parameters()]
    trained = {f"model.{n}" for n, _ in itm_parameters(victim)}

    steps, loss, _ = refine_itm(victim, TINY_RECIPE, world_train_small)

    assert steps == 3 * (world_train_small.num_captions // 32)
    assert torch.isfinite(torch.tensor(loss))
    with torch.no_grad():
        assert torch.equal(victim.encode_image(images), itc_before[0])
        assert torch.equal(victim.encode_text(texts), itc_before[1])
    state_after = victim.state_dict()
    moved = {k for k in state_before if not torch.equal(state_before[k], state_after[k])}
    assert moved and moved <= trained
    assert any("itm_head" in k for k in moved)
    assert [p.requires_grad for p in victim.parameters()] == flags_before
    assert not victim.training


def test_refinement_is_a_function_of_the_seed(world_train_small):
    states = []
    for _ in range(2):
        victim = load_victim("toy-albef")
        refine_itm(
            victim,
            ItmRefineRecipe(epochs=1, batch_size=32, negatives_from_top=4),
            world_train_small,
        )
        states.append(victim.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_refinement_separates_matches_from_mined_negatives(world_train_small):
    """On its own training pairs, the refined head ranks each caption's image above its
    ITC-nearest other images more often than the shipped head does."""
    from robust.eval.rerank import evaluate_reranked

    before = load_victim("toy-albef")
    _, reranked_before = evaluate_reranked(before, world_train_small, k_test=8)
    after = load_victim("toy-albef")
    refine_itm(
        after,
        ItmRefineRecipe(epochs=6, batch_size=32, learning_rate=1e-3, negatives_from_top=4),
        world_train_small,
    )
    _, reranked_after = evaluate_reranked(after, world_train_small, k_test=8)
    assert sum(reranked_after.recall(1)) > sum(reranked_before.recall(1))


def test_refine_zoo_member_saves_a_loadable_folder_with_its_history(tmp_path, world_train_small):
    report = refine_zoo_member(
        "toy-blip",
        tmp_path / "blip",
        recipe=ItmRefineRecipe(epochs=1, batch_size=32, negatives_from_top=4),
        dataset=world_train_small,
    )
    record = json.loads((tmp_path / "blip" / "training.json").read_text())
    assert record["command"] == "robust zoo refine-itm toy-blip"
    assert record["recipe"]["batch_size"] == 32
    assert record["init_record"] == json.loads((ZOO_DIR / "toy-blip" / "training.json").read_text())
    assert report.steps == world_train_small.num_captions // 32
    for kept in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (tmp_path / "blip" / kept).read_bytes() == (ZOO_DIR / "toy-blip" / kept).read_bytes()
    reloaded = load_victim(f"hf-blip:{tmp_path / 'blip'}")
    shipped = load_victim("toy-blip")
    itm_keys = {f"model.{n}" for n, _ in itm_parameters(shipped)}
    changed = [
        k for k, v in shipped.state_dict().items() if not torch.equal(v, reloaded.state_dict()[k])
    ]
    assert changed and set(changed) <= itm_keys


def test_refine_zoo_member_errors_name_the_fix(tmp_path):
    with pytest.raises(RobustError, match="choose one of toy-albef, toy-tcl, toy-blip"):
        refine_zoo_member("toy-clip-vit", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustError, match="no training.json"):
        refine_zoo_member("toy-albef", tmp_path / "out", init=tmp_path / "empty")
