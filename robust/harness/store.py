"""SQLite results store: one file per run directory holding runs, metrics and per-query ranks.

The store is the single source of truth for the report and for resuming: a cell whose metrics
are present is never recomputed, and per-query ranks are kept so any retrieval metric can be
recomputed later without re-running models.

Every row kind (clean evaluation, matrix, defense, patch, AnyAttack, bias, zero-shot) writes
the key columns with one meaning:

- `victim`: the model whose outputs the row measures; `target` is always the same name, so
  transfer cells read as (source, target) and every row can be filtered by either column;
- `source`: the model that shaped the input: whose resolution it was brought to and, on
  attacked rows, whose gradients, encoder or fitted patch crafted it; None where the victim
  sees the dataset's images at its own preprocessing;
- `attack`: the attack's label alone, None on clean rows; `seed`: the attack seed that
  crafted the row's input (an integer), None on rows without an attack;
- `defense`: the input defense in front of the victim (`<defense>/adaptive` when the attack
  was crafted through it), None when undefended.

Text key columns that may be absent (attack, source, target, defense) are stored as '' because
SQLite treats NULLs as distinct inside UNIQUE constraints, which would break upserts; callers
only ever see None. `seed` is a real INTEGER column, NULL when absent; the unique indexes key
it as `COALESCE(seed, '')`. NaN metric values are stored as SQL NULL (SQLite cannot store NaN)
and come back as NaN.

Schema 1 (before the `seed` column) packed a matrix run's seed into `attack` as
`label@seed=N` when the spec listed several seeds and left `target` empty on clean rows; such
a file is migrated to the current schema when opened for writing (one transaction), and
migrated in memory when opened read-only.
"""

from __future__ import annotations

import enum
import json
import math
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, Final

import numpy as np

from robust.errors import RobustError

SCHEMA_VERSION: Final[int] = 2
STORE_FILENAME: Final[str] = "results.sqlite"
DEFAULT_TIMEOUT_S: Final[float] = 30.0

DIRECTIONS: Final[frozenset[str]] = frozenset({"tr", "ir"})
REQUIRED_KEYS: Final[tuple[str, ...]] = ("victim", "dataset", "split")
OPTIONAL_KEYS: Final[tuple[str, ...]] = ("attack", "source", "target", "defense")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class StoreError(RobustError):
    """A results store cannot be opened or used; the message is one line naming the fix."""


class StoreSchemaError(StoreError):
    """The store file was written by an incompatible schema version."""


class _Absent(enum.Enum):
    ABSENT = "ABSENT"

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent.ABSENT
"""Filter value meaning "this optional column is absent (None)", since None means no filter."""


@dataclass(frozen=True)
class MetricRow:
    """One scalar result, e.g. R@1 of `target` on adversarial examples of (`attack`, `source`).

    `scoring` says how retrieval was ranked: "itc" (embedding similarity) or "rerank"
    (ITC top-k re-scored by the victim's ITM head, fused per family).
    """

    victim: str
    dataset: str
    split: str
    metric: str
    value: float
    attack: str | None = None
    seed: int | None = None
    source: str | None = None
    target: str | None = None
    defense: str | None = None
    scoring: str = "itc"


_METRIC_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in fields(MetricRow))
_METRIC_ORDER: Final[str] = (
    "run_id, victim, dataset, split, attack, seed, source, target, defense, scoring, metric"
)

