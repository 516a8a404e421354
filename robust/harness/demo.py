"""The end-to-end demo on the embedded world: what `make demo` and `robust demo` run."""

from __future__ import annotations

from pathlib import Path

from robust.data.world import generate_world
from robust.harness.evaluate import CleanEvaluation, evaluate_victims
from robust.progress import Progress

DEMO_VICTIMS = ("toy-clip-vit", "toy-clip-rn")
DEMO_SPLIT = "test-1k"


def run_demo(run_dir: Path, *, progress: Progress | None = None) -> CleanEvaluation:
    """Clean evaluation of the toy zoo on world test-1k, stored under `run_dir`."""
    dataset = generate_world(DEMO_SPLIT)
    spec = {"command": "demo", "victims": list(DEMO_VICTIMS), "dataset": dataset.name}
    return evaluate_victims(DEMO_VICTIMS, dataset, run_dir, spec=spec, progress=progress)
