"""Bias measurements end to end: cache and pairs galleries, captions, store rows, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from robust.cli import app
from robust.errors import RobustError
from robust.harness.bias import (
    cache_caption_bias,
    cache_relevance_bias,
    load_pairs,
    pairs_relevance_bias,
)
from robust.harness.matrix import run_matrix
from robust.harness.spec import parse_spec
from robust.harness.store import ResultStore


@pytest.fixture(scope="module")
def matrix_run(tmp_path_factory):
    """A finished 6-image PGD matrix of toy-clip-vit on itself."""
    run_dir = tmp_path_factory.mktemp("bias-run")
    spec = parse_spec(
        {
            "name": "bias",
            "dataset": "world:test-1k",
            "limit": 6,
            "sources": ["toy-clip-vit"],
            "targets": ["toy-clip-vit"],
            "attacks": [{"name": "pgd", "params": {"eps": "8/255", "step_size": "2/255"}}],
            "batch_size": 6,
            "output_dir": str(run_dir),
        }
    )
    run_matrix(spec)
    return run_dir


def _pairs_file(tmp_path, world_small, generated):
    items = []
    for index in range(4):
        real = tmp_path / f"real{index}.png"
        Image.fromarray(world_small.images.pixels[index]).save(real)
        fake = tmp_path / f"gen{index}.png"
        Image.fromarray(generated(world_small.images.pixels[index])).save(fake)
        items.append(
            {
                "captions": world_small.captions_of([index])[0][:2],
                "real": real.name,
                "generated": fake.name,
            }
        )
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"pairs": items}))
    return path


def test_identical_pairs_show_no_bias(tmp_path, world_small):
    path = _pairs_file(tmp_path, world_small, lambda pixels: pixels)
    gallery = load_pairs(path)
    assert gallery.num_images == 8 and gallery.num_captions == 8
    report = pairs_relevance_bias(path, "toy-clip-vit", tmp_path / "run")
    assert report.metrics["preference_rate"] == 0.0
    assert report.metrics["rank_diff"] == 0.0
    assert report.metrics["r5_a"] == report.metrics["r5_b"]
    assert report.metrics["ndcg5_a"] == report.metrics["ndcg5_b"]
    with ResultStore.in_run_dir(tmp_path / "run") as store:
        rows = store.metrics(report.run_id)
    assert {row.metric for row in rows} == {f"bias_{key}" for key in report.metrics}


def test_blank_generated_images_lose(tmp_path, world_small):
    path = _pairs_file(tmp_path, world_small, lambda pixels: np.full_like(pixels, 128))
    report = pairs_relevance_bias(path, "toy-clip-vit", tmp_path / "run")
    assert report.metrics["delta_r5"] > 0  # the real images are preferred
    assert report.metrics["preference_rate"] < 0.5


def test_bad_pairs_file_is_one_clear_error(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps({"pairs": [{"captions": ["a"], "real": "r.png"}]}))
    with pytest.raises(RobustError, match="missing: generated"):
        load_pairs(path)
    result = CliRunner().invoke(app, ["bias", "pairs", str(path), "--victim", "toy-clip-vit"])
    assert result.exit_code == 2 and "missing: generated" in result.output


def test_cache_relevance_bias_and_attribute_shift(matrix_run):
    report = cache_relevance_bias(matrix_run, "pgd", "toy-clip-vit", "toy-clip-vit")
    metrics = report.metrics
    assert 0.0 <= metrics["preference_rate"] <= 1.0
    assert {"delta_r1", "delta_ndcg5", "rank_diff"} <= set(metrics)
    colours = [shift for shift in report.attribute_shifts if shift.attribute == "color"]
    assert colours and sum(shift.clean_share for shift in colours) >= 1.0 - 1e-9
    with ResultStore.in_run_dir(matrix_run) as store:
        rows = store.metrics(report.run_id, attack="pgd", source="toy-clip-vit")
    assert len(rows) == len(metrics) + len(report.attribute_shifts)
    assert {(row.seed, row.target) for row in rows} == {(0, "toy-clip-vit")}  # the cache entry's
    with pytest.raises(RobustError, match="cached: pgd on toy-clip-vit"):
        cache_relevance_bias(matrix_run, "sga", "toy-clip-vit", "toy-clip-vit")


def test_cache_caption_bias(matrix_run):
    report = cache_caption_bias(
        matrix_run, "pgd", "toy-clip-vit", "toy-blip-cap", target_concept="red"
    )
    metrics = report.metrics
    assert 0.0 <= metrics["change_rate"] <= 1.0
    assert metrics["cider_drop"] == pytest.approx(
        metrics["cider_clean"] - metrics["cider_attacked"]
    )
    assert metrics["target_insertion"] == pytest.approx(
        metrics["target_rate_attacked"] - metrics["target_rate_clean"]
    )
    with ResultStore.in_run_dir(matrix_run) as store:
        rows = store.metrics(report.run_id, victim="toy-blip-cap")
    assert {row.metric for row in rows} == {f"caption_{key}" for key in metrics}


def test_cli_bias_cache_and_defenses_commands(matrix_run):
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["bias", "cache", str(matrix_run), "--attack", "pgd", "--source", "toy-clip-vit"]
        + ["--victim", "toy-clip-vit"],
    )
    assert result.exit_code == 0, result.output
    assert "Relative Delta" in result.output and "RankDiff" in result.output
    listed = runner.invoke(app, ["defenses", "list"])
    assert listed.exit_code == 0 and "jpeg-q75" in listed.output and "BPDA" in listed.output
    shown = runner.invoke(app, ["defenses", "show", str(matrix_run)])
    assert shown.exit_code == 2 and "no defenses axis" in shown.output
