"""Behaviour of the SQLite results store and the provenance record every run carries."""

from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from robust.harness.store import (
    ABSENT,
    SCHEMA_VERSION,
    MetricRow,
    ResultStore,
    StoreError,
    StoreSchemaError,
)
from robust.provenance import collect_provenance

PROVENANCE = {
    "versions": {"python": "3.11.9", "vlp-robust": "0.1.0", "torch": None},
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": True,
    "hardware": {"platform": "test", "cpu_count": 4, "cuda_devices": []},
}
SPEC = {"dataset": "embedded", "victims": ["toy-clip", "toy-albef"], "eps": 2 / 255}
SEEDS = {"global": 0, "attack": 1234}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "run" / "results.sqlite") as opened:
        yield opened


@pytest.fixture
def run_id(store: ResultStore) -> int:
    return store.start_run(SPEC, SEEDS, provenance=PROVENANCE)


def _sample_rows() -> list[MetricRow]:
    return [
        MetricRow("toy-clip", "embedded", "test", "tr_r1", 0.75),
        MetricRow("toy-clip", "embedded", "test", "ir_r1", 0.5),
        MetricRow(
            "toy-albef", "embedded", "test", "tr_r1", 0.125,
            attack="sga", source="toy-clip", target="toy-albef",
        ),
        MetricRow(
            "toy-albef", "embedded", "test", "tr_r1", 0.25,
            attack="sga", source="toy-clip", target="toy-albef", defense="jpeg75",
        ),
        MetricRow("toy-albef", "embedded", "test", "asr_r1", math.nan, attack="pgd",
                  source="toy-albef", target="toy-albef"),
    ]  # fmt: skip


# -- runs --------------------------------------------------------------------------------------


def test_start_run_round_trips_spec_seeds_and_provenance(store: ResultStore) -> None:
    assert store.latest_run_id() is None
    first = store.start_run(SPEC, SEEDS, provenance=PROVENANCE)
    second = store.start_run({"other": True}, {}, provenance=PROVENANCE | {"git_dirty": None})
    assert second > first
    assert store.latest_run_id() == second
    assert store.run_ids() == [first, second]

    info = store.run_info(first)
    assert info["spec"] == SPEC
    assert info["seeds"] == SEEDS
    assert info["versions"] == PROVENANCE["versions"]
    assert info["git_commit"] == PROVENANCE["git_commit"]
    assert info["git_dirty"] is True
    assert info["hardware"] == PROVENANCE["hardware"]
    assert info["created_at"].endswith("+00:00")
    assert store.run_info(second)["git_dirty"] is None
    with pytest.raises(KeyError, match="run 99 does not exist"):
        store.run_info(99)


def test_start_run_collects_provenance_when_not_given(store: ResultStore) -> None:
    info = store.run_info(store.start_run(SPEC, SEEDS))
    assert info["versions"]["vlp-robust"] is not None
    assert "cpu_count" in info["hardware"]


