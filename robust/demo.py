"""The end-to-end demo on the embedded world: what `make demo` and `robust demo` run.

Every part writes its own store under one run directory, and the report reads them all:

1. `clean/`: clean retrieval of every shipped toy retrieval victim on the zoo world's test-1k;
2. `matrix/`: the transfer-attack matrix of the shipped `world-matrix` spec (PGD, BERT-Attack,
   Sep-Attack, Co-Attack and SGA from every toy to every toy), on Ray when Ray is installed
   (it is in the dev extra), else locally; the run record says which. The matrix is also
   read against the published attack pattern (`matrix/calibration.json`, the bands of
   `robust zoo calibrate` on the demo's 50 images and one seed), so the report says what
   the world's numbers mean;
3. bias of the matrix's SGA examples (in `matrix/`'s store): relevance bias of clean vs
   adversarial copies in one gallery with the attribute shift, and caption bias of the
   toy captioner;
4. `defense/`: the defended matrix of the shipped `world-defense` spec (clean cost,
   non-adaptive and adaptive ASR behind JPEG and random resize-and-pad);
5. `patch/`: a universal AdvCLIP patch fitted on toy-clip-vit and evaluated on the toys
   against its random-patch control;
6. `anyattack/`: the shipped world AnyAttack decoder (encoder toy-clip-vit, eps 16/255) on
   seeded clean/target pairs: targeted retrieval against its floor and ceiling, captioning;
7. the robustness report PDF of all of it.

Re-running into the same directory resumes: the matrix skips finished cells, and a part
that completed (marked by `.complete` in its folder) is not recomputed; a part that was
interrupted is redone from scratch, so no store ever holds a run twice. The directory's
`demo.json` records the world and the zoo the demo ran on; a directory made on another
world or zoo is refused rather than resumed, so results of two zoos never mix.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from robust.attacks.anyattack import load_decoder
from robust.data.dataset import CaptionDataset
from robust.data.world import ZOO_WORLD, generate_world
from robust.errors import RobustError
from robust.eval.retrieval import METRIC_NAMES
from robust.harness.anyattack_eval import WORLD_DECODER, evaluate_anyattack
from robust.harness.bias import cache_caption_bias, cache_relevance_bias
from robust.harness.calibration import (
    CALIBRATION_FILENAME,
    Band,
    calibration_bands,
    write_calibration,
)
from robust.harness.evaluate import evaluate_victims
from robust.harness.executors import best_available_executor, make_executor
from robust.harness.matrix import MatrixResult, run_matrix
from robust.harness.patch import run_patch_demo
from robust.harness.spec import ExperimentSpec, load_spec
from robust.harness.store import ResultStore
from robust.progress import Progress
from robust.report.pdf import ReportSummary, build_report
from robust.resources import ZOO_DIR, spec_path
from robust.victims.registry import TOY_RETRIEVAL_VICTIMS

DEMO_SPLIT = "test-1k"
# ITM re-ranks each query's top 16 ITC candidates in the demo's clean part, as in its matrix
# (world-matrix): with three fusion toys, the Flickr default of 128 alone would
# take most of the demo's time. `robust eval` keeps 128.
CLEAN_K_TEST = 16
MATRIX_SPEC = spec_path("world-matrix")
DEFENSE_SPEC = spec_path("world-defense")
BIAS_ATTACK, BIAS_SOURCE, BIAS_TARGET = "sga", "toy-clip-vit", "toy-clip-rn"
BIAS_CAPTIONER = "toy-blip-cap"
ANYATTACK_ENCODER = "toy-clip-vit"
ANYATTACK_VICTIMS = ("toy-clip-vit", "toy-clip-rn", "toy-blip-cap")
ANYATTACK_PAIRS = 200
COMPLETE_MARKER = ".complete"
DEMO_RECORD = "demo.json"
T = TypeVar("T")


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo measured (each part also in its store) and the report it wrote."""

    clean_rows: list[dict[str, float | str]]
    matrix: MatrixResult
    calibration: list[Band]
    defense: MatrixResult
    patch_dir: Path
    anyattack_dir: Path
    report: ReportSummary


def demo_matrix_spec(run_dir: Path, spec_file: Path = MATRIX_SPEC) -> ExperimentSpec:
    """A shipped spec writing into `run_dir`, on Ray when Ray is installed."""
    spec = load_spec(spec_file)
    return spec.model_copy(
        update={"output_dir": Path(run_dir), "executor": best_available_executor()}
    )


def run_demo_matrix(run_dir: Path, spec_file: Path, progress: Progress | None) -> MatrixResult:
    """Run (or resume) a shipped matrix spec into `run_dir`."""
    spec = demo_matrix_spec(run_dir, spec_file)
    executor = make_executor(spec.executor, device=spec.device)
    return run_matrix(spec, progress=progress, executor=executor)


def has_run(run_dir: Path, **record: object) -> bool:
    """Whether `run_dir`'s store holds a run whose record has all of `record`'s items."""
    with ResultStore.in_run_dir(run_dir) as store:
        return any(
            all(store.run_info(run_id)["spec"].get(k) == v for k, v in record.items())
            for run_id in store.run_ids()
        )


