"""The matrix on a local Ray instance (2 CPUs): same rows and PNGs as in-process, kills retried."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robust.cli import app
from robust.errors import RobustError
from robust.harness.cache import CacheEntry
from robust.harness.cells import CellRunner
from robust.harness.executors import (
    CleanCell,
    CraftCell,
    CraftShard,
    LocalExecutor,
    make_executor,
)
from robust.harness.matrix import run_matrix
from robust.harness.ray_executor import RayExecutor
from robust.harness.spec import parse_spec
from robust.harness.store import ResultStore
from tests.test_matrix import png_bytes, same_values, stored

ray = pytest.importorskip("ray")

LIMIT = 8


def world_spec(output_dir: Path, **changes):
    """Two shipped toy victims, PGD and BERT-Attack, on the first 8 world images."""
    data = {
        "name": "ray-matrix",
        "dataset": "world:test-1k",
        "limit": LIMIT,
        "sources": ["toy-clip-vit", "toy-clip-rn"],
        "targets": ["toy-clip-vit", "toy-clip-rn"],
        "attacks": [
            {"name": "pgd", "params": {"eps": "2/255", "steps": 3, "step_size": "0.5/255"}},
            {"name": "bert_attack", "params": {"max_words": 1}, "mlm": "toy-mlm"},
        ],
        "batch_size": 4,
        "eval_batch_size": 8,
        "k_test": 4,
        "output_dir": str(output_dir),
    }
    data.update(changes)
    return parse_spec(data)


@pytest.fixture(scope="module")
def ray_cluster():
    """A light local Ray instance; this module's test classes travel to workers by value."""
    if ray.is_initialized():  # started by an earlier test's executor (e.g. the demo's)
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The reference: the same spec run in-process."""
    spec = world_spec(tmp_path_factory.mktemp("local"))
    return run_matrix(spec, executor=LocalExecutor())


def assert_identical(reference_dir: Path, run_dir: Path) -> None:
    reference_rows, reference_ranks = stored(reference_dir)
    rows, ranks = stored(run_dir)
    assert len(rows) == len(reference_rows) > 0
    assert same_values(reference_rows, rows)
    assert ranks.keys() == reference_ranks.keys()
    assert all((ranks[key] == reference_ranks[key]).all() for key in ranks)
    reference_pngs = png_bytes(reference_dir)
    assert len(reference_pngs) == 2 * 2 * LIMIT  # 2 attacks x 2 sources x 8 images
    assert png_bytes(run_dir) == reference_pngs
    texts = sorted(path.relative_to(run_dir) for path in (run_dir / "cache").rglob("texts.json"))
    assert len(texts) == 4
    for relative in texts:
        assert (run_dir / relative).read_text() == (reference_dir / relative).read_text()


def test_ray_matches_local_with_sharded_crafting(ray_cluster, local_run, tmp_path):
    spec = world_spec(tmp_path / "ray", executor="ray")
    executor = RayExecutor(shards=2)
    result = run_matrix(spec, executor=executor)
    assert_identical(local_run.run_dir, spec.run_dir)
    assert result.computed == {"crafted": 4, "crafted_batches": 8, "clean": 2, "evaluated": 8}
    for label in local_run.labels:
        assert (result.tr_asr[label] == local_run.tr_asr[label]).all()
    assert result.executor["name"] == "ray" and result.executor["cluster_resources"]["CPU"] == 2
    with ResultStore.in_run_dir(spec.run_dir) as store:
        record = store.run_info(store.run_ids()[0])["spec"]
    assert record["executor"]["name"] == "ray" and record["precision"] == "fp32"
    # a finished run is never recomputed, whichever executor resumes it
    again = run_matrix(spec, executor=LocalExecutor())
    assert again.computed == {"crafted": 0, "crafted_batches": 0, "clean": 0, "evaluated": 0}
    assert again.executor == {"name": "local"}


class DiesAfterFirstBatch(CacheEntry):
    """Kills its worker process right after storing its first batch, once per marker file."""

    marker: Path

    def write_batch(self, batch_index, image_indices, images, texts) -> None:
        super().write_batch(batch_index, image_indices, images, texts)
        with open(self.marker.parent / "batches.log", "a") as log:
            log.write(f"{self.attack_label} {self.source} {batch_index} {os.getpid()}\n")
        if not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)  # the worker dies mid-cell, as if killed


class KillingRunner(CellRunner):
    """A CellRunner whose cache entries kill the worker once, after the first batch."""

    def __init__(self, spec, cache_root, marker: Path) -> None:
        super().__init__(spec, cache_root)
        self.marker = marker

    def __getstate__(self):
        return {**super().__getstate__(), "marker": self.marker}

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self.marker = state["marker"]

    def entry(self, attack_label, source, seed, at=None):
        entry = super().entry(attack_label, source, seed, at)
        killing = DiesAfterFirstBatch(entry.path, attack_label, source, seed)
        killing.marker = self.marker
        return killing


class KillOnce(RayExecutor):
    """Ray with the runner swapped for one whose first crafting worker dies."""

    def __init__(self, marker: Path) -> None:
        super().__init__(max_retries=2)
        self.marker = marker

    def map(self, function, cells):
        return super().map(KillingRunner(function.spec, function.cache.root, self.marker), cells)


def test_killed_worker_is_retried_and_results_are_identical(ray_cluster, local_run, tmp_path):
    spec = world_spec(tmp_path / "ray")
    marker = tmp_path / "killed"
    run_matrix(spec, executor=KillOnce(marker))
    assert marker.exists()  # a worker did die mid-cell
    assert_identical(local_run.run_dir, spec.run_dir)
    written = [line.split() for line in (tmp_path / "batches.log").read_text().splitlines()]
    killed_pid = marker.read_text()
    first = written[0]
    assert first[3] == killed_pid
    # the retry resumed after the stored batch: 4 entries x 2 batches, each written once
    assert len(written) == 8
    assert len({tuple(line[:3]) for line in written}) == 8
    assert any(line[:2] == first[:2] and line[3] != killed_pid for line in written)


class LogsEvaluations(CellRunner):
    """A CellRunner that appends each evaluation it starts to a file the test reads."""

    def __init__(self, spec, cache_root, log: Path) -> None:
        super().__init__(spec, cache_root)
        self.log = log

    def __getstate__(self):
        return {**super().__getstate__(), "log": self.log}

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self.log = state["log"]

    def clean(self, cell):
        with open(self.log, "a") as handle:
            handle.write(f"{cell.image_size}\n")


class FailsToEvaluate(LogsEvaluations):
    """Raises a user error in every evaluation."""

    def clean(self, cell):
        super().clean(cell)
        raise RobustError(f"cannot evaluate {cell.target}; fix the target")


def test_cell_errors_reach_the_driver_once_and_unretried(ray_cluster, local_run, tmp_path):
    cell = CleanCell("toy-clip-vit", 64, "shortest")
    # Repeated because cancelling the failed task raced its reply and aborted the whole
    # driver process within a few rounds on Ray 2.60; a finished task must not be cancelled.
    for round_index in range(25):
        attempts = tmp_path / f"attempts-{round_index}"
        runner = FailsToEvaluate(world_spec(tmp_path / "run"), tmp_path / "cache", attempts)
        with pytest.raises(RobustError, match="cannot evaluate toy-clip-vit; fix the target"):
            list(RayExecutor(max_retries=3).map(runner, [cell]))
        assert attempts.read_text() == "64\n"  # one attempt: user errors are not retried


class SlowToEvaluate(LogsEvaluations):
    """Evaluates the first cell at once and the others in a second each."""

    def clean(self, cell):
        super().clean(cell)
        if cell.image_size != 1:
            time.sleep(1)
        return cell.image_size


def test_a_driver_that_stops_early_cancels_the_unfinished_cells(ray_cluster, tmp_path):
    started = tmp_path / "started"
    runner = SlowToEvaluate(world_spec(tmp_path / "run"), tmp_path / "cache", started)
    cells = [CleanCell("toy-clip-vit", size, "shortest") for size in range(1, 9)]
    results = RayExecutor().map(runner, cells)
    assert next(results) == 1
    results.close()  # the driver stops early
    time.sleep(5)  # uncancelled, all 8 cells would have started on the 2 CPUs by now
    assert len(started.read_text().split()) <= 3  # the first, and the one or two running


def test_split_shards_crafting_by_whole_batches(tmp_path):
    spec = world_spec(tmp_path, limit=20)  # 5 batches of 4
    runner = CellRunner(spec, tmp_path / "cache")
    cell = CraftCell("pgd", "toy-clip-vit", 0)
    shards = runner.split(cell, 2)
    assert shards == [CraftShard(cell, (0, 2, 4)), CraftShard(cell, (1, 3))]
    assert runner.split(cell, 1) is None
    assert runner.split(CleanCell("toy-clip-vit", 64, "shortest"), 2) is None
    assert [shard.batches for shard in runner.split(cell, 9)] == [(0,), (1,), (2,), (3,), (4,)]


def test_missing_ray_and_bad_options_are_one_line_errors(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RobustError, match=r"needs Ray, which is not installed; install it with"):
        make_executor("ray")
    monkeypatch.undo()
    with pytest.raises(RobustError, match="set device: cuda"):
        RayExecutor(device="cuda:1")
    with pytest.raises(RobustError, match="unknown executor 'dask'; choose one of local, ray"):
        make_executor("dask")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "name: x\ndataset: world:test-1k\nsources: [toy-clip-vit]\ntargets: [toy-clip-vit]\n"
        "attacks: [{name: pgd}]\n"
    )
    cli = CliRunner()
    result = cli.invoke(app, ["matrix", str(spec_file), "--address", "auto"])
    assert result.exit_code == 2 and "--address is for the ray executor" in result.output
    result = cli.invoke(app, ["matrix", str(spec_file), "--precision", "fp16"])
    assert result.exit_code == 2 and "unknown precision 'fp16'; choose one of" in result.output


def test_cli_runs_the_matrix_on_ray_at_bf16(ray_cluster, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "name: cli-ray\ndataset: world:test-1k\nlimit: 4\nsources: [toy-clip-vit]\n"
        "targets: [toy-clip-vit]\nattacks: [{name: pgd, params: {steps: 1}}]\n"
        f"output_dir: {tmp_path / 'run'}\n"
    )
    command = ["matrix", str(spec_file), "--executor", "ray", "--precision", "bf16"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "executor ray, precision bf16" in " ".join(result.output.split())
    with ResultStore.in_run_dir(tmp_path / "run") as store:
        (run_id,) = store.run_ids()
        record = store.run_info(run_id)["spec"]
        asr = store.metrics(run_id, metric="tr_asr_r1")
    assert record["executor"]["name"] == "ray" and record["precision"] == "bf16"
    assert record["spec"]["precision"] == "bf16"
    assert len(asr) == 1 and 0.0 <= asr[0].value <= 1.0
