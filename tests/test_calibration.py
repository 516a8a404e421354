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
    with pytest.raises(RobustError, match=r"lacks sep_attack, co_attack \(start from configs"):
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