def test_store_reopens_with_data(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as first:
        run = first.start_run(SPEC, SEEDS, provenance=PROVENANCE)
        first.write_metrics(run, _sample_rows())
    with ResultStore.in_run_dir(tmp_path) as again:
        assert again.latest_run_id() == run
        assert len(again.metrics(run)) == len(_sample_rows())


# -- metrics -----------------------------------------------------------------------------------


def _same(a: MetricRow, b: MetricRow) -> bool:
    """Equality that treats NaN as equal to NaN."""
    nan_equal = math.isnan(a.value) and math.isnan(b.value)
    return (a == b) or (nan_equal and a.__dict__ | {"value": 0} == b.__dict__ | {"value": 0})


def test_metrics_round_trip_values_and_absent_columns(store: ResultStore, run_id: int) -> None:
    rows = _sample_rows()
    store.write_metrics(run_id, rows)
    stored = store.metrics(run_id)
    assert len(stored) == len(rows)
    for row in rows:
        assert sum(_same(row, s) for s in stored) == 1, row
    clean = [s for s in stored if s.attack is None]
    assert {s.metric for s in clean} == {"tr_r1", "ir_r1"}
    assert all(s.source is None and s.target is None and s.defense is None for s in clean)
    order = [(s.victim, s.attack or "", s.defense or "", s.metric) for s in stored]
    assert order == sorted(order)


def test_rewriting_a_key_replaces_the_value(store: ResultStore, run_id: int) -> None:
    store.write_metrics(run_id, [MetricRow("v", "d", "test", "tr_r1", 0.1)])
    store.write_metrics(run_id, [MetricRow("v", "d", "test", "tr_r1", 0.9)])
    store.write_metrics(run_id, [MetricRow("v", "d", "test", "tr_r1", 0.3, attack="pgd")])
    stored = store.metrics(run_id, metric="tr_r1")
    assert [(s.attack, s.value) for s in stored] == [(None, 0.9), ("pgd", 0.3)]


def test_metric_filters_including_absent(store: ResultStore, run_id: int) -> None:
    store.write_metrics(run_id, _sample_rows())
    other_run = store.start_run(SPEC, SEEDS, provenance=PROVENANCE)
    store.write_metrics(other_run, [MetricRow("toy-clip", "embedded", "test", "tr_r1", 0.6)])

    assert len(store.metrics()) == 6
    assert [s.value for s in store.metrics(other_run)] == [0.6]
    assert {s.metric for s in store.metrics(run_id, victim="toy-clip")} == {"tr_r1", "ir_r1"}
    assert {s.defense for s in store.metrics(run_id, attack="sga")} == {None, "jpeg75"}
    assert [s.value for s in store.metrics(run_id, attack="sga", defense=ABSENT)] == [0.125]
    assert len(store.metrics(run_id, attack=ABSENT)) == 2
    assert len(store.metrics(run_id, attack=["sga", "pgd"])) == 3
    assert len(store.metrics(run_id, attack=[ABSENT, "pgd"])) == 3
    assert store.metrics(run_id, attack=[]) == []
    assert store.metrics(run_id, victim="nobody") == []
    with pytest.raises(TypeError, match="unknown metrics filter 'colour'"):
        store.metrics(run_id, colour="red")
    with pytest.raises(ValueError, match="never absent"):
        store.metrics(run_id, victim=ABSENT)


def test_has_metrics_matches_exact_cells(store: ResultStore, run_id: int) -> None:
    store.write_metrics(run_id, _sample_rows())
    assert store.has_metrics(run_id, "toy-clip", "embedded", "test")
    assert store.has_metrics(
        run_id, "toy-albef", "embedded", "test", "sga", "toy-clip", "toy-albef"
    )
    assert store.has_metrics(
        run_id, "toy-albef", "embedded", "test", "sga", "toy-clip", "toy-albef", "jpeg75"
    )
    # None is an exact "absent", not a wildcard: no clean toy-albef cell was written.
    assert not store.has_metrics(run_id, "toy-albef", "embedded", "test")
    assert not store.has_metrics(run_id, "toy-clip", "embedded", "val")
    assert not store.has_metrics(run_id + 1, "toy-clip", "embedded", "test")
    assert store.has_metrics(
        run_id, "toy-clip", "embedded", "test", metric_names=["tr_r1", "ir_r1"]
    )
    assert not store.has_metrics(
        run_id, "toy-clip", "embedded", "test", metric_names=["tr_r1", "tr_r5"]
    )


def test_bad_metric_writes_are_rejected_whole(store: ResultStore, run_id: int) -> None:
    with pytest.raises(KeyError, match="run 42 does not exist"):
        store.write_metrics(42, [MetricRow("v", "d", "test", "m", 1.0)])
    with pytest.raises(ValueError, match="attack must be a non-empty string or None"):
        store.write_metrics(run_id, [MetricRow("v", "d", "test", "m", 1.0, attack="")])
    with pytest.raises(ValueError, match="metric value must be a number"):
        store.write_metrics(run_id, [MetricRow("v", "d", "test", "m", "high")])  # type: ignore[arg-type]
    assert store.metrics() == []


# -- query ranks -------------------------------------------------------------------------------


def test_query_ranks_round_trip_and_upsert(store: ResultStore, run_id: int) -> None:
    keys = {"victim": "toy-clip", "dataset": "embedded", "split": "test"}
    clean = np.array([0, 3, 1, 0, 250_000], dtype=np.int64)
    adv = np.array([7, 0, 2], dtype=np.int16)
    store.write_query_ranks(run_id, direction="tr", ranks=clean, **keys)
    store.write_query_ranks(
        run_id, direction="tr", ranks=adv, attack="sga", source="toy-clip", **keys
    )

    back = store.query_ranks(run_id, direction="tr", **keys)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, clean)
    attacked = store.query_ranks(run_id, direction="tr", attack="sga", source="toy-clip", **keys)
    np.testing.assert_array_equal(attacked, adv)
    with pytest.raises(KeyError, match="no query ranks stored for run .*direction='ir'"):
        store.query_ranks(run_id, direction="ir", **keys)

    store.write_query_ranks(run_id, direction="tr", ranks=np.array([1, 1], np.int32), **keys)
    np.testing.assert_array_equal(store.query_ranks(run_id, direction="tr", **keys), [1, 1])

    stored_blob = store._connection().execute("SELECT ranks FROM query_results").fetchone()[0]
    assert bytes(stored_blob[:4]) in (
        np.array([1], "<i4").tobytes(),
        np.array([7], "<i4").tobytes(),
    )


