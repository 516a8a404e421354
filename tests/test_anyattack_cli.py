"""`robust anyattack` end to end on the zoo's world, including its one-line errors."""

from __future__ import annotations

import json

from robust.data.world import ZOO_WORLD
from robust.harness.store import ResultStore
from robust.victims.registry import load_victim
from tests.cli_helpers import assert_one_line_error, invoke


def test_pretrain_resume_load_attack_and_eval(tmp_path):
    checkpoint = tmp_path / "decoder.pt"
    common = ["--data", f"{ZOO_WORLD}:val", "--limit", "32", "--batch-size", "8", "--chunks", "2"]
    result = invoke(
        "anyattack", "pretrain", "--out", str(checkpoint), *common, "--steps", "2",
        "--channels", "64", "--checkpoint-every", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "step 2/2" in result.output

    again = invoke("anyattack", "pretrain", "--out", str(checkpoint), "--steps", "2")
    assert_one_line_error(again, "already exists", "--resume")
    resumed = invoke("anyattack", "pretrain", "--out", str(checkpoint), "--resume")
    assert resumed.exit_code == 0 and "step 2/2" in resumed.output

    loaded = invoke("anyattack", "load", str(checkpoint))
    assert loaded.exit_code == 0, loaded.output
    noise_size = f"{load_victim('toy-clip-vit').image_size} px"  # the encoder's, by default
    for fragment in ("64-d embedding", noise_size, "stage pretrain", "encoder toy-clip-vit"):
        assert fragment in loaded.output
    slim = tmp_path / "slim.pt"
    assert invoke("anyattack", "load", str(checkpoint), "--save-decoder", str(slim)).exit_code == 0
    assert slim.stat().st_size < checkpoint.stat().st_size / 2  # AdamW moments dropped
    assert "step 2/2" in invoke("anyattack", "load", str(slim)).output

    adv_dir = tmp_path / "adv"
    attacked = invoke(
        "anyattack", "attack", str(checkpoint), "--out", str(adv_dir), "--limit", "40",
        "--pairs", "6",
    )  # fmt: skip
    assert attacked.exit_code == 0, attacked.output
    annotation = json.loads((adv_dir / "annotations.json").read_text())
    pairs = json.loads((adv_dir / "pairs.json").read_text())
    assert len(annotation) == 6 and len(pairs["target"]) == 6
    assert all(len(entry["caption"]) == 5 for entry in annotation)

    run_dir = tmp_path / "run"
    evaluated = invoke(
        "anyattack", "eval", "--decoder", str(checkpoint), "--victim", "toy-clip-vit",
        "--victim", "toy-clip-rn", "--victim", "toy-blip-cap", "--limit", "40", "--pairs", "10",
        "--examples", "1", "--out", str(run_dir),
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    assert "caption target rate on toy-blip-cap" in evaluated.output
    with ResultStore.in_run_dir(run_dir) as store:
        rows = store.metrics(attack="anyattack")
    targets = {row.target for row in rows}
    assert targets == {"toy-clip-vit", "toy-clip-rn", "toy-blip-cap"}
    captions = {row.metric: row.value for row in rows if row.target == "toy-blip-cap"}
    assert 0 <= captions["adv_vs_target_objects_true"] <= 1
    assert captions["ceiling_vs_target_color_true"] > captions["floor_vs_target_color_true"]
    assert {row.source for row in rows} == {"toy-clip-vit"}
    ceiling = {row.target: row.value for row in rows if row.metric == "ceiling_tr_r1"}
    assert all(value > 0.3 for value in ceiling.values())  # the targets retrieve themselves
    assert (run_dir / "anyattack_examples" / "00_noise.png").is_file()


def test_errors_are_one_line(tmp_path):
    missing = invoke("anyattack", "load", str(tmp_path / "nope.pt"))
    assert_one_line_error(missing, "does not exist")
    bad_eps = invoke("anyattack", "pretrain", "--out", str(tmp_path / "x.pt"), "--eps", "sixteen")
    assert_one_line_error(bad_eps, "eps", "16/255")
    no_init = invoke("anyattack", "finetune", "--out", str(tmp_path / "f.pt"))
    assert_one_line_error(no_init, "--init")
