"""World calibration: does the embedded world break the way Flickr30k breaks?

Every attack comparison the suite can make offline happens on the world, so its toys must
fail in the published pattern (SGA paper, Flickr30k 1K): pixel attacks succeed white-box
and transfer poorly, one-word caption swaps do modest harm, SGA transfers best. The bands
below turn that pattern into checks on a finished transfer matrix (`configs/
world_calibration.yaml`), all on TR R@1 ASR in SGA's convention, averaged over seeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robust.errors import RobustError

CALIBRATION_ATTACKS = ("pgd", "bert_attack", "sep_attack", "co_attack", "sga")
CALIBRATION_FILENAME = "calibration.json"
# The protocol's size (the shipped `world-calibration` spec): a record on fewer images or
# seeds, such as the demo's, says so where it is shown.
PROTOCOL_IMAGES = 200
PROTOCOL_SEEDS = 3
PATTERN_NAMES = {"pgd": "PGD", "bert_attack": "BERT-Attack", "sga": "SGA"}

# TR R@1 ASR ranges (%) over ALBEF, TCL, CLIP ViT-B/16 and CLIP RN101 as sources, SGA
# paper (Lu et al., ICCV 2023) Table 2 at eps 2/255, 10 steps, one word.
PUBLISHED_PATTERN: dict[str, dict[str, tuple[float, float]]] = {
    "pgd": {"white_box": (52.5, 86.5), "transfer": (1.1, 10.3)},
    "bert_attack": {"white_box": (11.6, 30.4), "transfer": (8.9, 33.5)},
    "sga": {"white_box": (97.2, 99.2), "transfer": (11.4, 48.9)},
}


@dataclass(frozen=True)
class PatternRow:
    """One attack's white-box and transfer TR R@1 ASR range (%): the paper's and the
    world's (lowest and highest cell), side by side."""

    attack: str
    paper_white_box: tuple[float, float]
    world_white_box: tuple[float, float]
    paper_transfer: tuple[float, float]
    world_transfer: tuple[float, float]


@dataclass(frozen=True)
class Band:
    """One rule of the published pattern and what the zoo measured against it."""

    key: str
    rule: str
    measured: float
    where: str
    passed: bool


def _cells(result: Any, label: str, white_box: bool) -> list[tuple[float, str]]:
    """(TR ASR in %, "source -> target") of every white-box or every black-box cell."""
    asr = 100 * np.asarray(result.tr_asr[label])
    return [
        (float(asr[s, t]), f"{source} -> {target}")
        for s, source in enumerate(result.sources)
        for t, target in enumerate(result.targets)
        if bool(result.white_box[s, t]) == white_box
    ]


def _worst(cells: list[tuple[float, str]], *, highest: bool) -> tuple[float, str]:
    if not cells:
        return float("nan"), "no such cell"
    return max(cells) if highest else min(cells)


def _transfer_by_source(result: Any, label: str) -> np.ndarray:
    """Each source's TR ASR averaged over its black-box targets (NaN without one)."""
    asr = 100 * np.asarray(result.tr_asr[label], dtype=float)
    black_box = ~np.asarray(result.white_box, dtype=bool)
    means = np.full(len(result.sources), np.nan)
    for s in range(len(result.sources)):
        if black_box[s].any():
            means[s] = asr[s, black_box[s]].mean()
    return means


def check_calibration_labels(labels: Sequence[str]) -> None:
    """One clear error, before anything runs, when an attack the bands read is missing."""
    missing = [label for label in CALIBRATION_ATTACKS if label not in labels]
    if missing:
        raise RobustError(
            f"the calibration needs attack labels {', '.join(CALIBRATION_ATTACKS)}; the spec "
            f"lacks {', '.join(missing)} (start from the shipped one: "
            "`robust specs world-calibration`)"
        )


