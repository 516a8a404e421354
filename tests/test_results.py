"""The results layer: white-box cells, headline scoring and seed averaging decided once, and the
runner's summary, the defense table and the report reading a store the same way."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robust.errors import RobustError
from robust.harness.results import (
    MatrixLayout,
    defense_table,
    headline_scoring,
    is_white_box,
    matrix_tables,
    seed_mean,
    seed_spread,
    stored_defense_table,
)
from robust.harness.store import MetricRow, ResultStore
from robust.report import analysis, load_report_data
from robust.victims.registry import KNOWN_VICTIMS
from tests.test_report import write_clean_store, write_defended_matrix, write_matrix_store

ALBEF_PATH = KNOWN_VICTIMS["toy-albef"].spec  # albef:<zoo>/toy-albef/checkpoint.pth
KEYS = {"dataset": "world", "split": "test-1k[:20]"}


def test_headline_is_rerank_only_for_a_target_with_reranked_rows():
    cells = [("albef", "itc"), ("albef", "rerank"), ("clip", "itc")]
    assert headline_scoring(cells, "albef") == "rerank"
    assert headline_scoring(cells, "clip") == "itc"
    assert headline_scoring(cells, "absent") == "itc"


def test_seed_mean_skips_nan_and_matches_np_mean():
    assert seed_mean([0.25, math.nan, 0.5]) == float(np.mean([0.25, 0.5]))
    assert math.isnan(seed_mean([math.nan])) and math.isnan(seed_mean([]))


def test_seed_spread_is_the_sample_std_of_the_finite_values():
    assert seed_spread([0.25, math.nan, 0.5, 0.75]) == pytest.approx(0.25)
    assert seed_spread([0.3, 0.3]) == 0.0
    assert math.isnan(seed_spread([0.4])) and math.isnan(seed_spread([0.4, math.nan]))


def test_white_box_compares_resolved_specs_not_display_names():
    assert is_white_box("toy-albef", ALBEF_PATH)
    assert is_white_box("toy-albef", "toy-albef")
    assert not is_white_box("toy-albef", "toy-tcl")
    # a spec this process cannot resolve (a family registered elsewhere) stands for itself
    assert is_white_box("mine:weights.pt", "mine:weights.pt")
    assert not is_white_box("mine:weights.pt", "mine:other.pt")


def _albef_matrix_spec() -> dict:
    """A matrix whose source names the shipped ALBEF by name and whose target by its path."""
    source = {"name": "toy-albef", "spec": "toy-albef"}
    target = {"name": "albef-by-path", "spec": ALBEF_PATH}
    attack = {"name": "pgd", "label": "pgd", "mlm": None, "params": {"eps": 2 / 255}}
    spec = {"dataset": "world:test-1k", "limit": 20, "seeds": [0, 1], "attacks": [attack]}
    spec |= {"sources": [source], "targets": [source, target]}
    return {"command": "matrix", "name": "albef", "fingerprint": "a" * 16, "spec": spec}


def _write_albef_matrix(run_dir: Path) -> int:
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(_albef_matrix_spec(), {"attack_seeds": [0, 1]}, {})
        rows = []
        for target in ("toy-albef", "albef-by-path"):
            cell = {"victim": target, "source": "toy-albef", "target": target, **KEYS}
            for scoring in ("itc", "rerank"):
                rows.append(MetricRow(metric="tr_r1", value=0.75, scoring=scoring, **cell))
                for seed, value in ((0, 0.5), (1, 0.75)):
                    rows.append(
                        MetricRow(
                            metric="tr_asr_r1",
                            value=value if scoring == "rerank" else 0.1,
                            attack="pgd",
                            seed=seed,
                            scoring=scoring,
                            **cell,
                        )
                    )
        store.write_metrics(run_id, rows)
    return run_id


def test_runner_summary_and_report_agree_on_a_white_box_named_two_ways(tmp_path):
    run_id = _write_albef_matrix(tmp_path)
    layout = MatrixLayout.from_spec(_albef_matrix_spec()["spec"])
    with ResultStore.in_run_dir(tmp_path, read_only=True) as store:
        tables = matrix_tables(store, run_id, layout, *KEYS.values())
    assert tables.white_box.tolist() == [[True, True]]
    assert tables.headline_scoring == {"toy-albef": "rerank", "albef-by-path": "rerank"}
    assert tables.tr_asr["pgd"].tolist() == [[0.625, 0.625]]  # rerank, seeds 0 and 1 averaged

    matrix = analysis.transfer_matrix(load_report_data(tmp_path), "pgd")
    assert matrix.targets == tables.targets
    assert matrix.white_box.tolist() == tables.white_box.tolist()
    np.testing.assert_array_equal(matrix.tr_asr, tables.tr_asr["pgd"])


def test_report_and_runner_read_the_same_seed_averages(tmp_path):
    write_matrix_store(tmp_path, seeds=(0, 1, 2), seed_offsets=(0.0, -0.05, 0.01))
    data = load_report_data(tmp_path)
    spec = data.runs[0].spec["spec"]
    with ResultStore.in_run_dir(tmp_path, read_only=True) as store:
        tables = matrix_tables(store, 1, MatrixLayout.from_spec(spec), *KEYS.values())
    for label in tables.labels:
        matrix = analysis.transfer_matrix(data, label)
        assert matrix.sources == tables.sources and matrix.targets == tables.targets
        np.testing.assert_array_equal(matrix.tr_asr, tables.tr_asr[label])
        np.testing.assert_array_equal(matrix.ir_asr, tables.ir_asr[label])
        np.testing.assert_array_equal(matrix.white_box, tables.white_box)


def test_defense_table_reads_clean_cost_and_three_asr_settings(tmp_path):
    write_defended_matrix(tmp_path)
    layout, rows = stored_defense_table(tmp_path)
    assert layout.defenses == ("jpeg-q75",) and layout.adaptive and len(rows) == 4
    row = next(r for r in rows if (r.source, r.target) == ("toy-clip-vit", "toy-clip-rn"))
    assert (row.clean_tr_r1, row.cost_ir_r1, row.scoring) == (0.875, 0.02, "itc")
    assert (row.undefended_tr_asr, row.tr_asr, row.adaptive_tr_asr) == (0.425, 0.12, 0.305)
    (summary,) = load_report_data(tmp_path).defense_summaries
    assert summary.rows == rows
    with ResultStore.in_run_dir(tmp_path, read_only=True) as store:
        spec = store.run_info(1)["spec"]["spec"]
        no_axis = MatrixLayout.from_spec({**spec, "defenses": None})
        assert defense_table(store, 1, no_axis, *KEYS.values()) == ()


def test_stored_defense_table_errors_are_one_line(tmp_path):
    with pytest.raises(RobustError, match="holds no results store"):
        stored_defense_table(tmp_path)
    write_clean_store(tmp_path)
    with pytest.raises(RobustError, match="has no matrix run") as caught:
        stored_defense_table(tmp_path)
    assert "\n" not in str(caught.value)


def test_the_report_imports_neither_torch_nor_attacks(tmp_path):
    """Importing and rendering a report in a fresh interpreter loads no model code."""
    write_defended_matrix(tmp_path / "run" / "matrix")
    write_clean_store(tmp_path / "run")
    script = (
        "import sys\n"
        "from robust.report import build_report\n"
        "build_report(sys.argv[1], sys.argv[2])\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')"
        " or m.startswith('robust.attacks'))\n"
        "print(','.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "run"), str(tmp_path / "report.pdf")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "report.pdf").stat().st_size > 0
    assert done.stdout.strip() == "", f"the report loaded {done.stdout.strip()}"
