"""The end-to-end demo on the embedded world: what `make demo` and `robust demo` run.

1. clean retrieval of every shipped toy retrieval victim on world test-1k, 2. the
transfer-attack matrix of `configs/world_matrix.yaml` (PGD, BERT-Attack, Sep-Attack,
Co-Attack and SGA from every toy to every toy), both stored under one run directory.
The matrix runs on Ray when Ray is installed (it is in the dev extra), else locally; the
run record says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robust.data.world import generate_world
from robust.harness.evaluate import CleanEvaluation, evaluate_victims
from robust.harness.executors import best_available_executor, make_executor
from robust.harness.matrix import MatrixResult, run_matrix
from robust.harness.spec import ExperimentSpec, load_spec
from robust.progress import Progress
from robust.victims.zoo import TOY_RETRIEVAL_VICTIMS

DEMO_SPLIT = "test-1k"
MATRIX_SPEC = Path(__file__).resolve().parents[2] / "configs" / "world_matrix.yaml"


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo measured, each part also written to its store."""

    clean: CleanEvaluation
    matrix: MatrixResult


def demo_matrix_spec(run_dir: Path) -> ExperimentSpec:
    """The shipped world matrix spec, writing into the demo's run directory."""
    spec = load_spec(MATRIX_SPEC)
    return spec.model_copy(update={"output_dir": Path(run_dir) / "matrix"})


def run_demo(run_dir: Path, *, progress: Progress | None = None) -> DemoResult:
    """Run the demo's parts on the world, storing everything under `run_dir`."""
    run_dir = Path(run_dir)
    dataset = generate_world(DEMO_SPLIT)
    spec = {"command": "demo", "victims": list(TOY_RETRIEVAL_VICTIMS), "dataset": dataset.name}
    clean = evaluate_victims(TOY_RETRIEVAL_VICTIMS, dataset, run_dir, spec=spec, progress=progress)
    matrix_spec = demo_matrix_spec(run_dir)
    matrix_spec = matrix_spec.model_copy(update={"executor": best_available_executor()})
    executor = make_executor(matrix_spec.executor, device=matrix_spec.device)
    matrix = run_matrix(matrix_spec, progress=progress, executor=executor)
    return DemoResult(clean, matrix)
