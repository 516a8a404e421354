"""tools/compare_runs.py: the diff that proves a change left every stored number alone,
across results-store schema versions."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.schema1_store import downgrade_matrix_store
from tests.test_report import write_matrix_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import compare_runs  # noqa: E402


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_a_schema_1_copy_of_a_run_has_no_differences(tmp_path, capsys, seeds):
    """Schema 1 packed several seeds into the attack column and kept one seed only in the run
    record; both read back to the same rows as schema 2's seed column."""
    write_matrix_store(tmp_path / "new" / "matrix", seeds=seeds, seed_offsets=(0.0,) * len(seeds))
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    downgrade_matrix_store(tmp_path / "old" / "matrix" / "results.sqlite")
    with sqlite3.connect(tmp_path / "old" / "matrix" / "results.sqlite") as old:
        assert "seed" not in {row[1] for row in old.execute("PRAGMA table_info(metrics)")}

    assert compare_runs.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 0
    assert "0 difference(s)" in capsys.readouterr().out


def test_a_changed_value_and_a_missing_store_are_reported(tmp_path, capsys):
    write_matrix_store(tmp_path / "old" / "matrix", seeds=(0, 1), seed_offsets=(0.0, 0.0))
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    write_matrix_store(tmp_path / "old" / "extra")
    with sqlite3.connect(tmp_path / "new" / "matrix" / "results.sqlite") as new:
        new.execute(
            "UPDATE metrics SET value = value + 1e-9 WHERE metric = 'tr_asr_r1' AND seed = 1 "
            "AND id = (SELECT MIN(id) FROM metrics WHERE metric = 'tr_asr_r1' AND seed = 1)"
        )

    assert compare_runs.main([str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out
    assert "store only in old: extra/results.sqlite" in out
    changed = [line for line in out.splitlines() if line.startswith("matrix/")]
    assert len(changed) == 1 and "tr_asr_r1" in changed[0] and ", 1, " in changed[0]