def run_demo_bias(matrix_dir: Path, progress: Progress | None) -> None:
    """Relevance and caption bias of the matrix's SGA examples, each stored once."""
    keys = {"attack": BIAS_ATTACK, "source": BIAS_SOURCE}
    if not has_run(matrix_dir, command="bias cache", victim=BIAS_TARGET, **keys):
        cache_relevance_bias(matrix_dir, victim_name=BIAS_TARGET, progress=progress, **keys)
    if not has_run(matrix_dir, command="bias caption", captioner=BIAS_CAPTIONER, **keys):
        cache_caption_bias(matrix_dir, captioner=BIAS_CAPTIONER, progress=progress, **keys)


def demo_inputs() -> dict[str, str]:
    """The world the demo runs on and a digest of every shipped zoo file it may load."""
    digest = hashlib.sha256()
    for path in sorted(p for p in ZOO_DIR.rglob("*") if p.is_file() and p.suffix != ".md"):
        digest.update(path.relative_to(ZOO_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return {"world": ZOO_WORLD, "zoo": digest.hexdigest()[:16]}


def claim_run_dir(run_dir: Path) -> None:
    """Record the demo's inputs in `run_dir`, refusing one that holds a demo of others."""
    record, inputs = run_dir / DEMO_RECORD, demo_inputs()
    if record.is_file():
        made = json.loads(record.read_text())
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        made = {"world": "an older version of the demo", "zoo": "unrecorded"}
    else:
        made = inputs
    if made != inputs:
        raise RobustError(
            f"{run_dir} holds a demo made on {made['world']} with zoo {made['zoo']}, not on "
            f"{inputs['world']} with zoo {inputs['zoo']}; give --out another folder or "
            f"remove {run_dir}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(inputs, indent=2) + "\n")


def run_once(folder: Path, step: Callable[[Path], T]) -> T | None:
    """Run `step(folder)` unless an earlier call completed it; redo an interrupted one.

    Returns the step's result, or None when the folder already holds a completed run.
    """
    marker = folder / COMPLETE_MARKER
    if marker.exists():
        return None
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted, non-resumable part: its rows are incomplete
    result = step(folder)
    marker.touch()
    return result


def run_demo(
    run_dir: Path,
    *,
    report_pdf: Path | None = None,
    progress: Progress | None = None,
) -> DemoResult:
    """Run the demo's parts on the world under `run_dir`, then write the report.

    The report goes to `report_pdf` (default `run_dir/report.pdf`).
    """
    run_dir = Path(run_dir)
    claim_run_dir(run_dir)
    dataset = generate_world(DEMO_SPLIT, version=ZOO_WORLD)
    spec = {
        "command": "demo",
        "victims": list(TOY_RETRIEVAL_VICTIMS),
        "dataset": dataset.name,
        "k_test": CLEAN_K_TEST,
    }
    run_once(
        run_dir / "clean",
        lambda folder: evaluate_victims(
            TOY_RETRIEVAL_VICTIMS,
            dataset,
            folder,
            k_test=CLEAN_K_TEST,
            spec=spec,
            progress=progress,
        ),
    )
    matrix = run_demo_matrix(run_dir / "matrix", MATRIX_SPEC, progress)
    calibration = calibration_bands(matrix)
    write_calibration(run_dir / "matrix" / CALIBRATION_FILENAME, matrix, calibration)
    run_demo_bias(run_dir / "matrix", progress)
    defense = run_demo_matrix(run_dir / "defense", DEFENSE_SPEC, progress)
    patch_dir = run_dir / "patch"
    run_once(patch_dir, lambda folder: run_patch_demo(folder, progress=progress))
    anyattack_dir = run_dir / "anyattack"
    run_once(anyattack_dir, lambda folder: run_demo_anyattack(folder, dataset, progress))
    report = build_report(run_dir, report_pdf or run_dir / "report.pdf")
    return DemoResult(
        clean_rows(run_dir / "clean"),
        matrix,
        calibration,
        defense,
        patch_dir,
        anyattack_dir,
        report,
    )


def run_demo_anyattack(folder: Path, dataset: CaptionDataset, progress: Progress | None) -> None:
    """Evaluate the shipped world decoder on the toys, examples included."""
    evaluate_anyattack(
        load_decoder(WORLD_DECODER),
        ANYATTACK_ENCODER,
        ANYATTACK_VICTIMS,
        dataset,
        folder,
        pairs=ANYATTACK_PAIRS,
        decoder_source=str(WORLD_DECODER),
        progress=progress,
    )


def clean_rows(run_dir: Path) -> list[dict[str, float | str]]:
    """One row per (victim, scoring) of the latest run in `run_dir`'s store, for tables."""
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.latest_run_id()
        metrics = store.metrics(run_id) if run_id is not None else []
    rows: dict[tuple[str, str], dict[str, float | str]] = {}
    for row in metrics:
        if row.metric in METRIC_NAMES and row.attack is None:
            entry = rows.setdefault(
                (row.victim, row.scoring), {"victim": row.victim, "scoring": row.scoring}
            )
            entry[row.metric] = row.value
    return list(rows.values())