def test_query_ranks_reject_bad_input(store: ResultStore, run_id: int) -> None:
    keys = {"victim": "v", "dataset": "d", "split": "test"}
    with pytest.raises(ValueError, match="direction must be"):
        store.write_query_ranks(run_id, direction="t2i", ranks=np.zeros(3, np.int64), **keys)
    with pytest.raises(ValueError, match="integer array"):
        store.write_query_ranks(run_id, direction="tr", ranks=np.zeros(3), **keys)
    with pytest.raises(ValueError, match="1-D"):
        store.write_query_ranks(run_id, direction="tr", ranks=np.zeros((2, 2), np.int64), **keys)
    with pytest.raises(ValueError, match="int32"):
        store.write_query_ranks(run_id, direction="tr", ranks=np.array([2**40]), **keys)


@settings(max_examples=25, deadline=None)
@given(ranks=hnp.arrays(np.int32, hnp.array_shapes(max_dims=1, min_side=0, max_side=64)))
def test_query_ranks_round_trip_any_int32(
    tmp_path_factory: pytest.TempPathFactory, ranks: np.ndarray
) -> None:
    path = tmp_path_factory.getbasetemp() / "hypothesis" / "results.sqlite"
    with ResultStore(path) as store:
        run = store.latest_run_id() or store.start_run({}, {}, provenance=PROVENANCE)
        store.write_query_ranks(
            run, victim="v", dataset="d", split="s", direction="ir", ranks=ranks
        )
        back = store.query_ranks(run, victim="v", dataset="d", split="s", direction="ir")
    np.testing.assert_array_equal(back, ranks.astype(np.int64))


# -- file format, errors, concurrency ----------------------------------------------------------