_RUN_TABLES_SQL: Final[str] = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    spec TEXT NOT NULL,
    seeds TEXT NOT NULL,
    versions TEXT NOT NULL,
    git_commit TEXT,
    git_dirty INTEGER,
    hardware TEXT NOT NULL
);
"""
# The columns that key a row, shared by both row tables (their meaning: module docstring).
_KEY_COLUMNS_SQL: Final[str] = """
    run_id INTEGER NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
    victim TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    attack TEXT NOT NULL DEFAULT '',
    seed INTEGER,
    source TEXT NOT NULL DEFAULT '',
    target TEXT NOT NULL DEFAULT '',
    defense TEXT NOT NULL DEFAULT '',
    scoring TEXT NOT NULL DEFAULT 'itc',"""
# The row tables, also what a schema-1 file's rows are copied into when it is migrated.
_ROW_TABLES_SQL: Final[str] = f"""
CREATE TABLE metrics (
    id INTEGER PRIMARY KEY,{_KEY_COLUMNS_SQL}
    metric TEXT NOT NULL,
    value REAL,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX metrics_key ON metrics
    (run_id, victim, dataset, split, metric, attack, COALESCE(seed, ''), source, target,
     defense, scoring);
CREATE INDEX metrics_cell ON metrics
    (run_id, victim, dataset, split, attack, seed, source, target, defense);
CREATE TABLE query_results (
    id INTEGER PRIMARY KEY,{_KEY_COLUMNS_SQL}
    direction TEXT NOT NULL CHECK (direction IN ('tr', 'ir')),
    ranks BLOB NOT NULL,
    count INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX query_results_key ON query_results
    (run_id, victim, dataset, split, direction, attack, COALESCE(seed, ''), source, target,
     defense, scoring);
"""
_METRIC_KEY_SQL: Final[str] = (
    "run_id, victim, dataset, split, metric, attack, COALESCE(seed, ''), source, target,"
    " defense, scoring"
)
_RANKS_KEY_SQL: Final[str] = (
    "run_id, victim, dataset, split, direction, attack, COALESCE(seed, ''), source, target,"
    " defense, scoring"
)


class ResultStore:
    """Read/write access to one run directory's SQLite results file.

    Several stores (threads or processes) may open the same file: WAL mode lets readers
    proceed while one writer commits, and writers wait up to `timeout` seconds for each other.
    `read_only=True` (the report) never writes to the file and never creates one: a missing,
    empty or foreign file is one error line.
    """

    def __init__(
        self, path: Path | str, *, timeout: float = DEFAULT_TIMEOUT_S, read_only: bool = False
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._conn: sqlite3.Connection | None = None
        if read_only:
            self._conn = _open_read_only(self.path, timeout)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{self.path}: cannot create the results directory ({exc}); "
                "choose a writable run directory"
            ) from exc
        _check_is_sqlite_file(self.path)
        try:
            # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE) so a write
            # never has to upgrade a read lock, which SQLite refuses without waiting.
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise _open_error(self.path, exc) from exc
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            _ensure_schema(conn, self.path)
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise _open_error(self.path, exc) from exc
        self._conn = conn

    @classmethod
    def in_run_dir(
        cls, run_dir: Path | str, *, timeout: float = DEFAULT_TIMEOUT_S, read_only: bool = False
    ) -> ResultStore:
        """Open the store at the conventional file name inside a run directory."""
        return cls(Path(run_dir) / STORE_FILENAME, timeout=timeout, read_only=read_only)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; safe to call more than once."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "read-only" if self.read_only else "open"
        return f"ResultStore({str(self.path)!r}, {state})"

    @property
    def journal_mode(self) -> str:
        """SQLite journal mode of this connection ('wal' unless the filesystem refused it)."""
        return str(self._connection().execute("PRAGMA journal_mode").fetchone()[0])

    # -- runs ------------------------------------------------------------------------------

    def start_run(
        self,
        spec: Mapping[str, Any],
        seeds: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
    ) -> int:
        """Record a new run with its spec, seeds and provenance; returns its run id."""
        if provenance is None:
            from robust.provenance import collect_provenance

            provenance = collect_provenance()
        git_dirty = provenance.get("git_dirty")
        row = (
            _now(),
            _to_json(spec, "spec"),
            _to_json(seeds, "seeds"),
            _to_json(provenance.get("versions", {}), "provenance versions"),
            provenance.get("git_commit"),
            None if git_dirty is None else int(bool(git_dirty)),
            _to_json(provenance.get("hardware", {}), "provenance hardware"),
        )
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (created_at, spec, seeds, versions, git_commit, git_dirty,"
                " hardware) VALUES (?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            run_id = cursor.lastrowid
        assert run_id is not None
        return int(run_id)

    def run_info(self, run_id: int) -> dict[str, Any]:
        """Everything recorded about a run when it started (spec, seeds, provenance)."""
        row = (
            self._connection()
            .execute(
                "SELECT run_id, created_at, spec, seeds, versions, git_commit, git_dirty,"
                " hardware FROM runs WHERE run_id = ?",
                (int(run_id),),
            )
            .fetchone()
        )
        if row is None:
            raise KeyError(f"run {run_id} does not exist in {self.path}")
        return {
            "run_id": row[0],
            "created_at": row[1],
            "spec": json.loads(row[2]),
            "seeds": json.loads(row[3]),
            "versions": json.loads(row[4]),
            "git_commit": row[5],
            "git_dirty": None if row[6] is None else bool(row[6]),
            "hardware": json.loads(row[7]),
        }

    def run_ids(self) -> list[int]:
        """All run ids in the store, oldest first."""
        rows = self._connection().execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()
        return [int(r[0]) for r in rows]

    def latest_run_id(self) -> int | None:
        """The most recently started run, or None for an empty store (what resume picks up)."""
        row = self._connection().execute("SELECT MAX(run_id) FROM runs").fetchone()
        return None if row[0] is None else int(row[0])

    # -- metrics ---------------------------------------------------------------------------

    def write_metrics(self, run_id: int, rows: Iterable[MetricRow]) -> None:
        """Insert or replace metric rows in one transaction, so a cell is stored whole or not."""
        created_at = _now()
        params = [_metric_params(int(run_id), row, created_at) for row in rows]
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.executemany(
                "INSERT INTO metrics (run_id, victim, dataset, split, metric, value, attack,"
                " seed, source, target, defense, scoring, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT ({_METRIC_KEY_SQL}) DO UPDATE SET value = excluded.value,"
                " created_at = excluded.created_at",
                params,
            )

    def metrics(self, run_id: int | None = None, **filters: Any) -> list[MetricRow]:
        """Metric rows matching all filters, in a deterministic order.

        A filter value of None means "any"; ABSENT matches rows where an optional column is
        absent; a list/tuple/set matches any of its values.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if run_id is not None:
            clauses.append("run_id = ?")
            params.append(int(run_id))
        for column, wanted in filters.items():
            if column not in _METRIC_FIELDS:
                allowed = ", ".join(("run_id", *_METRIC_FIELDS))
                raise TypeError(f"unknown metrics filter {column!r}; filter on one of {allowed}")
            if wanted is None:
                continue
            values = (
                list(wanted)
                if isinstance(wanted, Collection) and not isinstance(wanted, str)
                else [wanted]
            )
            if not values:
                return []
            encoded = [_filter_value(column, value) for value in values]
            if len(encoded) == 1:
                clauses.append(f"{column} IS ?")
            elif None in encoded:  # NULL (an absent seed) never matches IN
                clauses.append(f"({' OR '.join([f'{column} IS ?'] * len(encoded))})")
            else:
                clauses.append(f"{column} IN ({', '.join('?' * len(encoded))})")
            params.extend(encoded)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            "SELECT victim, dataset, split, metric, value, attack, seed, source, target, defense,"
            f" scoring FROM metrics{where} ORDER BY {_METRIC_ORDER}"
        )
        return [_metric_row(r) for r in self._connection().execute(sql, params)]

    def has_metrics(
        self,
        run_id: int,
        victim: str,
        dataset: str,
        split: str,
        attack: str | None = None,
        source: str | None = None,
        target: str | None = None,
        defense: str | None = None,
        *,
        seed: int | None = None,
        scoring: str = "itc",
        metric_names: Iterable[str] | None = None,
    ) -> bool:
        """Whether a cell already has results, so a resumed run can skip it.

        Here None means the column is absent (an exact cell key, not a wildcard). With
        `metric_names`, every named metric must be present.
        """
        key = _cell_key(victim, dataset, split, attack, seed, source, target, defense)
        sql = (
            "SELECT DISTINCT metric FROM metrics WHERE run_id = ? AND victim = ? AND dataset = ?"
            " AND split = ? AND attack = ? AND seed IS ? AND source = ? AND target = ?"
            " AND defense = ? AND scoring = ?"
        )
        scoring = _required("scoring", scoring)
        present = {r[0] for r in self._connection().execute(sql, (int(run_id), *key, scoring))}
        if metric_names is None:
            return bool(present)
        return set(metric_names) <= present

    # -- per-query ranks -------------------------------------------------------------------

    def write_query_ranks(
        self,
        run_id: int,
        *,
        victim: str,
        dataset: str,
        split: str,
        direction: str,
        ranks: np.ndarray,
        attack: str | None = None,
        seed: int | None = None,
        source: str | None = None,
        target: str | None = None,
        defense: str | None = None,
        scoring: str = "itc",
    ) -> None:
        """Store the rank of the correct item for every query (0 = top), replacing any old."""
        _check_direction(direction)
        key = _cell_key(victim, dataset, split, attack, seed, source, target, defense)
        scoring = _required("scoring", scoring)
        blob, count = _encode_ranks(ranks)
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(
                "INSERT INTO query_results (run_id, victim, dataset, split, attack, seed,"
                " source, target, defense, direction, scoring, ranks, count, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT ({_RANKS_KEY_SQL}) DO UPDATE SET ranks = excluded.ranks,"
                " count = excluded.count, created_at = excluded.created_at",
                (int(run_id), *key, direction, scoring, blob, count, _now()),
            )

    def query_ranks(
        self,
        run_id: int,
        *,
        victim: str,
        dataset: str,
        split: str,
        direction: str,
        attack: str | None = None,
        seed: int | None = None,
        source: str | None = None,
        target: str | None = None,
        defense: str | None = None,
        scoring: str = "itc",
    ) -> np.ndarray:
        """The stored per-query ranks as an int64 array; KeyError if never written."""
        _check_direction(direction)
        key = _cell_key(victim, dataset, split, attack, seed, source, target, defense)
        scoring = _required("scoring", scoring)
        row = (
            self._connection()
            .execute(
                "SELECT ranks, count FROM query_results WHERE run_id = ? AND victim = ?"
                " AND dataset = ? AND split = ? AND attack = ? AND seed IS ? AND source = ?"
                " AND target = ? AND defense = ? AND direction = ? AND scoring = ?",
                (int(run_id), *key, direction, scoring),
            )
            .fetchone()
        )
        if row is None:
            described = _describe_key(
                run_id,
                victim,
                dataset,
                split,
                attack,
                seed,
                source,
                target,
                defense,
                direction,
                scoring,
            )
            raise KeyError(f"no query ranks stored for {described} in {self.path}")
        blob, count = row
        if len(blob) != 4 * count:
            raise StoreError(
                f"{self.path}: query ranks for run {run_id} are corrupt "
                f"({len(blob)} bytes for {count} queries); recompute them in a fresh run"
            )
        return np.frombuffer(blob, dtype="<i4").astype(np.int64)

    # -- internals -------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: results store is closed; open a new ResultStore")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any exception."""
        if self.read_only:
            raise StoreError(
                f"{self.path}: this store was opened read-only; open it with read_only=False "
                "to write"
            )
        conn = self._connection()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            yield conn

    def _require_run(self, conn: sqlite3.Connection, run_id: int) -> None:
        found = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (int(run_id),)).fetchone()
        if found is None:
            raise KeyError(f"run {run_id} does not exist in {self.path}; call start_run() first")


