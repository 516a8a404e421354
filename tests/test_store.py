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
from tests.schema1_store import write_schema_1_store

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


# -- seed column and migration from schema 1 ---------------------------------------------------


def test_seed_is_its_own_key_column(store: ResultStore, run_id: int) -> None:
    keys = {"victim": "t", "dataset": "d", "split": "test", "source": "s", "target": "t"}
    store.write_metrics(
        run_id,
        [
            MetricRow(metric="tr_r1", value=0.9, **keys),
            MetricRow(metric="tr_asr_r1", value=0.5, attack="pgd", seed=0, **keys),
            MetricRow(metric="tr_asr_r1", value=0.7, attack="pgd", seed=1, **keys),
        ],
    )
    store.write_metrics(
        run_id, [MetricRow(metric="tr_asr_r1", value=0.6, attack="pgd", seed=1, **keys)]
    )
    store.write_metrics(run_id, [MetricRow(metric="tr_r1", value=0.8, **keys)])  # NULL seed upserts
    assert [(r.attack, r.seed, r.value) for r in store.metrics(run_id)] == [
        (None, None, 0.8),
        ("pgd", 0, 0.5),
        ("pgd", 1, 0.6),
    ]
    assert [r.value for r in store.metrics(run_id, seed=1)] == [0.6]
    assert [r.value for r in store.metrics(run_id, seed=ABSENT)] == [0.8]
    assert [r.value for r in store.metrics(run_id, seed=[ABSENT, 1])] == [0.8, 0.6]
    assert [r.value for r in store.metrics(run_id, seed=[0, 1])] == [0.5, 0.6]
    assert store.has_metrics(run_id, **keys, attack="pgd", seed=0)
    assert not store.has_metrics(run_id, **keys, attack="pgd", seed=2)
    assert not store.has_metrics(run_id, **keys, attack="pgd")  # None: the seed is absent
    store.write_query_ranks(
        run_id, direction="tr", ranks=np.array([0, 2]), attack="pgd", seed=1, **keys
    )
    assert store.query_ranks(run_id, direction="tr", attack="pgd", seed=1, **keys).tolist() == [
        0,
        2,
    ]
    with pytest.raises(KeyError, match="seed=0"):
        store.query_ranks(run_id, direction="tr", attack="pgd", seed=0, **keys)
    for bad in ("1", True, 1.0):
        with pytest.raises(ValueError, match="seed must be an integer or None"):
            store.write_metrics(run_id, [MetricRow(metric="m", value=1.0, seed=bad, **keys)])


def _clean(victim: str, value: float, target: str = "") -> tuple:
    return (victim, "world", "test", "tr_r1", value, "", "", target, "", "itc")


def _attacked(attack: str, source: str, target: str, value: float, scoring: str = "itc") -> tuple:
    return (target, "world", "test", "tr_asr_r1", value, attack, source, target, "", scoring)


ZS = "zero-shot:shapes"


def _schema_1_runs() -> list[dict]:
    """One run of every kind whose rows schema 1 wrote differently from today."""
    matrix = {"command": "matrix", "name": "m", "fingerprint": "f" * 16, "spec": {}}
    return [
        {
            "spec": {"command": "eval", "victims": ["a"]},
            "seeds": {"world": 0},
            "metrics": [_clean("a", 0.9)],
            "ranks": [("a", "world", "test", "tr", "", "", "", "", "itc", [0, 1])],
        },
        {
            "spec": matrix,
            "seeds": {"attack_seeds": [3, 5]},
            "metrics": [
                _clean("b", 0.8, target="b"),
                _attacked("pgd@seed=3", "a", "b", 0.25),
                _attacked("pgd@seed=5", "a", "b", 0.5),
            ],
            "ranks": [("b", "world", "test", "ir", "pgd@seed=5", "a", "b", "", "itc", [4, 0])],
        },
        {
            "spec": matrix,
            "seeds": {"attack_seeds": [7]},
            "metrics": [_attacked("sga", "a", "b", 0.75, scoring="rerank")],
        },
        {
            "spec": {"command": "patch-eval"},
            "seeds": {"patch": 11, "control": 12, "placement": 0},
            "metrics": [
                _clean("c", 0.5, target="c"),
                _attacked("advclip-patch", "a", "c", 0.4),
                _attacked("random-patch", "a", "c", 0.1),
            ],
        },
        {
            "spec": {"command": "zeroshot"},
            "seeds": {"attack": 2, "world": 0},
            "metrics": [
                ("d", "world", "test", "acc", 0.6, "", "", "", "", ZS),
                ("d", "world", "test", "acc", 0.2, "apgd-ce@eps=2/255", "d", "d", "", ZS),
            ],
        },
        {
            "spec": {"command": "bias cache"},
            "seeds": {"attack_seed": 4},
            "metrics": [_attacked("sga", "a", "e", 0.3)],
        },
    ]  # fmt: skip


