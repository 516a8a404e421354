"""Clean retrieval evaluation of victims on one dataset, recorded in a run's store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robust.data.dataset import CaptionDataset
from robust.errors import RobustError
from robust.eval.rerank import EncodedGallery, encode_gallery, rank_encoded
from robust.eval.retrieval import RetrievalResult
from robust.harness.results import ITC, RERANK
from robust.harness.store import MetricRow, ResultStore
from robust.progress import Progress, ensure_progress
from robust.victims.base import Victim
from robust.victims.registry import check_victim, load_victim


@dataclass(frozen=True)
class CleanEvaluation:
    """Retrieval results of one run: per victim, ITC and (for fusion victims) re-ranked."""

    run_dir: Path
    run_id: int
    dataset: str
    split: str
    results: dict[tuple[str, str], RetrievalResult] = field(default_factory=dict)

    def rows(self) -> list[dict[str, float | str]]:
        """One table row per (victim, scoring): names and every retrieval metric."""
        return [
            {"victim": victim, "scoring": scoring, **result.metrics()}
            for (victim, scoring), result in self.results.items()
        ]


def dataset_key(dataset: CaptionDataset) -> tuple[str, str]:
    """The (dataset, split) columns a dataset's rows are stored under.

    `world:test-1k[:100]` -> ("world", "test-1k[:100]"); a Karpathy file `flickr30k_test`
    -> ("flickr30k_test", "test").
    """
    name, bracket, limit = dataset.name.partition("[:")
    base, sep, split = name.partition(":")
    return base, (split if sep else "test") + bracket + limit


def _check_retrieval(victim: Victim) -> None:
    if "itc" not in victim.capabilities:
        raise RobustError(
            f"{victim.name} is a {'/'.join(sorted(victim.capabilities))} model without "
            "image-text retrieval; evaluate captioners with `robust caption`"
        )


def retrieval_results(
    victim: Victim,
    dataset: CaptionDataset,
    *,
    batch_size: int = 64,
    k_test: int | None = None,
    progress: Progress | None = None,
) -> dict[str, RetrievalResult]:
    """ITC results for every retrieval victim, plus ITM re-ranked ones for fusion victims."""
    _check_retrieval(victim)
    gallery = encode_gallery(victim, dataset, batch_size=batch_size, progress=progress)
    return encoded_results(
        victim, gallery, gallery, dataset.caption_image, k_test=k_test, progress=progress
    )


def encoded_results(
    victim: Victim,
    images: EncodedGallery,
    texts: EncodedGallery,
    caption_image: np.ndarray,
    *,
    k_test: int | None = None,
    progress: Progress | None = None,
) -> dict[str, RetrievalResult]:
    """`retrieval_results` of `images`' images against `texts`' captions, from encodings."""
    _check_retrieval(victim)
    itc, reranked = rank_encoded(
        victim, images, texts, caption_image, k_test=k_test, progress=progress
    )
    return {ITC: itc} if reranked is None else {ITC: itc, RERANK: reranked}


def evaluate_victims(
    victims: Sequence[str],
    dataset: CaptionDataset,
    run_dir: Path,
    *,
    batch_size: int = 64,
    k_test: int | None = None,
    device: str = "cpu",
    spec: dict | None = None,
    progress: Progress | None = None,
) -> CleanEvaluation:
    """Evaluate each victim clean, writing metrics and per-query ranks to `run_dir`.

    Victims are loaded one at a time, so a large victim is freed before the next one loads.
    Every victim's files are checked first, and the store is opened only once the first
    victim has loaded, so bad input fails before any work and writes nothing.
    """
    for name in victims:  # unknown names and missing weights fail before any evaluation
        check_victim(name)
    progress = ensure_progress(progress)
    dataset_name, split = dataset_key(dataset)
    run_spec = spec or {
        "command": "eval",
        "victims": list(victims),
        "dataset": dataset.name,
        "batch_size": batch_size,
        "k_test": k_test,
    }
    run_dir = Path(run_dir)
    victim = load_victim(victims[0], device=device) if victims else None
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(run_spec, seeds={"world": 0})
        evaluation = CleanEvaluation(run_dir, run_id, dataset_name, split)
        for index, name in enumerate(victims):
            if index > 0:
                victim = load_victim(name, device=device)
            results = retrieval_results(
                victim, dataset, batch_size=batch_size, k_test=k_test, progress=progress
            )
            for scoring, result in results.items():
                keys = {"victim": name, "dataset": dataset_name, "split": split, "target": name}
                for direction, ranks in (("tr", result.tr_ranks), ("ir", result.ir_ranks)):
                    store.write_query_ranks(
                        run_id, direction=direction, ranks=ranks, scoring=scoring, **keys
                    )
                store.write_metrics(
                    run_id,
                    [
                        MetricRow(metric=m, value=v, scoring=scoring, **keys)
                        for m, v in result.metrics().items()
                    ],
                )
                evaluation.results[(name, scoring)] = result
            del victim
    return evaluation
