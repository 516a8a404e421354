"""Zero-shot robustness: prompt files, labelling rules, APGD configs, the store, CLI, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from PIL import Image

import robust
from robust.data import load_dataset, load_image_dataset
from robust.data.world import BACKGROUNDS, COLORS, WORLD_VERSIONS
from robust.eval import zeroshot
from robust.eval.prompts import PromptFileError, load_prompt_task, world_prompt_tasks
from robust.harness.store import ResultStore
from robust.harness.zeroshot import ZeroShotRequest, run_zeroshot
from robust.report import build_report

FOLDER_TASK = {
    "name": "world-objects",
    "classes": {"red": "red shape", "blue": "blue shape"},
    "templates": ["a {}", "an image of a {}"],
}


def test_shipped_world_tasks_use_the_world_vocabulary():
    tasks = {task.name: task for task in world_prompt_tasks()}
    # one shape task for every world version: each version's shapes are among its classes
    assert len(set(tasks["shape"].classes)) == len(tasks["shape"].classes)
    for version in WORLD_VERSIONS.values():
        assert set(version.shapes) <= set(tasks["shape"].classes), version.name
    assert tasks["color"].classes == tuple(COLORS)
    assert tasks["background"].classes == tuple(BACKGROUNDS)
    assert all(task.label == task.name for task in tasks.values())
    assert load_prompt_task("world-shape") == tasks["shape"]


@pytest.mark.parametrize("version", ["world", "world-v3"])
def test_a_world_image_is_true_of_every_class_its_objects_carry(version):
    data = load_dataset(f"{version}:test-1k", limit=60)
    shape = load_prompt_task("world-shape")
    selected = zeroshot.task_images(data, shape)
    assert len(selected) == 60  # every world image holds at least one shape
    for image, row in zip(selected.indices, selected.true_classes, strict=True):
        shapes = {obj["shape"] for obj in data.labels[image]["objects"]}
        assert {shape.classes[c] for c in np.flatnonzero(row)} == shapes
    if version == "world-v3":  # mostly three objects, so most images hold several shapes
        assert (selected.true_classes.sum(axis=1) > 1).mean() > 0.5
    background = zeroshot.task_images(data, load_prompt_task("world-background"))
    assert len(background) == 60 and (background.true_classes.sum(axis=1) == 1).all()


def test_ranks_score_the_best_true_class_and_attacks_aim_at_it():
    logits = torch.tensor(
        [[0.1, 0.9, 0.5, 0.2], [0.8, 0.1, 0.7, 0.3], [0.4, 0.4, 0.1, 0.0], [0.5, 0.5, 0.0, 0.0]]
    )
    true_classes = torch.tensor(
        [
            [True, False, True, False],  # best true class 2, beaten by class 1
            [False, True, True, False],  # best true class 2, beaten by class 0
            [True, True, False, False],  # two true classes tie at the top: correct
            [True, False, False, False],  # a tie with a false class counts against it
        ]
    )
    assert zeroshot.best_true_class(logits, true_classes).tolist() == [2, 2, 0, 0]
    assert zeroshot.true_class_ranks(logits, true_classes).tolist() == [1, 1, 0, 1]
    swapped = true_classes[:, [1, 0, 2, 3]]  # now class 1, then class 0, is true of image 0, 1
    assert zeroshot.true_class_ranks(logits, swapped).tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ({"name": "x", "classes": ["a", "b"], "templates": ["no slot"]}, "one {}"),
        ({"name": "x", "classes": ["a"], "templates": ["a {}"]}, "at least two"),
        ({"name": "x", "classes": ["a", "b"], "templates": ["{}"], "extra": 1}, "unknown keys"),
        ({"name": "x", "label": "size", "classes": ["a", "b"], "templates": ["{}"]}, "label"),
    ],
)
def test_bad_prompt_files_are_one_clear_error(tmp_path, content, fragment):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(content))
    with pytest.raises(PromptFileError, match="task.json") as caught:
        load_prompt_task(path)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(PromptFileError, match="not found"):
        load_prompt_task(tmp_path / "missing.yaml")
    with pytest.raises(PromptFileError, match="world-shape"):
        load_prompt_task("world-shapes")


def test_apgd_configs_handle_small_class_sets():
    assert zeroshot.not_applicable("apgd-t", 3) is not None
    assert zeroshot.not_applicable("apgd-t", 4) is None
    assert zeroshot.not_applicable("apgd-ce", 2) is None
    six = zeroshot.apgd_config("apgd-t", 2 / 255, 6, steps=100, seed=0)
    assert six["n_target_classes"] == 5 and six["steps"] == 100 and six["norm"] == "Linf"
    assert zeroshot.apgd_config("apgd-t", 2 / 255, 20, steps=100, seed=0)["n_target_classes"] == 9
    victim = robust.load_victim("toy-clip-vit")
    classifier = zeroshot.zero_shot_classifier(victim, load_prompt_task("world-color"))
    eight = zeroshot.apgd_config("apgd-t", 2 / 255, 8, steps=100, seed=0)
    built = zeroshot.build_apgd(eight, classifier)
    assert type(built).__name__ == "APGDT" and built.n_target_classes == 7
    assert built.eps == 2 / 255 and built.steps == 100
    with pytest.raises(robust.errors.RobustError, match="apgd-x"):
        zeroshot.check_attacks(["apgd-x"])


def test_run_stores_clean_and_robust_accuracy_and_resumes(tmp_path, monkeypatch):
    request = ZeroShotRequest(
        victims=("toy-clip-vit",),
        dataset="world:test-1k",
        tasks=("world-color", "world-background"),
        eps=("8/255",),
        steps=5,
        limit=24,
    )
    evaluation = run_zeroshot(request, tmp_path)
    rows = {row["task"]: row for row in evaluation.rows}
    color, background = rows["color"], rows["background"]
    assert background["images"] == color["images"] == 24  # every image has a colour
    assert background["apgd-t@eps=8/255"] is None  # 3 classes: not applicable
    for row in rows.values():
        robust_accuracy = row["apgd-ce+apgd-t@eps=8/255"]
        assert robust_accuracy <= row["apgd-ce@eps=8/255"] <= row["clean"]
    assert color["apgd-ce+apgd-t@eps=8/255"] < color["clean"]
    with ResultStore.in_run_dir(tmp_path) as store:
        spec = store.run_info(evaluation.run_id)["spec"]
        stored = {
            (row.scoring, row.attack): row.value
            for row in store.metrics(evaluation.run_id, metric="acc")
        }
        every_row = store.metrics(evaluation.run_id)
    assert all(row.target == row.victim for row in every_row)  # clean rows too
    assert {(row.attack is None, row.seed) for row in every_row} == {
        (True, None),
        (False, request.seed),
    }
    with ResultStore.in_run_dir(tmp_path) as store:
        ranks = store.query_ranks(
            evaluation.run_id,
            victim="toy-clip-vit",
            dataset="world",
            split="test-1k[:24]",
            direction="tr",
            attack="apgd-ce@eps=8/255",
            seed=request.seed,
            source="toy-clip-vit",
            target="toy-clip-vit",
            scoring="zero-shot:color",
        )
    assert stored[("zero-shot:color", None)] == color["clean"]
    assert float(np.mean(ranks == 0)) == color["apgd-ce@eps=8/255"]
    config = spec["attack_configs"]["color/apgd-t@eps=8/255"]
    assert config["n_target_classes"] == 7 and config["steps"] == 5 and config["eps"] == 8 / 255
    assert spec["tasks"]["color"]["templates"]

    def recompute(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(zeroshot, "classify_ranks", recompute)
    again = run_zeroshot(request, tmp_path)
    assert again.run_id == evaluation.run_id and again.rows == evaluation.rows


def test_report_has_the_section_only_with_zero_shot_rows(tmp_path):
    request = ZeroShotRequest(
        victims=("toy-clip-vit",),
        dataset="world:test-1k",
        tasks=("world-background",),
        eps=("4/255",),
        attacks=("apgd-ce",),
        steps=2,
        limit=8,
    )
    run_zeroshot(request, tmp_path / "run")
    summary = build_report(tmp_path / "run", tmp_path / "report.pdf")
    assert "Zero-shot robustness" in summary.sections
    assert all(title != "Zero-shot robustness" for title, _ in summary.omitted)


def _image_folder(root, classes=("red", "blue")):
    for name in classes:
        (root / name).mkdir(parents=True)
        for copy in range(3):
            colour = (200, 30, 30) if name == "red" else (30, 30, 200)
            Image.new("RGB", (48, 40), colour).save(root / name / f"{copy}.png")
            (root / name / f"{copy}.txt").write_text("not an image")
    return root


def test_image_folder_dataset_takes_classes_from_folders(tmp_path):
    root = _image_folder(tmp_path / "images")
    task_file = tmp_path / "task.json"
    task_file.write_text(json.dumps(FOLDER_TASK))
    folder = load_image_dataset(f"folder:{root}")
    assert folder.class_folders == ("blue", "red", "blue", "red", "blue", "red")
    data = zeroshot.task_images(folder, load_prompt_task(task_file))
    assert data.true_classes.argmax(axis=1).tolist() == [1, 0, 1, 0, 1, 0]
    assert (data.true_classes.sum(axis=1) == 1).all()  # a folder image has one class
    request = ZeroShotRequest(
        victims=("toy-clip-vit",),
        dataset=f"folder:{root}",
        tasks=(str(task_file),),
        eps=("4/255",),
        attacks=("apgd-ce",),
        steps=2,
    )
    evaluation = run_zeroshot(request, tmp_path / "run")
    assert evaluation.rows[0]["images"] == 6
    assert evaluation.rows[0]["clean"] >= evaluation.rows[0]["apgd-ce@eps=4/255"]
    with pytest.raises(robust.errors.RobustError, match="world task"):
        zeroshot.task_images(folder, load_prompt_task("world-color"))


def test_bad_zero_shot_input_is_one_line_and_writes_nothing(tmp_path):
    out = str(tmp_path / "run")
    base = ("zeroshot", "--victim", "toy-clip-vit", "--out", out, "--limit", "4")
    assert_one_line_error(invoke(*base, "--victim", "toy-nope"), "toy-nope")
    captioner = ("zeroshot", "--victim", "toy-blip-cap", "--out", out, "--limit", "4")
    assert_one_line_error(invoke(*captioner), "toy-blip-cap", "CLIP-style")
    assert_one_line_error(invoke(*base, "--eps", "2/0"), "eps")
    assert_one_line_error(invoke(*base, "--attack", "fgsm"), "fgsm", "apgd-ce")
    assert_one_line_error(invoke(*base, "--task", "world-size"), "world-size", "robust specs")
    assert_one_line_error(invoke(*base, "--dataset", "world:nope"), "world split")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    assert_one_line_error(
        invoke(*base, "--dataset", f"folder:{tmp_path / 'flat'}", "--task", "world-shape"),
        "no class sub-folders",
    )
    root = _image_folder(tmp_path / "images")
    assert_one_line_error(invoke(*base, "--dataset", f"folder:{root}"), "--task FILE")
    assert not (tmp_path / "run").exists()


def test_cli_prints_the_table(tmp_path):
    result = invoke(
        "zeroshot",
        "--victim",
        "toy-clip-vit",
        "--task",
        "world-background",
        "--eps",
        "4/255",
        "--attack",
        "apgd-ce",
        "--steps",
        "2",
        "--limit",
        "8",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert "background" in result.output and "apgd-ce" in result.output
    assert (tmp_path / "results.sqlite").is_file()