def test_wal_mode_and_foreign_keys_are_on(store: ResultStore) -> None:
    assert store.journal_mode == "wal"
    assert store._connection().execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_schema_version_mismatch_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    ResultStore(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(StoreSchemaError) as caught:
        ResultStore(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    assert "999" in message and f"expects {SCHEMA_VERSION}" in message
    assert "fresh run directory" in message and "matching vlp-robust version" in message
    assert isinstance(caught.value, StoreError)


def test_non_database_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_text("these are not the results you are looking for\n" * 40)
    with pytest.raises(StoreError) as caught:
        ResultStore(path)
    message = str(caught.value)
    assert not isinstance(caught.value, StoreSchemaError)
    assert "\n" not in message
    assert str(path) in message and "not a vlp-robust results store" in message


@pytest.mark.parametrize("content", [b"x", b"", b"\x00" * 10, b"not sqlite\n" * 300])
def test_short_or_garbage_files_are_never_overwritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(content + b"!")
    with pytest.raises(StoreError, match="not an SQLite database"):
        ResultStore(path)
    assert path.read_bytes() == content + b"!"


def test_directory_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        ResultStore(tmp_path)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE songs (title TEXT)")
    raw.close()
    with pytest.raises(StoreError, match="not a vlp-robust results store"):
        ResultStore(path)


def test_reader_is_not_blocked_by_an_open_write_transaction(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as writer_store:
        run = writer_store.start_run(SPEC, SEEDS, provenance=PROVENANCE)
        writer_store.write_metrics(run, [MetricRow("v", "d", "test", "tr_r1", 0.5)])

        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute(
                "INSERT INTO metrics (run_id, victim, dataset, split, metric, value,"
                " created_at) VALUES (?, 'v', 'd', 'test', 'ir_r1', 0.25, 'now')",
                (run,),
            )
            # A short timeout makes a blocked reader fail fast instead of hanging the test.
            with ResultStore(path, timeout=0.5) as reader:
                assert [m.metric for m in reader.metrics(run)] == ["tr_r1"]
                assert reader.run_info(run)["spec"] == SPEC
            writer.execute("COMMIT")
        finally:
            writer.close()

        with ResultStore(path, timeout=0.5) as reader:
            assert [m.metric for m in reader.metrics(run)] == ["ir_r1", "tr_r1"]
        # Writes through one store are visible to another after commit.
        writer_store.write_metrics(run, [MetricRow("v", "d", "test", "tr_r1", 0.75)])
        with ResultStore(path, timeout=0.5) as reader:
            assert reader.metrics(run, metric="tr_r1")[0].value == 0.75


def test_closed_store_says_so(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.latest_run_id()


# -- provenance --------------------------------------------------------------------------------


def test_provenance_has_expected_keys_and_types(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    prov = collect_provenance(cwd=tmp_path)
    assert set(prov) == {"versions", "git_commit", "git_dirty", "hardware"}
    json.dumps(prov)  # stored verbatim, so it must be JSON

    versions = prov["versions"]
    for name in (
        "python",
        "vlp-robust",
        "torch",
        "torchvision",
        "open_clip_torch",
        "transformers",
        "numpy",
        "torchattacks",
    ):
        assert name in versions
        assert versions[name] is None or isinstance(versions[name], str)
    assert versions["numpy"] == np.__version__
    assert versions["torchattacks"] == "3.5.1"  # installed for real, at the pinned version
    assert versions["vlp-robust"] is not None

    # tmp_path is not inside a git repository.
    assert prov["git_commit"] is None and prov["git_dirty"] is None

    hardware = prov["hardware"]
    assert isinstance(hardware["platform"], str) and isinstance(hardware["machine"], str)
    assert isinstance(hardware["cpu_count"], int)
    assert isinstance(hardware["torch_threads"], int)
    assert isinstance(hardware["cuda_available"], bool)
    assert isinstance(hardware["cuda_devices"], list)
    assert len(hardware["cuda_devices"]) == 0 or hardware["cuda_available"]
    assert hardware["total_ram_bytes"] is None or hardware["total_ram_bytes"] > 0


def test_provenance_without_git_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    prov = collect_provenance()
    assert prov["git_commit"] is None and prov["git_dirty"] is None


def test_provenance_reads_git_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
    }
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run(["git", "add", "a.txt"], cwd=tmp_path, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=tmp_path, check=True, env=env)
    prov = collect_provenance(cwd=tmp_path)
    assert isinstance(prov["git_commit"], str) and len(prov["git_commit"]) == 40
    assert prov["git_dirty"] is False
    (tmp_path / "a.txt").write_text("b")
    assert collect_provenance(cwd=tmp_path)["git_dirty"] is True


def test_scoring_keeps_itc_and_reranked_results_apart(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        run = store.start_run({}, {})
        keys = {"victim": "toy-albef", "dataset": "world", "split": "test-1k"}
        store.write_metrics(
            run,
            [
                MetricRow(metric="tr_r1", value=0.5, **keys),
                MetricRow(metric="tr_r1", value=0.7, scoring="rerank", **keys),
            ],
        )
        store.write_query_ranks(run, direction="tr", ranks=np.array([0, 3]), **keys)
        store.write_query_ranks(
            run, direction="tr", ranks=np.array([0, 0]), scoring="rerank", **keys
        )
        assert [r.value for r in store.metrics(run, scoring="rerank")] == [0.7]
        assert [r.value for r in store.metrics(run, scoring="itc")] == [0.5]
        assert store.query_ranks(run, direction="tr", **keys).tolist() == [0, 3]
        reranked = store.query_ranks(run, direction="tr", scoring="rerank", **keys)
        assert reranked.tolist() == [0, 0]
        assert store.has_metrics(run, **keys, scoring="rerank")
        assert not store.has_metrics(run, **keys, scoring="other")