def _migrated_rows(store: ResultStore) -> list[tuple]:
    return [
        (r.victim, r.attack, r.seed, r.source, r.target, r.value)
        for run_id in store.run_ids()
        for r in store.metrics(run_id)
    ]


EXPECTED_MIGRATED = [
    ("a", None, None, None, "a", 0.9),  # clean rows name their victim as target now
    ("b", None, None, None, "b", 0.8),
    ("b", "pgd", 3, "a", "b", 0.25),  # label@seed=N split into label and seed
    ("b", "pgd", 5, "a", "b", 0.5),
    ("b", "sga", 7, "a", "b", 0.75),  # a single-seed run's seed comes from its record
    ("c", None, None, None, "c", 0.5),
    ("c", "advclip-patch", 11, "a", "c", 0.4),
    ("c", "random-patch", 12, "a", "c", 0.1),
    ("d", None, None, None, "d", 0.6),
    ("d", "apgd-ce@eps=2/255", 2, "d", "d", 0.2),
    ("e", "sga", 4, "a", "e", 0.3),
]


def test_schema_1_store_is_migrated_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    write_schema_1_store(path, _schema_1_runs())
    with ResultStore(path) as store:
        assert _migrated_rows(store) == EXPECTED_MIGRATED
        ranks = store.query_ranks(
            2, victim="b", dataset="world", split="test", direction="ir", attack="pgd", seed=5,
            source="a", target="b",
        )  # fmt: skip
        assert ranks.tolist() == [4, 0]
        clean = store.query_ranks(
            1, victim="a", dataset="world", split="test", direction="tr", target="a"
        )
        assert clean.tolist() == [0, 1]
        meta = dict(store._connection().execute("SELECT key, value FROM meta").fetchall())
        assert meta["schema_version"] == str(SCHEMA_VERSION) and meta["migrated_from"] == "1"
        # the migrated file is a current store: new rows upsert by the new keys
        store.write_metrics(
            2,
            [
                MetricRow(
                    "b",
                    "world",
                    "test",
                    "tr_asr_r1",
                    0.125,
                    attack="pgd",
                    seed=3,
                    source="a",
                    target="b",
                )
            ],
        )
        assert [r.value for r in store.metrics(2, attack="pgd")] == [0.125, 0.5]
    with ResultStore(path) as again:  # opening a migrated file again changes nothing
        assert len(_migrated_rows(again)) == len(EXPECTED_MIGRATED)


def test_read_only_open_of_a_schema_1_store_migrates_in_memory_only(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    write_schema_1_store(path, _schema_1_runs())
    before = path.read_bytes()
    with ResultStore(path, read_only=True) as store:
        assert _migrated_rows(store) == EXPECTED_MIGRATED
        with pytest.raises(StoreError, match="read-only"):
            store.start_run({}, {})
    assert path.read_bytes() == before


def test_a_failed_migration_leaves_the_schema_1_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import robust.harness.store as store_module

    path = tmp_path / "results.sqlite"
    write_schema_1_store(path, _schema_1_runs())
    calls = []

    def fail_late(*args):
        calls.append(args)
        if len(calls) == 5:
            raise RuntimeError("killed mid-migration")
        return real(*args)

    real = store_module._v1_attack_seed
    monkeypatch.setattr(store_module, "_v1_attack_seed", fail_late)
    with pytest.raises(RuntimeError, match="killed mid-migration"):
        ResultStore(path)
    monkeypatch.undo()
    with sqlite3.connect(path) as raw:
        version = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        count = raw.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    raw.close()
    assert version == ("1",) and tables == {"meta", "runs", "metrics", "query_results"}
    assert count == len(EXPECTED_MIGRATED)
    with ResultStore(path) as store:  # and the next open migrates it
        assert _migrated_rows(store) == EXPECTED_MIGRATED
