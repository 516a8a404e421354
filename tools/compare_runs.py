"""Diff every number of two run directories, across results-store schema versions.

Used to prove that a change which must not alter results did not: run the same job (e.g.
`robust demo`) with the old and the new code into two directories, then

    python tools/compare_runs.py OLD_RUN_DIR NEW_RUN_DIR [--pdf OLD.pdf NEW.pdf]

Every `results.sqlite` below OLD is paired with the one at the same relative path below NEW.
Rows are keyed by what they measure, in one dialect whatever schema wrote them: schema 1 packed
a multi-seed run's seed into the attack column (`label@seed=N`) and left clean rows' target
empty; schema 2 has a seed column and sets target on every row. Where a schema-1 run recorded
its seeds in a shape this script does not read (runs other than the matrix kept them under
their own keys), its rows are compared without the seed, on both sides. Metric values must be
equal (NaN equals NaN) and per-query ranks byte-identical. With --pdf, the text of the two
reports is compared line by line as well. Exit status 0 when nothing differs, 1 otherwise.

It reads the files with sqlite3 only (no vlp-robust import), so it never migrates or otherwise
writes either store.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sqlite3
import sys
from pathlib import Path

STORE_FILENAME = "results.sqlite"
SEED_SUFFIX = re.compile(r"^(?P<label>.*)@seed=(?P<seed>-?\d+)$")
KEY_COLUMNS = ("victim", "dataset", "split", "attack", "source", "target", "defense", "scoring")
Key = tuple


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}


def _run_seeds(connection: sqlite3.Connection) -> dict[int, list[int]]:
    """Each run's attack seeds as recorded at its start (schema 1 needs them for one-seed runs)."""
    seeds = {}
    for run_id, recorded in connection.execute("SELECT run_id, seeds FROM runs"):
        value = json.loads(recorded)
        listed = value.get("attack_seeds", value.get("seeds")) if isinstance(value, dict) else None
        seeds[run_id] = [int(seed) for seed in listed] if isinstance(listed, list) else []
    return seeds


def _unseeded_runs(path: Path) -> set[int]:
    """Runs of a schema-1 store whose rows' seeds cannot be told (empty for schema 2)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if "seed" in _columns(connection, "metrics"):
            return set()
        return {run_id for run_id, seeds in _run_seeds(connection).items() if not seeds}
    finally:
        connection.close()


def _normalised_rows(
    path: Path, table: str, extra: tuple[str, ...], unseeded: set[int] = frozenset()
) -> dict[Key, tuple]:
    """Rows of `table` keyed by (run, what they measure), with `extra` columns as the value;
    rows of `unseeded` runs are keyed without their seed."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = _columns(connection, table)
        has_seed = "seed" in columns
        run_seeds = _run_seeds(connection)
        selected = ("run_id", *KEY_COLUMNS, *(("seed",) if has_seed else ()), *extra)
        rows = {}
        for record in connection.execute(f"SELECT {', '.join(selected)} FROM {table}"):
            named = dict(zip(selected, record, strict=True))
            attack = named["attack"] or ""
            if has_seed:
                seed = named["seed"]
            else:
                match = SEED_SUFFIX.match(attack)
                if match:
                    attack, seed = match["label"], int(match["seed"])
                else:
                    listed = run_seeds.get(named["run_id"], [])
                    seed = listed[0] if attack and len(listed) == 1 else None
            if named["run_id"] in unseeded:
                seed = None
            key = (
                named["run_id"],
                named["victim"],
                named["dataset"],
                named["split"],
                attack,
                seed,
                named["source"] or "",
                named["target"] or named["victim"],
                named["defense"] or "",
                named["scoring"],
                *(named[column] for column in extra[:-1]),
            )
            if key in rows:
                raise SystemExit(f"{path}: two {table} rows normalise to the same key {key}")
            rows[key] = named[extra[-1]]
        return rows
    finally:
        connection.close()


def _same_value(old: object, new: object) -> bool:
    if isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new):
        return True
    return old == new


def compare_stores(old: Path, new: Path) -> list[str]:
    """Every difference between two stores' metrics and per-query ranks, as lines."""
    differences = []
    unseeded = _unseeded_runs(old) | _unseeded_runs(new)
    for table, extra in (
        ("metrics", ("metric", "value")),
        ("query_results", ("direction", "ranks")),
    ):
        old_rows = _normalised_rows(old, table, extra, unseeded)
        new_rows = _normalised_rows(new, table, extra, unseeded)
        for key in sorted(old_rows.keys() - new_rows.keys(), key=repr):
            differences.append(f"{table}: only in old: {key}")
        for key in sorted(new_rows.keys() - old_rows.keys(), key=repr):
            differences.append(f"{table}: only in new: {key}")
        for key in sorted(old_rows.keys() & new_rows.keys(), key=repr):
            if not _same_value(old_rows[key], new_rows[key]):
                shown = (
                    (old_rows[key], new_rows[key]) if table == "metrics" else ("ranks", "differ")
                )
                differences.append(f"{table}: {key}: {shown[0]!r} != {shown[1]!r}")
    return differences


def _pdf_lines(path: Path) -> list[str]:
    from pypdf import PdfReader

    return [
        line for page in PdfReader(path).pages for line in (page.extract_text() or "").splitlines()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="run directory made by the old code")
    parser.add_argument("new", type=Path, help="run directory made by the new code")
    parser.add_argument("--pdf", nargs=2, type=Path, metavar=("OLD_PDF", "NEW_PDF"))
    arguments = parser.parse_args(argv)
    for folder in (arguments.old, arguments.new):
        if not folder.is_dir():
            parser.error(f"{folder} is not a directory; give two run directories")
    old_stores = {p.relative_to(arguments.old) for p in arguments.old.rglob(STORE_FILENAME)}
    new_stores = {p.relative_to(arguments.new) for p in arguments.new.rglob(STORE_FILENAME)}
    differences = [f"store only in old: {p}" for p in sorted(old_stores - new_stores)]
    differences += [f"store only in new: {p}" for p in sorted(new_stores - old_stores)]
    rows = 0
    for relative in sorted(old_stores & new_stores):
        found = compare_stores(arguments.old / relative, arguments.new / relative)
        differences += [f"{relative}: {line}" for line in found]
        rows += len(_normalised_rows(arguments.old / relative, "metrics", ("metric", "value")))
    if arguments.pdf:
        old_pdf, new_pdf = (_pdf_lines(path) for path in arguments.pdf)
        differences += [
            f"report: {line}"
            for line in difflib.unified_diff(old_pdf, new_pdf, lineterm="", n=0)
            if not line.startswith(("---", "+++", "@@"))
        ]
    for line in differences:
        print(line)
    print(
        f"{len(old_stores & new_stores)} stores, {rows} metric rows compared: "
        f"{len(differences)} difference(s)"
    )
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
