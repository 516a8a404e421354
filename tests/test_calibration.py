"""World calibration bands: read a matrix's TR ASR the way the published pattern is stated."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from robust.errors import RobustError
from robust.harness.calibration import (
    CALIBRATION_ATTACKS,
    calibration_bands,
    check_calibration_labels,
    pattern_rows,
    write_calibration,
)

SOURCES = ("a", "b", "c")


def _result(**asr: np.ndarray) -> SimpleNamespace:
    """A three-victim matrix whose TR ASR (fractions) is given per attack."""
    return SimpleNamespace(
        labels=tuple(asr),
        sources=SOURCES,
        targets=SOURCES,
        white_box=np.eye(3, dtype=bool),
        tr_asr=asr,
        ir_asr=asr,
        clean_tr_r1=np.full((3, 3), 0.8),
        clean_ir_r1=np.full((3, 3), 0.7),
        dataset="world",
        split="test-1k[:200]",
        seeds=(0, 1, 2),
        run_dir="runs/x",
        fingerprint="f",
    )


def _matrix(white: float, black: float) -> np.ndarray:
    return np.where(np.eye(3, dtype=bool), white, black)


def _flickr_like() -> dict[str, np.ndarray]:
    return {
        "pgd": _matrix(0.7, 0.05),
        "bert_attack": _matrix(0.2, 0.2),
        "sep_attack": _matrix(0.8, 0.15),
        "co_attack": _matrix(0.8, 0.18),
        "sga": _matrix(0.98, 0.3),
    }


def test_a_flickr_like_matrix_holds_every_band():
    bands = calibration_bands(_result(**_flickr_like()))
    assert [band.key for band in bands] == [
        "pgd_white_box",
        "pgd_transfer",
        "bert_white_box",
        "bert_transfer",
        "sga_white_box",
        "sga_transfers_best",
    ]
    assert all(band.passed for band in bands)
    assert bands[0].measured == 70.0 and bands[-1].measured == 3


def test_todays_pattern_misses_the_pixel_and_text_bands_and_names_the_worst_cell():
    asr = _flickr_like()
    asr["pgd"] = np.array([[0.2, 0.1, 0.05], [0.0, 0.0, 0.25], [0.1, 0.1, 0.6]])
    asr["bert_attack"] = _matrix(0.9, 0.8)
    asr["sga"] = asr["sga"].copy()
    asr["sga"][1, [0, 2]] = 0.1  # source b: SGA transfers worse than Co-Attack
    bands = {band.key: band for band in calibration_bands(_result(**asr))}
    assert not bands["pgd_white_box"].passed
    assert (bands["pgd_white_box"].measured, bands["pgd_white_box"].where) == (0.0, "b -> b")
    assert (bands["pgd_transfer"].measured, bands["pgd_transfer"].where) == (25.0, "b -> c")
    assert not bands["bert_white_box"].passed and not bands["bert_transfer"].passed
    assert bands["sga_white_box"].passed
    assert bands["sga_transfers_best"].where == "a, c" and bands["sga_transfers_best"].passed
    asr["sga"][0, [1, 2]] = 0.1
    bands = {band.key: band for band in calibration_bands(_result(**asr))}
    assert not bands["sga_transfers_best"].passed


def test_missing_attacks_are_one_error_before_anything_runs():
    with pytest.raises(
        RobustError,
        match=r"lacks sep_attack, co_attack \(start from the shipped one: `robust specs world-",
    ):
        check_calibration_labels(["pgd", "bert_attack", "sga"])
    check_calibration_labels(CALIBRATION_ATTACKS)


def test_the_record_holds_bands_and_matrices(tmp_path):
    result = _result(**_flickr_like())
    path = write_calibration(
        tmp_path / "out" / "calibration.json", result, calibration_bands(result)
    )
    record = json.loads(path.read_text())
    assert record["passed"] is True
    assert record["tr_asr"]["pgd"][0][0] == 70.0
    assert record["published_pattern"]["sga"]["white_box"] == [97.2, 99.2]


def test_pattern_rows_set_the_worlds_range_beside_the_papers(tmp_path):
    asr = _flickr_like()
    asr["pgd"] = np.array([[0.7, 0.05, 0.1], [0.02, 0.55, 0.0], [0.04, 0.08, 0.9]])
    result = _result(**asr)
    record = json.loads(
        write_calibration(tmp_path / "c.json", result, calibration_bands(result)).read_text()
    )
    rows = {row.attack: row for row in pattern_rows(record)}
    assert list(rows) == ["PGD", "BERT-Attack", "SGA"]
    assert rows["PGD"].world_white_box == (55.0, 90.0)
    assert rows["PGD"].world_transfer == (0.0, 10.0)
    assert rows["PGD"].paper_white_box == (52.5, 86.5)
    assert rows["SGA"].world_transfer == (30.0, 30.0)


def test_a_record_without_its_matrices_is_one_clear_error():
    with pytest.raises(RobustError, match=r"not a calibration record .*robust zoo calibrate"):
        pattern_rows({"bands": []})


def test_the_report_shows_a_calibration_record_and_notes_a_broken_one(tmp_path):
    from pypdf import PdfReader

    from robust.report.pdf import build_report
    from tests.test_report import write_clean_store

    run_dir = tmp_path / "run"
    write_clean_store(run_dir)
    plain = build_report(run_dir, tmp_path / "plain.pdf")
    assert "World calibration" not in plain.sections
    assert "World calibration" not in [title for title, _ in plain.omitted]

    asr = _flickr_like()
    asr["bert_attack"] = _matrix(0.96, 0.9)
    result = _result(**asr)
    write_calibration(run_dir / "calibration.json", result, calibration_bands(result))
    (run_dir / "old").mkdir()
    (run_dir / "old" / "calibration.json").write_text("{not json")
    summary = build_report(run_dir, tmp_path / "report.pdf")
    assert "World calibration" in summary.sections
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(summary.path).pages).split())
    assert "PGD 52.5-86.5 70.0 1.1-10.3 5.0" in text
    assert "BERT-Attack 11.6-30.4 96.0 8.9-33.5 90.0" in text
    assert "BERT-Attack white-box <= 35 on every toy 96.0 c -> c no" in text
    assert "Sep-Attack's and Co-Attack's for >= 2 of 3 sources 3 a, b, c yes" in text
    assert "old/calibration.json could not be read" in text
    assert "fewer than the calibration protocol" not in text  # 200 images, 3 seeds


def test_the_shipped_calibration_spec_is_the_protocols_size():
    from robust.harness.calibration import PROTOCOL_IMAGES, PROTOCOL_SEEDS
    from robust.harness.spec import load_spec

    spec = load_spec("world-calibration")
    assert spec.limit == PROTOCOL_IMAGES and len(spec.seeds) == PROTOCOL_SEEDS
    check_calibration_labels([attack.label for attack in spec.attacks])


def test_a_record_smaller_than_the_protocol_says_so_in_the_report(tmp_path):
    from pypdf import PdfReader

    from robust.report.pdf import build_report
    from tests.test_report import write_clean_store

    run_dir = tmp_path / "run"
    write_clean_store(run_dir)
    result = _result(**_flickr_like())
    result.split, result.seeds = "test-1k[:50]", (0,)
    write_calibration(run_dir / "calibration.json", result, calibration_bands(result))
    summary = build_report(run_dir, tmp_path / "report.pdf")
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(summary.path).pages).split())
    assert "rests on 50 images and 1 seed, fewer than the calibration protocol's 200" in text


def test_zoo_calibrate_prints_the_bands_writes_the_record_and_exits_1_on_a_miss(tmp_path):
    """The command end to end on a tiny spec: two CLIP toys, 4 images, short attacks."""
    from tests.cli_helpers import invoke

    budget = "eps: 2/255, steps: 2, step_size: 1/255"
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        f"""name: tiny-calibration
dataset: world-v3:test-1k
limit: 4
sources: [toy-clip-vit, toy-clip-rn]
targets: [toy-clip-vit, toy-clip-rn]
attacks:
  - {{name: pgd, params: {{{budget}}}}}
  - {{name: bert_attack, params: {{max_words: 1, objective: kl}}, mlm: toy-mlm}}
  - {{name: sep_attack, params: {{{budget}, max_words: 1}}, mlm: toy-mlm}}
  - {{name: co_attack, params: {{{budget}, max_words: 1}}, mlm: toy-mlm}}
  - {{name: sga, params: {{{budget}, max_words: 1}}, mlm: toy-mlm}}
seeds: [0]
batch_size: 4
output_dir: {tmp_path / "run"}
"""
    )
    result = invoke("zoo", "calibrate", str(spec))
    record = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert [band["key"] for band in record["bands"]][0] == "pgd_white_box"
    assert record["split"] == "test-1k[:4]" and record["sources"] == ["toy-clip-vit", "toy-clip-rn"]
    assert "World calibration (world-v3:test-1k[:4]" in result.output
    for band in record["bands"]:
        assert band["rule"][:30] in " ".join(result.output.split())
    assert result.exit_code == (0 if record["passed"] else 1), result.output
