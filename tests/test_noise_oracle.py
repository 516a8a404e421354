"""The clean-independent noise oracle: the ceiling any AnyAttack decoder is read against."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust.attacks.anyattack_oracle import step_checkpoints, target_noise_oracle
from robust.attacks.base import AttackConfigError
from robust.cli import app
from robust.data.images import load_images
from robust.data.world import ZOO_WORLD, generate_world
from robust.eval.targeted import pair_images
from robust.harness.noise_oracle import (
    ORACLE_ATTACK,
    STEP_METRIC,
    evaluate_noise_oracle,
    top1_owned,
)
from robust.harness.store import ResultStore
from robust.victims.registry import load_victim
from tests.cli_helpers import assert_one_line_error, runner

EPS = 16 / 255


@pytest.fixture(scope="module")
def toy_vit():
    return load_victim("toy-clip-vit")


def test_oracle_noise_is_bounded_seeded_and_moves_unseen_cleans_towards_the_target(toy_vit):
    world = generate_world("val", count=40, version=ZOO_WORLD)
    images = load_images(world.images, range(40), toy_vit.image_size, toy_vit.resize_mode)
    targets, pool, unseen = images[:4], images[4:24], images[24:]

    def oracle(seed: int) -> torch.Tensor:
        return target_noise_oracle(
            toy_vit, targets, pool, eps=EPS, steps=8, cleans_per_step=4, batch_size=3,
            generator=torch.Generator().manual_seed(seed),
        )[8]  # fmt: skip

    noise = oracle(0)
    assert noise.shape == targets.shape
    assert noise.abs().max() <= EPS + 1e-7
    assert torch.equal(noise, oracle(0))
    with torch.no_grad():
        goal = toy_vit.encode_image(targets)
        plain = toy_vit.encode_image(unseen)
        cosine_clean = (plain @ goal.t()).mean(0)
        noised = torch.stack([toy_vit.encode_image((unseen + n).clamp(0, 1)) for n in noise])
        cosine_noised = torch.einsum("tcd,td->tc", noised, goal).mean(1)
    assert (cosine_noised > cosine_clean + 0.05).all()  # on cleans it never saw


def test_the_step_record_is_the_same_run_cut_short(toy_vit):
    world = generate_world("val", count=12, version=ZOO_WORLD)
    images = load_images(world.images, range(12), toy_vit.image_size, toy_vit.resize_mode)
    targets, pool = images[:3], images[3:]
    kwargs = dict(eps=EPS, cleans_per_step=2, batch_size=3)

    def seeded():
        return torch.Generator().manual_seed(5)

    record = target_noise_oracle(
        toy_vit, targets, pool, steps=6, checkpoints=(2, 4), generator=seeded(), **kwargs
    )
    assert sorted(record) == [2, 4, 6]
    plain = target_noise_oracle(toy_vit, targets, pool, steps=6, generator=seeded(), **kwargs)
    assert list(plain) == [6] and torch.equal(record[6], plain[6])  # checkpoints draw nothing
    shorter = target_noise_oracle(toy_vit, targets, pool, steps=2, generator=seeded(), **kwargs)
    assert torch.equal(record[2], shorter[2])  # one batch of targets: same draws, fewer steps
    assert not torch.equal(record[2], record[6])
    with pytest.raises(AttackConfigError, match="checkpoints must lie between 1 and steps"):
        target_noise_oracle(
            toy_vit, targets, pool, steps=6, checkpoints=(8,), generator=seeded(), **kwargs
        )
    assert step_checkpoints(200) == (25, 50, 100, 200)
    assert step_checkpoints(3) == (1, 3)


def test_oracle_refuses_bad_budgets_and_mismatched_pools(toy_vit):
    images = torch.zeros(2, 3, toy_vit.image_size, toy_vit.image_size)  # the encoder's size
    kwargs = dict(steps=1, cleans_per_step=1, generator=torch.Generator())
    with pytest.raises(AttackConfigError, match="eps"):
        target_noise_oracle(toy_vit, images, images, eps=0.0, **kwargs)
    with pytest.raises(AttackConfigError, match="encoder's size"):
        target_noise_oracle(toy_vit, images, torch.zeros(2, 3, 32, 32), eps=EPS, **kwargs)


def test_top1_ownership_counts_ties_against_the_query():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # caption 1 ties caption 0
    owned = top1_owned(images, texts, np.array([0, 1, 1]), np.array([0, 1]))
    assert owned.tolist() == [False, True]


def test_evaluation_records_oracle_floor_and_ceiling(tmp_path, zoo_world_small):
    data, pool = zoo_world_small, generate_world("val", count=16, version=ZOO_WORLD)
    result = evaluate_noise_oracle(
        "toy-clip-vit", data, pool, tmp_path, pairs=20, optimised=6, steps=3, cleans_per_step=2
    )
    assert (result.optimised, result.pairs) == (6, 20)
    assert result.tr_r1["ceiling"] > result.tr_r1["floor"]
    assert list(result.by_step) == [1, 3] and result.by_step[3] == result.tr_r1["oracle"]
    with ResultStore.in_run_dir(tmp_path) as store:
        rows = store.metrics(result.run_id)
        spec = store.run_info(result.run_id)["spec"]
    stored = {row.metric: row.value for row in rows if row.attack == ORACLE_ATTACK}
    expected = {f"{g}_tr_r1": v for g, v in result.tr_r1.items()}
    expected |= {STEP_METRIC.format(count): v for count, v in result.by_step.items()}
    assert stored == expected
    assert {row.seed for row in rows} == {0} and spec["step_checkpoints"] == [1, 3]


def test_oracle_and_decoder_evaluation_score_the_same_seeded_pairs(tmp_path, zoo_world_small):
    """Floor and ceiling depend on the pairs alone: on the pairs the oracle optimises, its
    floor and ceiling are the decoder evaluation's, query by query."""
    from robust.attacks.anyattack import load_decoder
    from robust.harness.anyattack_eval import WORLD_DECODER, evaluate_anyattack

    data, pool = zoo_world_small, generate_world("val", count=8, version=ZOO_WORLD)
    oracle = evaluate_noise_oracle(
        "toy-clip-vit", data, pool, tmp_path, pairs=16, optimised=16, steps=1, cleans_per_step=1,
        seed=3,
    )  # fmt: skip
    decoder = load_decoder(WORLD_DECODER)
    evaluation = evaluate_anyattack(
        decoder, "toy-clip-vit", ["toy-clip-vit"], data, tmp_path, pairs=16, seed=3, examples=0
    )
    for field in ("clean", "target"):
        assert np.array_equal(getattr(oracle.target_pairs, field), getattr(evaluation.pairs, field))
    results = evaluation.retrieval["toy-clip-vit"]
    for gallery in ("floor", "ceiling"):
        assert results[gallery].tr_correct(1).mean() == oracle.tr_r1[gallery]
    other_seed = pair_images(data, 16, 4)  # the check can tell pairings apart
    assert not np.array_equal(other_seed.target, oracle.target_pairs.target)


