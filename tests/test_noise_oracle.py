"""The clean-independent noise oracle: the ceiling any AnyAttack decoder is read against."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust.attacks.anyattack_oracle import target_noise_oracle
from robust.attacks.base import AttackConfigError
from robust.cli import app
from robust.data.images import load_images
from robust.data.world import generate_world
from robust.harness.noise_oracle import ORACLE_ATTACK, evaluate_noise_oracle, top1_owned
from robust.harness.store import ResultStore
from robust.victims.registry import load_victim
from tests.cli_helpers import assert_one_line_error, runner

EPS = 16 / 255


@pytest.fixture(scope="module")
def toy_vit():
    return load_victim("toy-clip-vit")


def test_oracle_noise_is_bounded_seeded_and_moves_unseen_cleans_towards_the_target(toy_vit):
    world = generate_world("val", count=40)
    images = load_images(world.images, range(40), 64, toy_vit.resize_mode)
    targets, pool, unseen = images[:4], images[4:24], images[24:]

    def oracle(seed: int) -> torch.Tensor:
        return target_noise_oracle(
            toy_vit, targets, pool, eps=EPS, steps=8, cleans_per_step=4, batch_size=3,
            generator=torch.Generator().manual_seed(seed),
        )  # fmt: skip

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


def test_oracle_refuses_bad_budgets_and_mismatched_pools(toy_vit):
    images = torch.zeros(2, 3, 64, 64)
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


def test_evaluation_records_oracle_floor_and_ceiling(tmp_path):
    data, pool = generate_world("test-1k", count=40), generate_world("val", count=16)
    result = evaluate_noise_oracle(
        "toy-clip-vit", data, pool, tmp_path, pairs=20, optimised=6, steps=3, cleans_per_step=2
    )
    assert (result.optimised, result.pairs) == (6, 20)
    assert result.tr_r1["ceiling"] > result.tr_r1["floor"]
    with ResultStore.in_run_dir(tmp_path) as store:
        rows = store.metrics(result.run_id)
    stored = {row.metric: row.value for row in rows if row.attack == ORACLE_ATTACK}
    assert stored == {f"{g}_tr_r1": v for g, v in result.tr_r1.items()}


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
