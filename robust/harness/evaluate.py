"""Clean retrieval evaluation of victims on one dataset, recorded in a run's store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from robust.data.dataset import CaptionDataset
from robust.eval.retrieval import RetrievalResult, evaluate_retrieval
from robust.harness.store import MetricRow, ResultStore
from robust.progress import Progress, ensure_progress
from robust.victims.zoo import load_victim


@dataclass(frozen=True)
class CleanEvaluation:
    """Per-victim retrieval results of one run, in the order the victims were given."""

    run_dir: Path
    run_id: int
    dataset: str
    split: str
    results: dict[str, RetrievalResult] = field(default_factory=dict)

    def rows(self) -> list[dict[str, float | str]]:
        """One table row per victim: its name and every retrieval metric."""
        return [{"victim": name, **result.metrics()} for name, result in self.results.items()]


def dataset_key(dataset: CaptionDataset) -> tuple[str, str]:
    """The (dataset, split) columns a dataset's rows are stored under.

    `world:test-1k[:100]` -> ("world", "test-1k[:100]"); a Karpathy file `flickr30k_test`
    -> ("flickr30k_test", "test").
    """
    name, bracket, limit = dataset.name.partition("[:")
    base, sep, split = name.partition(":")
    return base, (split if sep else "test") + bracket + limit


def evaluate_victims(
    victims: Sequence[str],
    dataset: CaptionDataset,
    run_dir: Path,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    spec: dict | None = None,
    progress: Progress | None = None,
) -> CleanEvaluation:
    """Evaluate each victim clean, writing metrics and per-query ranks to `run_dir`.

    Victims are loaded one at a time, so a bad name fails before any work and a large
    victim is freed before the next one loads.
    """
    from robust.victims.zoo import resolve_spec

    for name in victims:  # fail fast on unknown names, before any evaluation runs
        resolve_spec(name)
    progress = ensure_progress(progress)
    dataset_name, split = dataset_key(dataset)
    run_spec = spec or {
        "command": "eval",
        "victims": list(victims),
        "dataset": dataset.name,
        "batch_size": batch_size,
    }
    run_dir = Path(run_dir)
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(run_spec, seeds={"world": 0})
        evaluation = CleanEvaluation(run_dir, run_id, dataset_name, split)
        for name in victims:
            victim = load_victim(name, device=device)
            result = evaluate_retrieval(victim, dataset, batch_size=batch_size, progress=progress)
            keys = {"victim": name, "dataset": dataset_name, "split": split}
            store.write_query_ranks(run_id, direction="tr", ranks=result.tr_ranks, **keys)
            store.write_query_ranks(run_id, direction="ir", ranks=result.ir_ranks, **keys)
            store.write_metrics(
                run_id,
                [MetricRow(metric=m, value=v, **keys) for m, v in result.metrics().items()],
            )
            evaluation.results[name] = result
            del victim
    return evaluation