# -- schema ----------------------------------------------------------------------------------


def _table_names(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows}


def _execute_script(conn: sqlite3.Connection, sql: str) -> None:
    """Run `;`-separated statements inside the caller's transaction (executescript commits)."""
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement)


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the schema in an empty file, migrate a schema-1 file, check the result is ours."""
    if not _table_names(conn):
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            # Another process may have created it while we waited for the lock.
            if not _table_names(conn):
                _execute_script(conn, _RUN_TABLES_SQL + _ROW_TABLES_SQL)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("schema_version", str(SCHEMA_VERSION)),
                        ("created_by", f"vlp-robust {_own_version()}"),
                    ],
                )
    if _schema_version(conn, path) == _MIGRATABLE_VERSION:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            # Another process may have migrated it while we waited for the lock.
            if _schema_version(conn, path) == _MIGRATABLE_VERSION:
                _migrate_from_1(conn)
    _check_schema(conn, path)


def _schema_version(conn: sqlite3.Connection, path: Path) -> str | None:
    """The schema version the file records; an error for a database that is not a store."""
    if "meta" not in _table_names(conn):
        raise StoreError(
            f"{path} is an SQLite database but not a vlp-robust results store (no meta table); "
            "point at a run directory's results file or use a fresh run directory"
        )
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def _check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """The file holds a vlp-robust store of the schema version this code reads."""
    found = _schema_version(conn, path)
    if found != str(SCHEMA_VERSION):
        row = conn.execute("SELECT value FROM meta WHERE key = 'created_by'").fetchone()
        written_by = f" (written by {row[0]})" if row is not None else ""
        raise StoreSchemaError(
            f"{path}: results store schema version {found if found is not None else 'missing'}"
            f"{written_by}, this vlp-robust expects {SCHEMA_VERSION}; re-run into a fresh run "
            "directory or use a matching vlp-robust version"
        )


# -- migration from schema 1 -----------------------------------------------------------------

_MIGRATABLE_VERSION: Final[str] = "1"
_V1_SEED_SUFFIX: Final[str] = "@seed="
# Where schema-1 runs recorded the seed of their attacked rows, by the run's command
# (patch evaluations: by attack label); matrix runs are handled by `_v1_attack_seed`.
_V1_SEED_KEYS: Final[dict[str, str]] = {
    "bias cache": "attack_seed",
    "bias caption": "attack_seed",
    "zeroshot": "attack",
    "anyattack eval": "pairs",
}
_V1_PATCH_SEED_KEYS: Final[dict[str, str]] = {"advclip-patch": "patch", "random-patch": "control"}
_V1_METRIC_COLUMNS: Final[str] = (
    "run_id, victim, dataset, split, metric, value, attack, source, target, defense, scoring,"
    " created_at"
)
_V1_RANKS_COLUMNS: Final[str] = (
    "run_id, victim, dataset, split, direction, attack, source, target, defense, scoring,"
    " ranks, count, created_at"
)


def _v1_attack_seed(command: str, seeds: Mapping[str, Any], attack: str) -> tuple[str, int | None]:
    """(label, seed) of a schema-1 row's attack column, the seed taken from the run's record
    where the column does not carry it."""
    if not attack:
        return attack, None
    if command == "matrix":
        label, marker, number = attack.rpartition(_V1_SEED_SUFFIX)
        if marker:
            return label, int(number)
        recorded = seeds.get("attack_seeds", [])  # a single-seed run wrote the label alone
        return attack, int(recorded[0]) if len(recorded) == 1 else None
    key = _V1_PATCH_SEED_KEYS.get(attack) if command == "patch-eval" else _V1_SEED_KEYS.get(command)
    value = seeds.get(key) if key is not None else None
    return attack, value if isinstance(value, int) and not isinstance(value, bool) else None


def _migrate_from_1(conn: sqlite3.Connection) -> None:
    """Rewrite a schema-1 file's rows into the current tables, inside the caller's transaction:
    the seed moves out of `attack` into its own column and `target` names the victim on every
    row (clean rows left it empty)."""
    runs = {
        int(run_id): (str(json.loads(spec).get("command", "")), json.loads(seeds))
        for run_id, spec, seeds in conn.execute("SELECT run_id, spec, seeds FROM runs")
    }
    conn.execute("ALTER TABLE metrics RENAME TO metrics_v1")
    conn.execute("ALTER TABLE query_results RENAME TO query_results_v1")
    conn.execute("DROP INDEX metrics_cell")
    _execute_script(conn, _ROW_TABLES_SQL)
    metrics = []
    for row in conn.execute(f"SELECT {_V1_METRIC_COLUMNS} FROM metrics_v1 ORDER BY id"):
        run_id, victim, dataset, split, metric, value, attack, source, target = row[:9]
        label, seed = _v1_attack_seed(*runs[run_id], attack)
        metrics.append(
            (run_id, victim, dataset, split, metric, value, label, seed, source, target or victim)
            + row[9:]
        )
    conn.executemany(
        "INSERT INTO metrics (run_id, victim, dataset, split, metric, value, attack, seed,"
        " source, target, defense, scoring, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        metrics,
    )
    ranks = []
    for row in conn.execute(f"SELECT {_V1_RANKS_COLUMNS} FROM query_results_v1 ORDER BY id"):
        run_id, victim, dataset, split, direction, attack, source, target = row[:8]
        label, seed = _v1_attack_seed(*runs[run_id], attack)
        ranks.append(
            (run_id, victim, dataset, split, direction, label, seed, source, target or victim)
            + row[8:]
        )
    conn.executemany(
        "INSERT INTO query_results (run_id, victim, dataset, split, direction, attack, seed,"
        " source, target, defense, scoring, ranks, count, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ranks,
    )
    conn.execute("DROP TABLE metrics_v1")
    conn.execute("DROP TABLE query_results_v1")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('migrated_from', ?)",
        (_MIGRATABLE_VERSION,),
    )


def _migrated_copy(conn: sqlite3.Connection) -> sqlite3.Connection:
    """An in-memory copy of a schema-1 file, migrated, for a reader that must not write it."""
    memory = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.backup(memory)
        with memory:
            memory.execute("BEGIN IMMEDIATE")
            _migrate_from_1(memory)
    except BaseException:
        memory.close()
        raise
    return memory


_SQLITE_HEADER: Final[bytes] = b"SQLite format 3\x00"


def _check_is_sqlite_file(path: Path) -> None:
    """Refuse non-database files up front: SQLite would silently overwrite a short one."""
    if path.is_dir():
        raise StoreError(
            f"{path} is a directory, not a results file; "
            f"pass the file path or use ResultStore.in_run_dir() ({STORE_FILENAME})"
        )
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(
            f"{path}: cannot read the results store ({_one_line(str(exc))}); check permissions"
        ) from exc
    if header and header != _SQLITE_HEADER:
        raise StoreError(
            f"{path} is not a vlp-robust results store (not an SQLite database); "
            "point at a run directory's results file or move this file away"
        )


def _open_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection that cannot write, to a file that must already be a results store.

    SQLite treats an empty file as an empty database, so empty and foreign files are refused
    before connecting; opened read-write, the schema would be written into them.
    """
    if not path.exists():
        raise StoreError(
            f"{path} does not exist; pass a run directory written by `robust matrix`, "
            "`robust eval` or `robust demo`"
        )
    _check_is_sqlite_file(path)
    if path.stat().st_size == 0:
        raise StoreError(
            f"{path} is empty (0 bytes), not a results store; delete it, or re-run the command "
            "that writes this run directory"
        )
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc
    try:
        if _schema_version(conn, path) == _MIGRATABLE_VERSION:
            migrated = _migrated_copy(conn)
            conn.close()
            conn = migrated
        _check_schema(conn, path)
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise _open_error(path, exc) from exc
    return conn


