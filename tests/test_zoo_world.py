"""Training the toy zoo on another world version (`robust zoo train NAME --world VERSION`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import robust
from robust.data.world import ZOO_WORLD, generate_world
from robust.resources import ZOO_DIR
from robust.zoo.itm_refine import ItmRefineRecipe
from robust.zoo.recipes import CALIBRATED_SCHEDULES
from robust.zoo.train import train_zoo_member, zoo_recipes
from robust.zoo.train_blip import MLM_TEXT_POSITIONS
from robust.zoo.vocab import VOCAB_SIZE
from tests.cli_helpers import assert_one_line_error, invoke

OTHER_WORLDS = ("world-v2", "world-v3")


@pytest.fixture(scope="module")
def world_v3_captions() -> tuple[str, ...]:
    return generate_world("train", count=2000, version="world-v3").captions


@pytest.fixture(scope="module")
def world_v3_towers(tmp_path_factory) -> dict[str, Path]:
    """A CLIP ViT and a masked LM trained for a few steps on world-v3 through the CLI."""
    root = tmp_path_factory.mktemp("world-v3")
    towers = {"clip": root / "clip-vit", "mlm": root / "mlm"}
    for name, out, images in (
        ("toy-clip-vit", towers["clip"], 256),
        ("toy-mlm", towers["mlm"], 64),
    ):
        result = invoke(
            "zoo", "train", name, "--world", "world-v3", "--out", str(out),
            "--epochs", "1", "--train-images", str(images),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    return towers


def _record(folder: Path) -> dict:
    return json.loads((folder / "training.json").read_text())


def test_every_recipe_on_its_own_world_is_the_shipped_recipe():
    for name, (recipe, _) in zoo_recipes().items():
        assert recipe.for_world(recipe.world).config() == recipe.config(), name
    assert ItmRefineRecipe(world=ZOO_WORLD) == ItmRefineRecipe()


def test_calibrated_schedules_set_real_recipe_fields_on_their_world_only():
    def chosen(config: dict, schedule: dict) -> dict:
        """The recipe fields a schedule names; of a dict field, the entries it names."""
        picked = {
            key: {k: config[key][k] for k in value} if isinstance(value, dict) else config[key]
            for key, value in schedule.items()
        }
        return json.loads(json.dumps(picked))

    recipes = {name: recipe for name, (recipe, _) in zoo_recipes().items()}
    assert {"toy-clip-vit", "toy-clip-rn", "toy-blip"} <= set(CALIBRATED_SCHEDULES["world-v3"])
    for version, schedules in CALIBRATED_SCHEDULES.items():
        for name, schedule in schedules.items():
            shipped = chosen(recipes[name].config(), schedule)
            assert shipped != json.loads(json.dumps(schedule)), name  # it changes something
            adapted = chosen(recipes[name].for_world(version).config(), schedule)
            assert adapted == json.loads(json.dumps(schedule)), name
            for other in set(OTHER_WORLDS) - {version}:
                elsewhere = chosen(recipes[name].for_world(other).config(), schedule)
                assert elsewhere == shipped, (name, other)


@pytest.mark.parametrize("version", OTHER_WORLDS)
def test_image_towers_take_the_version_size_and_keep_their_token_count(version):
    recipes = {name: recipe.for_world(version) for name, (recipe, _) in zoo_recipes().items()}
    vit = recipes["toy-clip-vit"]
    assert vit.world == version and vit.preprocess_cfg["size"] == 128
    assert vit.model_cfg["vision_cfg"]["image_size"] == 128
    assert vit.model_cfg["vision_cfg"]["patch_size"] == 16
    rn = recipes["toy-clip-rn"].model_cfg["vision_cfg"]
    assert rn["image_size"] == 128 and rn["patch_size"] is None
    for name in ("toy-albef", "toy-tcl"):
        model = recipes[name].model
        assert (model["image_size"], model["patch_size"]) == (128, 16), name
        assert model["vocab_size"] >= VOCAB_SIZE, name
        # a view shift of the same share of the image
        assert recipes[name].max_shift == 2 * zoo_recipes()[name][0].max_shift == 8, name
    for name in ("toy-blip", "toy-blip-cap"):
        vision = recipes[name].vision
        assert (vision["image_size"], vision["patch_size"]) == (128, 16), name
    assert recipes["toy-mlm"].world == version


def test_text_positions_fit_the_longest_world_v3_caption(world_v3_captions):
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import AutoTokenizer

    clip = SimpleTokenizer()
    clip_tokens = max(len(clip.encode(c)) + 2 for c in world_v3_captions)  # with start, end
    for name in ("toy-clip-vit", "toy-clip-rn"):
        recipe = zoo_recipes()[name][0].for_world("world-v3")
        assert recipe.model_cfg["text_cfg"]["context_length"] >= clip_tokens, name
    # the shipped world vocabulary lacks world-v3's new words, so it splits them the most
    bert = AutoTokenizer.from_pretrained(ZOO_DIR / "toy-mlm", local_files_only=True)
    bert_tokens = max(len(bert(c)["input_ids"]) for c in world_v3_captions)
    albef = zoo_recipes()["toy-albef"][0].for_world("world-v3")
    assert bert_tokens <= min(MLM_TEXT_POSITIONS, albef.model["max_position_embeddings"])


def test_clip_trained_on_world_v3_loads_at_128_px(world_v3_towers):
    victim = robust.load_victim(f"open_clip:local-dir:{world_v3_towers['clip']}")
    assert victim.image_size == 128
    record = _record(world_v3_towers["clip"])
    assert record["train_dataset"] == "world-v3:train"
    assert record["recipe"]["world"] == "world-v3"
    assert record["recipe"]["model_cfg"]["vision_cfg"]["patch_size"] == 16
    assert record["recipe"]["model_cfg"]["text_cfg"]["context_length"] == 64
    # world-v3's calibrated schedule: a shape start first, the options given still win
    assert record["recipe"]["attribute_kinds"] == ["shape"]
    assert record["recipe"]["attribute_text"] and record["recipe"]["attribute_weight"] > 0
    assert record["attribute_start"]["steps"] == record["recipe"]["attribute_epochs"] >= 1
    assert (record["train_images"], record["recipe"]["epochs"]) == (256, 1)
    assert set(record["attribute_scores"]["top_k_precision_by_kind"]) == {"shape"}


def test_masked_lm_on_world_v3_knows_its_words(world_v3_towers):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(world_v3_towers["mlm"], local_files_only=True)
    assert "letter" in tokenizer.get_vocab()
    assert _record(world_v3_towers["mlm"])["recipe"]["world"] == "world-v3"


def test_albef_on_world_v3_warm_starts_from_world_v3_towers_and_refines(world_v3_towers, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "albef"
    train_zoo_member(
        "toy-albef", out, world="world-v3", epochs=1, train_images=128,
        vision_init=str(world_v3_towers["clip"]), text_init=str(world_v3_towers["mlm"]),
    )  # fmt: skip
    mlm = AutoTokenizer.from_pretrained(world_v3_towers["mlm"], local_files_only=True)
    mlm_tokens = [token for token, _ in sorted(mlm.get_vocab().items(), key=lambda t: t[1])]
    assert (out / "vocab.txt").read_text().splitlines() == mlm_tokens
    assert robust.load_victim(f"albef:{out / 'checkpoint.pth'}").image_size == 128
    assert _record(out)["recipe"]["model"]["patch_size"] == 16

    refined = tmp_path / "refined"
    result = invoke(
        "zoo", "refine-itm", "toy-albef", "--world", "world-v3", "--init", str(out),
        "--out", str(refined), "--epochs", "1", "--train-images", "64",
        "--negatives-from-top", "8",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _record(refined)["train_dataset"] == "world-v3:train"


def test_a_warm_start_from_another_world_is_one_line(world_v3_towers):
    # the shipped toy-clip-vit was trained on the zoo's world, so a `world` run refuses it
    result = invoke(
        "zoo", "train", "toy-albef", "--world", "world",
        "--vision-init", "toy-clip-vit", "--text-init", str(world_v3_towers["mlm"]),
    )  # fmt: skip
    assert_one_line_error(result, f"toy-clip-vit was trained on {ZOO_WORLD}, not world")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (
            ("zoo", "train", "toy-albef", "--world", "world"),
            (f"trained on {ZOO_WORLD}, not world", "--vision-init and --text-init"),
        ),
        (("zoo", "train", "toy-blip-cap", "--world", "world-v2"), ("--text-init",)),
        (("zoo", "refine-itm", "toy-blip", "--world", "world"), ("--init", "--world world")),
        (("zoo", "train", "toy-clip-vit", "--world", "world-v9"), ("world-v9", "world-v3")),
        (("zoo", "train", "toy-mlm", "--world", "v3"), ("unknown world version",)),
        (("zoo", "refine-itm", "toy-albef", "--world", "world-v9"), ("world-v9", "world-v2")),
        (("zoo", "train", "toy-clip-vit", "--vision-init", "toy-clip-vit"), ("--vision-init",)),
    ],
)
def test_bad_world_options_are_one_line(args, fragments):
    assert_one_line_error(invoke(*args), *fragments)
