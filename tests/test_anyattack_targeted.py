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


# -- a released ViT-B/32 decoder, end to end on a Karpathy folder ---------------------------


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A decoder in the released layout (random weights), a tiny open_clip CLIP at 224 px
    with the released decoder's 512-d embedding, and eight world images exported as a
    Karpathy folder without labels (as Flickr30k comes)."""
    from dataclasses import replace

    import torch
    from open_clip.model import CLIP

    from robust.data.karpathy import export_dataset
    from robust.data.world import generate_world
    from robust.victims.openclip import save_local_dir
    from tests.conftest import TINY_OPEN_CLIP_CFG, TINY_PREPROCESS
    from tests.test_anyattack import released_layout_checkpoint

    folder = tmp_path_factory.mktemp("released")
    vision = {**TINY_OPEN_CLIP_CFG["vision_cfg"], "image_size": 224, "patch_size": 32}
    vision |= {"layers": 1}
    config = {**TINY_OPEN_CLIP_CFG, "embed_dim": 512, "vision_cfg": vision}
    torch.manual_seed(0)
    save_local_dir(CLIP(**config).eval(), config, {**TINY_PREPROCESS, "size": 224}, folder / "clip")
    released_layout_checkpoint(folder / "coco_cos.pt")
    world = replace(generate_world("val", count=8), labels=None)
    annotation = export_dataset(world, folder / "flickr", annotation_name="test.json")
    return {
        "decoder": str(folder / "coco_cos.pt"),
        "clip": f"open_clip:local-dir:{folder / 'clip'}",
        "dataset": f"karpathy:{folder / 'flickr'}:{annotation}",
        "folder": folder,
    }


def test_a_released_decoder_attacks_and_is_evaluated_on_a_karpathy_folder(released):
    import json

    from robust.data import load_dataset
    from robust.data.images import load_images
    from robust.harness.store import ResultStore
    from tests.cli_helpers import invoke

    adv_dir = released["folder"] / "adv"
    attacked = invoke(
        "anyattack", "attack", "--decoder", released["decoder"], "--victim", released["clip"],
        "--dataset", released["dataset"], "--pairs", "3", "--out", str(adv_dir),
    )  # fmt: skip
    assert attacked.exit_code == 0, attacked.output
    assert f"robust anyattack eval --decoder {released['decoder']}" in attacked.output
    record = json.loads((adv_dir / "pairs.json").read_text())
    assert record["attack"]["decoder"]["image_size"] == 224
    assert record["attack"]["eps"] == pytest.approx(16 / 255)  # the released budget
    clean = load_dataset(released["dataset"])
    adversarial = load_dataset(f"karpathy:{adv_dir}:{adv_dir / 'annotations.json'}")
    assert adversarial.num_images == 3
    for index, (clean_id, target_id) in enumerate(
        zip(record["clean"], record["target"], strict=True)
    ):
        target = clean.image_ids.index(target_id)
        assert adversarial.captions_of([index])[0] == clean.captions_of([target])[0]
        source = load_images(clean.images, [clean.image_ids.index(clean_id)], 224, "crop")
        pixels = load_images(adversarial.images, [index], 224, "crop")
        change = (pixels - source).abs().max().item()
        assert 0 < change <= 16 / 255 + 1 / 255  # the budget, and the PNG's rounding

    run_dir = released["folder"] / "run"
    evaluated = invoke(
        "anyattack", "eval", "--decoder", released["decoder"], "--encoder", released["clip"],
        "--victim", released["clip"], "--dataset", released["dataset"], "--pairs", "3",
        "--examples", "1", "--out", str(run_dir),
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    with ResultStore.in_run_dir(run_dir) as store:
        rows = store.metrics(attack="anyattack")
        spec = store.run_info(store.latest_run_id())["spec"]
    assert {row.metric for row in rows} >= {"adv_tr_r1", "floor_tr_r1", "ceiling_tr_r1"}
    assert {row.source for row in rows} == {released["clip"]} and {row.seed for row in rows} == {0}
    assert spec["decoder_source"] == released["decoder"] and spec["pairs"] == 3
    assert (run_dir / "anyattack_examples" / "00_adversarial.png").is_file()


def test_released_path_errors_are_one_line(released, tmp_path):
    from tests.cli_helpers import assert_one_line_error, invoke

    common = [
        "--victim",
        released["clip"],
        "--dataset",
        released["dataset"],
        "--out",
        str(tmp_path),
    ]
    missing = invoke("anyattack", "attack", "--decoder", str(tmp_path / "absent.pt"), *common)
    assert_one_line_error(missing, "does not exist")
    wrong = tmp_path / "wrong.pt"
    wrong.write_bytes(b"")
    import torch

    torch.save({"weights": {}}, wrong)
    assert_one_line_error(
        invoke("anyattack", "attack", "--decoder", str(wrong), *common), "decoder_state_dict"
    )
    unknown = ["--decoder", released["decoder"], "--victim", released["clip"]]
    assert_one_line_error(
        invoke("anyattack", "attack", *unknown, "--dataset", "imagenet", "--out", str(tmp_path)),
        "unknown dataset 'imagenet'",
    )
    assert_one_line_error(
        invoke("anyattack", "attack", "--victim", released["clip"], "--out", str(tmp_path)),
        "--decoder PATH",
    )
    toy = invoke(
        "anyattack", "attack", "--decoder", released["decoder"], "--victim", "toy-clip-vit",
        "--dataset", released["dataset"], "--out", str(tmp_path),
    )  # fmt: skip
    assert_one_line_error(toy, "64-d embeddings but the decoder takes 512-d")
    no_encoder = invoke(
        "anyattack", "eval", "--decoder", released["decoder"], "--victim", released["clip"],
        "--dataset", released["dataset"], "--out", str(tmp_path),
    )  # fmt: skip
    assert_one_line_error(no_encoder, "does not record its encoder", "--encoder")