def _open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    name = getattr(exc, "sqlite_errorname", "")
    detail = _one_line(str(exc))
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return StoreError(
            f"{path} is not a vlp-robust results store ({detail}); "
            "point at a run directory's results file or move this file away"
        )
    if name in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        return StoreError(
            f"{path}: results store is locked by another process ({detail}); "
            "wait for it to finish or use a different run directory"
        )
    return StoreError(
        f"{path}: cannot open the results store ({detail}); "
        "check the path is a writable file in a run directory"
    )


def _own_version() -> str:
    try:
        from robust import __version__
    except Exception:
        return "unknown"
    return str(__version__)


# -- encoding --------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _json_default(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} cannot be stored as JSON ({exc}); pass plain data") from exc


def _required(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _optional(name: str, value: Any) -> str:
    """Encode an optional key column: None/ABSENT become '' (see module docstring)."""
    if value is None or value is ABSENT:
        return ""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
    return value


def _seed(value: Any) -> int | None:
    """Encode the seed column: None/ABSENT become NULL, anything else must be an integer."""
    if value is None or value is ABSENT:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"seed must be an integer or None, got {value!r}")
    return int(value)


def _cell_key(
    victim: str,
    dataset: str,
    split: str,
    attack: str | None,
    seed: int | None,
    source: str | None,
    target: str | None,
    defense: str | None,
) -> tuple[str | int | None, ...]:
    return (
        _required("victim", victim),
        _required("dataset", dataset),
        _required("split", split),
        _optional("attack", attack),
        _seed(seed),
        _optional("source", source),
        _optional("target", target),
        _optional("defense", defense),
    )


