"""The matrix's side of the results store: completeness checks, row writes, clean look-ups.

Row dialect (that of `robust.harness.store`): every row has `victim` = `target` = the
evaluated target, `source` = the victim whose resolution (and, for adversarial rows,
gradients) was used. Clean rows have no attack and no seed. Adversarial rows carry `attack` =
the attack label, `seed` = the attack seed, R@K on the adversarial data, and both ASR
conventions (`{tr,ir}_asr_r{K}` SGA, `{tr,ir}_drop_r{K}` Co-Attack). Fusion targets get "itc"
and "rerank" rows; `robust.harness.results` reads them back into the headline tables. A
multimodal attack's rows also carry every metric scored on its modality parts, named by
`robust.harness.results.part_metric` (`tr_asr_r1_image_only`), in the same cell; the ASR
of a part counts against the same clean queries as the attack's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from robust.errors import RobustError
from robust.eval.retrieval import RetrievalResult, attack_success
from robust.harness.executors import EvalCell
from robust.harness.results import part_metric
from robust.harness.store import ABSENT, MetricRow, ResultStore

__all__ = ["MatrixWriter"]

CLEAN_METRICS: Final[tuple[str, ...]] = ("tr_r1", "ir_r1")


class MatrixWriter:
    """The driver's side of the store: completeness checks, row writes, clean look-ups.

    Cells name victims as the runner knows them; `defended` maps the defense axis's derived
    names (`robust.harness.defense_axis`) to (plain victim name, `defense` column), so a
    defended cell's rows carry the plain names and the defense in its own column. A defended
    target's clean rows also carry the defense's clean cost (`<metric>_cost`).
    """

    def __init__(
        self,
        store: ResultStore,
        run_id: int,
        dataset: str,
        split: str,
        *,
        defended: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.dataset = dataset
        self.split = split
        self.defended = dict(defended or {})

    def _keys(
        self, target: str, source: str | None, label: str | None = None, seed: int | None = None
    ) -> dict[str, Any]:
        """Row keys of a cell; a source crafted through a defense sets the defense column."""
        plain_target, defense = self.defended.get(target, (target, None))
        plain_source, source_defense = self.defended.get(source, (source, defense))
        return {
            "victim": plain_target,
            "dataset": self.dataset,
            "split": self.split,
            "attack": label,
            "seed": seed,
            "source": plain_source,
            "target": plain_target,
            "defense": source_defense,
        }

    def _cell_keys(self, cell: EvalCell) -> dict[str, Any]:
        return self._keys(cell.target, cell.source, cell.attack_label, cell.seed)

    def _clean_metric_names(self, target: str) -> tuple[str, ...]:
        if target not in self.defended:
            return CLEAN_METRICS
        return (*CLEAN_METRICS, *(f"{metric}_cost" for metric in CLEAN_METRICS))

    def has_clean(self, target: str, source: str) -> bool:
        keys = self._keys(target, source)
        wanted = self._clean_metric_names(target)
        return self.store.has_metrics(self.run_id, **keys, metric_names=wanted)

    def has_adversarial(self, cell: EvalCell) -> bool:
        keys = self._cell_keys(cell)
        return self.store.has_metrics(self.run_id, **keys, metric_names=("tr_asr_r1", "ir_asr_r1"))

    def _ranks(self, keys: dict[str, Any], results: Mapping[str, RetrievalResult]) -> None:
        for scoring, result in results.items():
            for direction, ranks in (("tr", result.tr_ranks), ("ir", result.ir_ranks)):
                self.store.write_query_ranks(
                    self.run_id, direction=direction, ranks=ranks, scoring=scoring, **keys
                )

    def write_clean(
        self,
        target: str,
        sources: Sequence[str],
        results: dict[str, RetrievalResult],
        undefended: Mapping[str, dict[str, RetrievalResult]] | None = None,
    ) -> None:
        """Clean rows for every source sharing this preprocessing, in one transaction; with
        `undefended` (a defended target's undefended baseline per source), each metric's
        clean cost too (undefended minus defended, so positive = what the defense costs)."""
        rows = []
        for source in sources:
            keys = self._keys(target, source)
            self._ranks(keys, results)
            for scoring, result in results.items():
                baseline = None if undefended is None else undefended[source][scoring].metrics()
                for metric, value in result.metrics().items():
                    rows.append(MetricRow(metric=metric, value=value, scoring=scoring, **keys))
                    if baseline is not None:
                        cost = baseline[metric] - value
                        rows.append(
                            MetricRow(metric=f"{metric}_cost", value=cost, scoring=scoring, **keys)
                        )
        self.store.write_metrics(self.run_id, rows)

    def read_clean(self, target: str, source: str) -> dict[str, RetrievalResult]:
        """A stored clean baseline, rebuilt from its per-query ranks."""
        keys = self._keys(target, source)
        found = self.store.metrics(
            self.run_id,
            **{**keys, "attack": ABSENT, "seed": ABSENT, "defense": keys["defense"] or ABSENT},
            metric="tr_r1",
        )
        results = {}
        for row in found:
            ranks = {
                direction: self.store.query_ranks(
                    self.run_id, direction=direction, scoring=row.scoring, **keys
                )
                for direction in ("tr", "ir")
            }
            results[row.scoring] = RetrievalResult(tr_ranks=ranks["tr"], ir_ranks=ranks["ir"])
        return results

    def write_adversarial(
        self,
        cell: EvalCell,
        clean: dict[str, RetrievalResult],
        results: dict[str, RetrievalResult],
        parts: Mapping[str, Mapping[str, RetrievalResult]] | None = None,
    ) -> None:
        """R@K on adversarial data and both ASR conventions, and the same for each modality
        part in `parts` (part -> scoring -> result), all against this run's clean baseline of
        the target at the source's preprocessing; the metrics write is the commit."""
        scores = {}
        for scoring, result in results.items():
            if scoring not in clean:
                raise RobustError(
                    f"no clean {scoring} baseline for {cell.target} at {cell.source}'s "
                    "resolution; delete the run directory and start again"
                )
            scores[scoring] = {**result.metrics(), **attack_success(clean[scoring], result)}
            for part, part_results in (parts or {}).items():
                scored = {**part_results[scoring].metrics()}
                scored |= attack_success(clean[scoring], part_results[scoring])
                scores[scoring] |= {
                    part_metric(name, part): value for name, value in scored.items()
                }
        self.write_scores(cell.target, cell.source, cell.attack_label, cell.seed, scores, results)

    def write_scores(
        self,
        target: str,
        source: str | None,
        label: str | None,
        seed: int | None,
        scores: Mapping[str, Mapping[str, float]],
        ranks: Mapping[str, RetrievalResult],
    ) -> None:
        """One cell's rows already scored (scoring -> metric -> value) and its retrieval's
        per-query ranks; the metrics write is the commit.

        Experiments score their own tasks (`robust.harness.patch`: labels, captions, the
        unoccluded subset) and write them here in the matrix's dialect; a clean cell
        evaluated at the target's own geometry has no source.
        """
        keys = self._keys(target, source, label, seed)
        self._ranks(keys, ranks)
        rows = [
            MetricRow(metric=metric, value=value, scoring=scoring, **keys)
            for scoring, values in scores.items()
            for metric, value in values.items()
        ]
        self.store.write_metrics(self.run_id, rows)