def test_cli_bound_prints_the_step_record(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        ["anyattack", "bound", "--limit", "40", "--pairs", "10", "--optimise", "4", "--steps",
         "4", "--cleans", "2", "--pool-limit", "8", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = result.output.split("Oracle by steps")[1]
    rows = [line.split("│")[1:3] for line in printed.splitlines() if line.count("│") == 3]
    assert [steps.strip() for steps, _ in rows] == ["1", "2", "4"]
    with ResultStore.in_run_dir(out) as store:
        stored = {row.metric for row in store.metrics(attack=ORACLE_ATTACK)}
        spec = store.run_info(store.latest_run_id())["spec"]
    assert {STEP_METRIC.format(count) for count in (1, 2, 4)} <= stored
    assert spec["dataset"] == f"{ZOO_WORLD}:test-1k[:40]"  # the zoo's world by default


def test_cli_bound_errors_are_one_line(tmp_path):
    out = str(tmp_path / "run")
    assert_one_line_error(
        runner.invoke(app, ["anyattack", "bound", "--optimise", "0", "--out", out]), "--optimise"
    )
    assert_one_line_error(
        runner.invoke(app, ["anyattack", "bound", "--eps", "2", "--out", out]), "eps"
    )
    assert_one_line_error(
        runner.invoke(app, ["anyattack", "bound", "--encoder", "toy-blip-cap", "--out", out]),
        "itc",
    )
