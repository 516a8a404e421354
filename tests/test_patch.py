"""The AdvCLIP universal patch: geometry, artifacts, training, downstream evaluation, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robust.attacks.advclip import AdvCLIP, knn_graph, topology_deviation
from robust.attacks.base import AttackConfigError
from robust.attacks.patch_artifact import (
    PatchArtifact,
    PatchFileError,
    load_patch,
    patched_pixels,
    random_patch_like,
    sidecar_path,
)
from robust.attacks.patch_geometry import (
    PatchBoxes,
    apply_patch,
    corner_position,
    patch_masks,
    patch_side,
    sample_boxes,
)
from robust.cli import app
from robust.data.images import load_images
from robust.data.world import ZOO_WORLD, generate_world
from robust.errors import CapabilityError
from robust.eval import downstream
from robust.harness.evaluate import dataset_key
from robust.harness.patch import (
    CONTROL_ATTACK,
    PATCH_ATTACK,
    occluded_by_patch,
    run_patch_evaluation,
)
from robust.harness.store import ResultStore
from robust.victims.base import Victim
from robust.victims.registry import load_victim
from tests.cli_helpers import assert_one_line_error, runner


def make_artifact(seed: int = 3, placement: str = "fixed", image_size: int = 64) -> PatchArtifact:
    """A random patch claimed by toy-clip-vit; 64 px for the geometry tests, the toy's own
    size where the patch meets the shipped toy."""
    side = patch_side(image_size, 0.03)
    patch = torch.rand(3, side, side, generator=torch.Generator().manual_seed(seed))
    return PatchArtifact(patch, "toy-clip-vit", image_size, 0.03, placement, seed=seed)


def toy_image_size() -> int:
    """The shipped toy-clip-vit's input side (its world's image size)."""
    return load_victim("toy-clip-vit").image_size


# -- geometry --------------------------------------------------------------------------------


def test_patch_side_follows_area_fraction_and_refuses_impossible_sizes():
    assert patch_side(224, 0.03) == 38  # AdvCLIP's 38x38 at 224 px
    assert patch_side(64, 0.03) == 11
    for fraction in (0.0, -0.1):
        with pytest.raises(AttackConfigError, match="patch size must be positive"):
            patch_side(64, fraction)
    for fraction in (1.0, 1.5):
        with pytest.raises(AttackConfigError, match="not smaller than the image"):
            patch_side(64, fraction)
    with pytest.raises(AttackConfigError, match="under one pixel"):
        patch_side(16, 0.001)


def test_fixed_patch_replaces_exactly_its_bottom_right_box(world_small):
    images = load_images(world_small.images, range(4), 64, "crop")
    artifact = make_artifact()
    patched = artifact.apply(images)
    top, left = corner_position(64, artifact.side)
    assert (top, left) == (49, 49)  # inset 4 px = 1/16 of the side, as 14 px at 224
    mask = patch_masks(artifact.boxes(4, 64), 64).bool().expand_as(images)
    assert torch.equal(patched[~mask], images[~mask])
    box = patched[:, :, top : top + artifact.side, left : left + artifact.side]
    assert torch.equal(box, artifact.patch.expand_as(box))
    assert patched.min() >= 0 and patched.max() <= 1


def test_random_placement_stays_inside_image_and_mask_and_is_seeded(world_small):
    images = load_images(world_small.images, range(16), 64, "crop")
    patch = torch.rand(3, 11, 11, generator=torch.Generator().manual_seed(0))
    boxes = sample_boxes(16, 64, 11, "random", torch.Generator().manual_seed(1), (0.5, 1.5))
    assert (boxes.top >= 0).all() and (boxes.top + boxes.side <= 64).all()
    assert (boxes.left >= 0).all() and (boxes.left + boxes.side <= 64).all()
    assert len(set(boxes.side.tolist())) > 1  # EOT over scale
    patched = apply_patch(images, patch, boxes)
    mask = patch_masks(boxes, 64).bool().expand_as(images)
    assert torch.equal(patched[~mask], images[~mask])
    assert patched.min() >= 0 and patched.max() <= 1
    again = sample_boxes(16, 64, 11, "random", torch.Generator().manual_seed(1), (0.5, 1.5))
    assert torch.equal(again.top, boxes.top) and torch.equal(again.side, boxes.side)


def test_patch_keeps_its_area_fraction_at_another_resolution(world_small):
    artifact = make_artifact()
    images = load_images(world_small.images, range(2), 128, "crop")
    patched = artifact.apply(images)
    changed = (patched != images).any(dim=1)
    side = patch_side(128, 0.03)
    assert side == 22
    assert changed.sum(dim=(1, 2)).max() <= side * side
    assert changed[:, : 128 - side - 8].sum() == 0  # nothing outside the corner box


# -- artifacts -------------------------------------------------------------------------------


def test_saved_and_reloaded_patch_gives_identical_patched_images(tmp_path, world_small):
    artifact = make_artifact(placement="random")
    artifact = PatchArtifact(
        artifact.patch, "toy-clip-vit", 64, 0.03, "random", seed=3,
        config={"steps": 2}, curve=[{"step": 1, "loss_g": -1.5}],
    )  # fmt: skip
    path = artifact.save(tmp_path / "patch.png")
    reloaded = load_patch(path)
    images = load_images(world_small.images, range(8), 64, "crop")
    first = artifact.apply(images, torch.Generator().manual_seed(5))
    second = reloaded.apply(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    sidecar = json.loads(sidecar_path(path).read_text())
    assert sidecar["source"] == "toy-clip-vit" and sidecar["placement"] == "random"
    assert sidecar["side"] == 11 and sidecar["curve"] == [{"step": 1, "loss_g": -1.5}]
    assert sidecar["config"] == {"steps": 2} and sidecar["seed"] == 3


def test_missing_or_mismatched_patch_files_are_one_clear_error(tmp_path):
    with pytest.raises(PatchFileError, match="not found"):
        load_patch(tmp_path / "none.png")
    path = make_artifact().save(tmp_path / "patch.png")
    sidecar = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps(sidecar | {"side": 12}))
    with pytest.raises(PatchFileError, match="do not belong together"):
        load_patch(path)
    sidecar_path(path).unlink()
    with pytest.raises(PatchFileError, match="sidecar is missing"):
        load_patch(path)


def test_random_control_has_same_geometry_and_other_pixels():
    artifact = make_artifact()
    control = random_patch_like(artifact, seed=7)
    assert control.patch.shape == artifact.patch.shape and control.placement == "fixed"
    assert control.attack == "random-patch" and not torch.equal(control.patch, artifact.patch)
    assert torch.equal(control.patch, random_patch_like(artifact, seed=7).patch)


# -- losses and training ---------------------------------------------------------------------


def test_topology_deviation_is_zero_when_nothing_moves_and_grows_with_drift():
    generator = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(50, 8, generator=generator), dim=-1)
    anchors = bank[:4]
    neighbours = knn_graph(anchors, bank, 5, exclude=torch.arange(4))
    assert not (neighbours == torch.arange(4).view(-1, 1)).any()  # itself excluded
    assert topology_deviation(anchors, anchors, bank, neighbours) < 1e-5
    moved = torch.nn.functional.normalize(anchors + 0.5 * torch.randn(4, 8, generator=generator))
    far = torch.nn.functional.normalize(anchors + 3.0 * torch.randn(4, 8, generator=generator))
    small = topology_deviation(anchors, moved, bank, neighbours)
    assert small > 0.01
    assert topology_deviation(anchors, far, bank, neighbours) > small


def test_a_few_training_steps_move_embeddings_further_than_the_random_control():
    victim = load_victim("toy-clip-vit")
    fit = generate_world("train", count=64, version=ZOO_WORLD)
    attack = AdvCLIP(victim, seed=0, steps=12, batch_size=16, lr=2e-3, bank_size=64, log_every=4)
    artifact = attack.fit(fit)
    assert [point["step"] for point in artifact.curve] == [4, 8, 12]
    held_out = generate_world("val", count=32, version=ZOO_WORLD)
    images = load_images(held_out.images, range(32), victim.image_size, "crop")
    with torch.no_grad():
        clean = victim.encode_image(images)
        adversarial = victim.encode_image(artifact.apply(images))
        control = victim.encode_image(random_patch_like(artifact, 0).apply(images))
    adversarial_cosine = (clean * adversarial).sum(-1).mean()
    control_cosine = (clean * control).sum(-1).mean()
    assert adversarial_cosine < control_cosine - 0.05
    assert torch.equal(attack.apply(images), artifact.apply(images))
    assert artifact.config["steps"] == 12 and artifact.config["alpha"] == 10.0


def test_fitting_is_a_function_of_the_seed_alone_and_leaves_the_global_generator_alone():
    victim = load_victim("toy-clip-vit")
    fit = generate_world("train", count=16, version=ZOO_WORLD)

    def fit_after_global_seed(global_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(global_seed)
        before = torch.random.get_rng_state()
        attack = AdvCLIP(victim, seed=5, steps=2, batch_size=8, bank_size=16, log_every=1)
        patch = attack.fit(fit).patch
        assert torch.equal(torch.random.get_rng_state(), before)
        return patch, torch.rand(4)

    patch_a, after_a = fit_after_global_seed(0)
    patch_b, after_b = fit_after_global_seed(1)
    assert torch.equal(patch_a, patch_b)  # network initialisation follows `seed`, not the caller
    assert not torch.equal(after_a, after_b)  # and the caller's own stream goes on untouched


def test_bad_hyper_parameters_fail_before_training():
    victim = load_victim("toy-clip-vit")
    with pytest.raises(AttackConfigError, match="placement"):
        AdvCLIP(victim, placement="middle")
    with pytest.raises(AttackConfigError, match="patch size must be positive"):
        AdvCLIP(victim, area_fraction=0)
    with pytest.raises(AttackConfigError, match="steps"):
        AdvCLIP(victim, steps=0)
    with pytest.raises(AttackConfigError, match="not fitted"):
        AdvCLIP(victim).apply(torch.zeros(1, 3, victim.image_size, victim.image_size))


class _NoImageEncoder(Victim):
    family = "text-only"

    def __init__(self) -> None:
        super().__init__("text-only", 32, (0.5,) * 3, (0.5,) * 3)

    def encode_image(self, images):
        raise CapabilityError("text-only has no image encoder")

    def encode_text(self, texts):
        return torch.zeros(len(texts), 4)


def test_victim_without_image_encoder_is_refused(world_small):
    with pytest.raises(AttackConfigError, match="has no image encoder"):
        AdvCLIP(_NoImageEncoder(), steps=1).fit(world_small)


# -- downstream evaluation -------------------------------------------------------------------


def test_knn_votes_and_zero_shot_metrics_count_set_membership():
    references = torch.eye(3)
    sets = [frozenset({"a"}), frozenset({"b"}), frozenset({"b", "c"})]
    queries = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.9], [0.0, 0.9, 1.0]])
    predictions = downstream.knn_predictions(
        queries, references, sets, ("a", "b", "c"), 1, leave_one_out=False
    )
    assert predictions.tolist() == [0, 1, 1]
    metrics = downstream.attacked_metrics(
        "shape", np.array([0, 1, 1]), np.array([1, 1, 2]), ("a", "b", "c"), sets
    )
    assert metrics["shape_acc"] == pytest.approx(2 / 3)
    assert metrics["shape_acc_drop"] == pytest.approx(1 / 3)
    assert metrics["shape_fooling_rate"] == pytest.approx(2 / 3)


def test_world_label_tasks_read_the_generator_labels(world_small):
    tasks = {task.name: task for task in downstream.WORLD_TASKS}
    label = world_small.labels[0]
    shapes = tasks["shape"].label_sets([label])[0]
    assert shapes == {obj["shape"] for obj in label["objects"]}
    assert tasks["background"].label_sets([label])[0] == {label["background"]}
    assert len(tasks["color"].prompts()) == 8


def test_patch_evaluation_stores_every_task_with_a_control_row(tmp_path):
    data = generate_world("test-1k", count=20, version=ZOO_WORLD)
    targets = ("toy-clip-vit", "toy-blip-cap")
    artifact = make_artifact(image_size=toy_image_size())
    evaluation = run_patch_evaluation(artifact, targets, data, tmp_path, examples=2)
    with ResultStore.in_run_dir(tmp_path) as store:
        rows = store.metrics(evaluation.run_id)
        info = store.run_info(evaluation.run_id)
    found = {(row.victim, row.attack, row.scoring) for row in rows}
    # the patch's rows carry its fitting seed, the control's the seed that drew it
    seeds = {(row.attack, row.seed) for row in rows}
    assert seeds == {(None, None), (PATCH_ATTACK, 3), (CONTROL_ATTACK, 0)}
    assert all(row.target == row.victim for row in rows)
    for attack in (None, PATCH_ATTACK, CONTROL_ATTACK):
        for scoring in ("itc", "zero-shot", "knn"):
            assert ("toy-clip-vit", attack, scoring) in found
        assert ("toy-blip-cap", attack, "caption") in found
        assert ("toy-blip-cap", attack, "knn") in found
    values = {(r.victim, r.attack, r.scoring, r.metric): r.value for r in rows}
    for attack in (PATCH_ATTACK, CONTROL_ATTACK):
        key = ("toy-clip-vit", attack, "itc")
        drop = values[(*key, "tr_drop_r1")]
        assert drop == pytest.approx(
            values[("toy-clip-vit", None, "itc", "tr_r1")] - values[(*key, "tr_r1")]
        )
        assert 0 <= values[(*key, "tr_asr_r1")] <= 1
        assert 0 <= values[("toy-blip-cap", attack, "caption", "caption_change_rate")] <= 1
        assert 0 <= values[("toy-clip-vit", attack, "zero-shot", "shape_fooling_rate")] <= 1
    assert all(r.source == "toy-clip-vit" for r in rows if r.attack is not None)
    assert info["seeds"] == {"patch": 3, "control": 0, "placement": 0}
    assert (tmp_path / "patch" / "advclip-patch.png").is_file()
    assert (tmp_path / "patch" / "random-patch.json").is_file()
    assert len(list((tmp_path / "examples").rglob("*.png"))) == 2 * 3 * 2

    # World runs also score the images whose captioned objects the fixed corner patch
    # misses: exactly those without an object in the bottom-right grid cell.
    whole = [
        i for i, label in enumerate(data.labels)
        if not any((o["row"], o["col"]) == (2, 2) for o in label["objects"])
    ]  # fmt: skip
    assert 0 < len(whole) < data.num_images
    assert values[("toy-clip-vit", None, "itc", "images_unoccluded")] == len(whole)
    with ResultStore.in_run_dir(tmp_path) as store:
        name, split = dataset_key(data)
        ranks = store.query_ranks(
            evaluation.run_id, victim="toy-clip-vit", dataset=name, split=split,
            direction="tr", scoring="itc", attack=CONTROL_ATTACK, seed=0,
            source="toy-clip-vit", target="toy-clip-vit",
        )  # fmt: skip
    expected = float(np.mean(np.asarray(ranks)[whole] < 1))
    assert values[("toy-clip-vit", CONTROL_ATTACK, "itc", "tr_r1_unoccluded")] == pytest.approx(
        expected
    )
    assert 0 <= values[("toy-clip-vit", PATCH_ATTACK, "itc", "tr_asr_r1_unoccluded")] <= 1


def test_patch_evaluation_pastes_into_the_cache_once_per_patch_and_geometry(tmp_path, monkeypatch):
    """The pasted images are cache entries at the target's geometry, reused by a second run
    into the same directory (same rows), and pasted again for other pixels under the same
    name and seed."""
    import robust.attacks.patch_artifact as artifact_module
    from robust.harness.cache import AdversarialCache
    from robust.harness.patch import dataset_pixels

    size = toy_image_size()
    data = generate_world("test-1k", count=12, version=ZOO_WORLD)
    artifact = make_artifact(placement="random", image_size=size)
    first = run_patch_evaluation(artifact, ["toy-clip-vit"], data, tmp_path, examples=0)
    cache = AdversarialCache(tmp_path / "cache")
    clean = dataset_pixels(data, size, "crop")
    for label, made, seed in (
        (PATCH_ATTACK, artifact, 3),
        (CONTROL_ATTACK, random_patch_like(artifact, 0), 0),
    ):
        entry = cache.entry(label, "toy-clip-vit", seed, (size, "crop"))
        stored = entry.load()
        assert np.array_equal(stored.images, patched_pixels(made, clean, 0))
        assert stored.texts == [list(group) for group in data.captions_of(range(12))]
    assert not cache.entry(PATCH_ATTACK, "toy-clip-vit", 3).path.exists()

    def no_pasting(*args, **kwargs):
        raise AssertionError("a cached patch entry was pasted again")

    monkeypatch.setattr(artifact_module, "patched_pixels", no_pasting)
    second = run_patch_evaluation(artifact, ["toy-clip-vit"], data, tmp_path, examples=0)
    assert second.run_id == first.run_id + 1
    assert second.rows == first.rows
    monkeypatch.undo()

    other = PatchArtifact(1.0 - artifact.patch, "toy-clip-vit", size, 0.03, "random", seed=3)
    run_patch_evaluation(other, ["toy-clip-vit"], data, tmp_path, examples=0)
    repasted = cache.entry(PATCH_ATTACK, "toy-clip-vit", 3, (size, "crop")).load()
    assert np.array_equal(repasted.images, patched_pixels(other, clean, 0))


def test_occlusion_follows_the_patch_box_over_the_world_grid():
    labels = [
        {"objects": [{"row": 2, "col": 2}]},
        {"objects": [{"row": 0, "col": 0}, {"row": 1, "col": 2}]},
        {"objects": [{"row": 1, "col": 1}]},
    ]
    corner = make_artifact().boxes(3, 64)  # fixed: inside the bottom-right cell
    assert occluded_by_patch(labels, corner, 64).tolist() == [True, False, False]
    # a box across the top-left four cells' shared corner overlaps all four of them
    middle = PatchBoxes(torch.tensor([16] * 3), torch.tensor([16] * 3), torch.tensor([20] * 3))
    assert occluded_by_patch(labels, middle, 64).tolist() == [False, True, True]


# -- CLI -------------------------------------------------------------------------------------


def test_cli_train_apply_eval_round_trip(tmp_path):
    out = tmp_path / "p.png"
    result = runner.invoke(
        app,
        ["patch", "train", "--victim", "toy-clip-vit", "--out", str(out), "--limit", "32",
         "--steps", "2", "--batch-size", "8"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_patch(out).source == "toy-clip-vit"
    result = runner.invoke(
        app, ["patch", "apply", str(out), "--out", str(tmp_path / "imgs"), "--limit", "3"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 3
    result = runner.invoke(
        app,
        ["patch", "eval", str(out), "--victim", "toy-clip-vit", "--limit", "12",
         "--out", str(tmp_path / "run")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "random-patch" in result.output and "advclip-patch" in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--area", "0"], "patch size must be positive"),
        (["--area", "-0.5"], "patch size must be positive"),
        (["--area", "1"], "not smaller than the image"),
        (["--placement", "middle"], "unknown patch placement"),
    ],
)
def test_cli_train_rejects_bad_sizes_in_one_line(tmp_path, args, fragment):
    result = runner.invoke(
        app, ["patch", "train", "--victim", "toy-clip-vit", "--out", str(tmp_path / "p.png"), *args]
    )
    assert_one_line_error(result, fragment)


def test_cli_refuses_a_victim_without_image_encoder(tmp_path, monkeypatch):
    import robust.harness.patch as patch_module

    monkeypatch.setattr(patch_module, "load_victim", lambda *a, **k: _NoImageEncoder())
    result = runner.invoke(
        app,
        ["patch", "train", "--victim", "toy-clip-vit", "--out", str(tmp_path / "p.png"),
         "--limit", "4", "--steps", "1"],
    )  # fmt: skip
    assert_one_line_error(result, "has no image encoder")


def test_cli_missing_and_mismatched_patch_files(tmp_path):
    result = runner.invoke(
        app, ["patch", "eval", str(tmp_path / "x.png"), "--victim", "toy-clip-vit"]
    )
    assert_one_line_error(result, "patch file not found")
    path = make_artifact().save(tmp_path / "patch.png")
    sidecar = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps(sidecar | {"side": 5}))
    result = runner.invoke(app, ["patch", "apply", str(path), "--out", str(tmp_path / "o")])
    assert_one_line_error(result, "do not belong together")


# -- matrix ----------------------------------------------------------------------------------


def test_matrix_fits_a_universal_patch_once_per_source_and_caches_it(tmp_path, monkeypatch):
    from robust.harness.matrix import run_matrix
    from robust.harness.spec import parse_spec

    params = {"steps": 2, "batch_size": 8, "fit_limit": 16, "bank_size": 16, "knn_k": 4}
    spec = parse_spec(
        {
            "name": "patch-matrix",
            "dataset": f"{ZOO_WORLD}:test-1k",
            "limit": 8,
            "sources": ["toy-clip-vit"],
            "targets": ["toy-clip-vit", "toy-clip-rn"],
            "attacks": [{"name": "advclip", "params": params}],
            "output_dir": str(tmp_path),
        }
    )
    fits = []
    original_fit = AdvCLIP.fit
    monkeypatch.setattr(
        AdvCLIP, "fit", lambda self, *a, **k: fits.append(1) or original_fit(self, *a, **k)
    )
    result = run_matrix(spec)
    assert len(fits) == 1 and result.computed["crafted"] == 1
    (entry,) = [p.parent for p in tmp_path.rglob("patch.png")]
    artifact = load_patch(entry / "patch.png")
    assert artifact.config["steps"] == 2 and artifact.source == "toy-clip-vit"
    from robust.harness.cache import AdversarialCache

    cached = AdversarialCache(tmp_path / "cache").entry("advclip", "toy-clip-vit", 0).load()
    clean = load_images(generate_world_prefix(8).images, range(8), toy_image_size(), "crop")
    expected = artifact.apply(clean)
    assert np.array_equal(
        cached.images, (expected.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    )
    for target in ("toy-clip-vit", "toy-clip-rn"):
        tr, ir = result.asr("advclip", "toy-clip-vit", target)
        assert 0 <= tr <= 1 and 0 <= ir <= 1
    again = run_matrix(spec)
    assert len(fits) == 1 and again.computed["crafted"] == 0


def generate_world_prefix(count: int):
    return generate_world("test-1k", count=count, version=ZOO_WORLD)


def test_a_saved_matrix_patch_is_reused_only_by_the_same_config(tmp_path):
    victim = load_victim("toy-clip-vit")
    attack = AdvCLIP(victim, seed=3, steps=5)
    fitted = make_artifact(image_size=victim.image_size)
    attack.artifact = PatchArtifact(
        fitted.patch, victim.name, victim.image_size, 0.03, "fixed", seed=3,
        config={**attack.config(), "fit_images": f"{ZOO_WORLD}:train[:16]"},
    )  # fmt: skip
    attack.save_artifact(tmp_path)
    same = AdvCLIP(victim, seed=3, steps=5)
    assert same.load_artifact(tmp_path) and torch.equal(same.artifact.patch, fitted.patch)
    assert not AdvCLIP(victim, seed=3, steps=6).load_artifact(tmp_path)
    assert not AdvCLIP(victim, seed=4, steps=5).load_artifact(tmp_path)
    assert not AdvCLIP(victim, seed=3).load_artifact(tmp_path / "empty")