def calibration_bands(result: Any) -> list[Band]:
    """Check a finished matrix (`robust.harness.matrix.MatrixResult`) against the pattern.

    The matrix must hold the five attacks under their own names as labels.
    """
    check_calibration_labels(result.labels)
    bands = []

    def add(key: str, rule: str, cell: tuple[float, str], passed: bool) -> None:
        bands.append(Band(key, rule, round(cell[0], 1), cell[1], bool(passed)))

    low = _worst(_cells(result, "pgd", True), highest=False)
    add("pgd_white_box", "PGD white-box >= 50 on every source", low, low[0] >= 50)
    high = _worst(_cells(result, "pgd", False), highest=True)
    add("pgd_transfer", "PGD transfer <= 20 in every black-box cell", high, high[0] <= 20)
    high = _worst(_cells(result, "bert_attack", True), highest=True)
    add("bert_white_box", "BERT-Attack white-box <= 35 on every toy", high, high[0] <= 35)
    high = _worst(_cells(result, "bert_attack", False), highest=True)
    add("bert_transfer", "BERT-Attack transfer <= 40 in every black-box cell", high, high[0] <= 40)
    low = _worst(_cells(result, "sga", True), highest=False)
    add("sga_white_box", "SGA white-box >= 90 on every toy", low, low[0] >= 90)

    sga = _transfer_by_source(result, "sga")
    best = np.fmax(
        _transfer_by_source(result, "sep_attack"), _transfer_by_source(result, "co_attack")
    )
    ahead = [source for s, source in enumerate(result.sources) if sga[s] > best[s]]
    needed = max(1, len(result.sources) - 1)
    add(
        "sga_transfers_best",
        f"SGA's mean transfer above Sep-Attack's and Co-Attack's for >= {needed} of "
        f"{len(result.sources)} sources",
        (float(len(ahead)), ", ".join(ahead) or "none"),
        len(ahead) >= needed,
    )
    return bands


def calibration_record(result: Any, bands: list[Band]) -> dict[str, Any]:
    """Everything a reader needs to judge the calibration, as plain JSON types."""
    return {
        "dataset": result.dataset,
        "split": result.split,
        "seeds": list(result.seeds),
        "sources": list(result.sources),
        "targets": list(result.targets),
        "white_box": np.asarray(result.white_box, dtype=bool).tolist(),
        "bands": [asdict(band) for band in bands],
        "passed": all(band.passed for band in bands),
        "published_pattern": {
            k: {n: list(r) for n, r in v.items()} for k, v in PUBLISHED_PATTERN.items()
        },
        "tr_asr": {
            label: np.round(100 * result.tr_asr[label], 2).tolist() for label in result.labels
        },
        "ir_asr": {
            label: np.round(100 * result.ir_asr[label], 2).tolist() for label in result.labels
        },
        "clean_tr_r1": np.round(100 * np.asarray(result.clean_tr_r1), 2).tolist(),
        "clean_ir_r1": np.round(100 * np.asarray(result.clean_ir_r1), 2).tolist(),
        "run_dir": str(result.run_dir),
        "fingerprint": result.fingerprint,
    }


def write_calibration(path: Path, result: Any, bands: list[Band]) -> Path:
    """Write the calibration record as JSON (the folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration_record(result, bands), indent=2) + "\n")
    return path


def pattern_rows(record: dict[str, Any]) -> list[PatternRow]:
    """The world's range of each published attack beside the paper's, from a calibration
    record (`calibration_record`); a record without the matrices is one clear error."""
    try:
        white_box = np.asarray(record["white_box"], dtype=bool)
        rows = []
        for attack, name in PATTERN_NAMES.items():
            asr = np.asarray(record["tr_asr"][attack], dtype=float)
            paper = PUBLISHED_PATTERN[attack]
            rows.append(
                PatternRow(
                    name,
                    paper["white_box"],
                    _span(asr[white_box]),
                    paper["transfer"],
                    _span(asr[~white_box]),
                )
            )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise RobustError(
            f"not a calibration record ({type(error).__name__}: {error}); write one with "
            "`robust zoo calibrate`"
        ) from None
    return rows


def _span(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return (float("nan"), float("nan"))
    return (round(float(values.min()), 1), round(float(values.max()), 1))