def _metric_params(run_id: int, row: MetricRow, created_at: str) -> tuple[Any, ...]:
    if not isinstance(row, MetricRow):
        raise TypeError(f"write_metrics expects MetricRow items, got {type(row).__name__}")
    try:
        value = float(row.value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metric value must be a number, got {row.value!r} in {row}") from exc
    victim, dataset, split, attack, seed, source, target, defense = _cell_key(
        row.victim,
        row.dataset,
        row.split,
        row.attack,
        row.seed,
        row.source,
        row.target,
        row.defense,
    )
    metric = _required("metric", row.metric)
    scoring = _required("scoring", row.scoring)
    return (
        run_id,
        victim,
        dataset,
        split,
        metric,
        None if math.isnan(value) else value,
        attack,
        seed,
        source,
        target,
        defense,
        scoring,
        created_at,
    )


def _metric_row(record: tuple[Any, ...]) -> MetricRow:
    victim, dataset, split, metric, value, attack, seed, source, target, defense, scoring = record
    return MetricRow(
        victim=victim,
        dataset=dataset,
        split=split,
        metric=metric,
        value=math.nan if value is None else float(value),
        attack=attack or None,
        seed=seed,
        source=source or None,
        target=target or None,
        defense=defense or None,
        scoring=scoring,
    )


def _filter_value(column: str, value: Any) -> Any:
    if column in OPTIONAL_KEYS:
        return _optional(column, value)
    if column == "seed":
        return _seed(value)
    if value is ABSENT:
        optional = (*OPTIONAL_KEYS, "seed")
        raise ValueError(f"{column} is never absent; ABSENT only applies to {optional}")
    if column == "value":
        number = float(value)
        return None if math.isnan(number) else number
    return _required(column, value)


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(
            f"direction must be 'tr' (image->text) or 'ir' (text->image), got {direction!r}"
        )


def _encode_ranks(ranks: np.ndarray) -> tuple[bytes, int]:
    """int32 little-endian bytes: compact and readable on any machine."""
    array = np.asarray(ranks)
    if array.ndim != 1:
        raise ValueError(f"ranks must be a 1-D array (one rank per query), got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"ranks must be an integer array, got dtype {array.dtype}")
    if array.size and (int(array.min()) < _INT32_MIN or int(array.max()) > _INT32_MAX):
        raise ValueError("ranks must fit in int32")
    return array.astype("<i4").tobytes(), int(array.size)


def _describe_key(run_id: int, *parts: str | int | None) -> str:
    names = (
        "victim",
        "dataset",
        "split",
        "attack",
        "seed",
        "source",
        "target",
        "defense",
        "direction",
        "scoring",
    )
    described = ", ".join(
        f"{name}={value!r}" for name, value in zip(names, parts, strict=True) if value is not None
    )
    return f"run {run_id} ({described})"
