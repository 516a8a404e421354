"""Results stores in the schema-1 layout (before the `seed` column), as vlp-robust 0.1 wrote
them, so migration can be tested against real old files."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEMA_1_SQL = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY, created_at TEXT NOT NULL, spec TEXT NOT NULL,
    seeds TEXT NOT NULL, versions TEXT NOT NULL, git_commit TEXT, git_dirty INTEGER,
    hardware TEXT NOT NULL
);
CREATE TABLE metrics (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    victim TEXT NOT NULL, dataset TEXT NOT NULL, split TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL, attack TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',
    target TEXT NOT NULL DEFAULT '', defense TEXT NOT NULL DEFAULT '',
    scoring TEXT NOT NULL DEFAULT 'itc', created_at TEXT NOT NULL,
    UNIQUE (run_id, victim, dataset, split, metric, attack, source, target, defense, scoring)
);
CREATE INDEX metrics_cell ON metrics
    (run_id, victim, dataset, split, attack, source, target, defense);
CREATE TABLE query_results (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    victim TEXT NOT NULL, dataset TEXT NOT NULL, split TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('tr', 'ir')),
    attack TEXT NOT NULL DEFAULT '', source TEXT NOT NULL DEFAULT '',
    target TEXT NOT NULL DEFAULT '', defense TEXT NOT NULL DEFAULT '',
    scoring TEXT NOT NULL DEFAULT 'itc', ranks BLOB NOT NULL, count INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (run_id, victim, dataset, split, direction, attack, source, target, defense, scoring)
);
"""
NOW = "2026-01-01T00:00:00.000000+00:00"


def write_schema_1_store(path: Path, runs: Sequence[dict[str, Any]]) -> None:
    """A schema-1 file holding `runs`: each `{spec, seeds, metrics, ranks}`, where a metric is
    (victim, dataset, split, metric, value, attack, source, target, defense, scoring) and a
    rank row (victim, dataset, split, direction, attack, source, target, defense, scoring,
    ranks as a list), with '' for absent columns as schema 1 stored them."""
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_1_SQL)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("schema_version", "1"), ("created_by", "vlp-robust 0.1.0")],
        )
        for run_id, run in enumerate(runs, start=1):
            conn.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, '{}', NULL, NULL, '{}')",
                (run_id, NOW, json.dumps(run["spec"]), json.dumps(run["seeds"])),
            )
            conn.executemany(
                "INSERT INTO metrics (run_id, victim, dataset, split, metric, value, attack,"
                " source, target, defense, scoring, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, *row, NOW) for row in run.get("metrics", [])],
            )
            conn.executemany(
                "INSERT INTO query_results (run_id, victim, dataset, split, direction, attack,"
                " source, target, defense, scoring, ranks, count, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, *row[:-1], _blob(row[-1]), len(row[-1]), NOW)
                    for row in run.get("ranks", [])
                ],
            )
    conn.close()


def downgrade_matrix_store(path: Path) -> None:
    """Rewrite a current store of matrix runs as schema 1 wrote it: the seed packed into the
    attack column as `label@seed=N` when the run lists several seeds, and no seed column."""
    with sqlite3.connect(path) as conn:
        records = conn.execute("SELECT run_id, spec, seeds FROM runs ORDER BY run_id").fetchall()
        runs = []
        for run_id, spec, seeds in records:
            several = len(json.loads(seeds)["attack_seeds"]) > 1

            def packed(attack: str, seed: int | None, several: bool = several) -> str:
                return f"{attack}@seed={seed}" if attack and several else attack

            metrics = [
                (v, d, s, m, value, packed(a, seed), src, t, df, sc)
                for v, d, s, m, value, a, seed, src, t, df, sc in conn.execute(
                    "SELECT victim, dataset, split, metric, value, attack, seed, source, target,"
                    " defense, scoring FROM metrics WHERE run_id = ? ORDER BY id",
                    (run_id,),
                )
            ]
            ranks = [
                (v, d, s, direction, packed(a, seed), src, t, df, sc, _ints(blob))
                for v, d, s, direction, a, seed, src, t, df, sc, blob in conn.execute(
                    "SELECT victim, dataset, split, direction, attack, seed, source, target,"
                    " defense, scoring, ranks FROM query_results WHERE run_id = ? ORDER BY id",
                    (run_id,),
                )
            ]
            runs.append(
                {"spec": json.loads(spec), "seeds": json.loads(seeds), "metrics": metrics}
                | {"ranks": ranks}
            )
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    write_schema_1_store(path, runs)


def _blob(ranks: Sequence[int]) -> bytes:
    return b"".join(int(rank).to_bytes(4, "little", signed=True) for rank in ranks)


def _ints(blob: bytes) -> list[int]:
    return [int.from_bytes(blob[i : i + 4], "little", signed=True) for i in range(0, len(blob), 4)]
