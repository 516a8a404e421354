"""SA-AET: DRA with three changes (Jia et al., arXiv 2411.02669), written from the facts in
``shared/research/transfer_2024.md``.

1. Ordered triangle weights: only current < previous < clean are kept (`sampler="sa_aet"`),
   so gradients are taken near the clean image (mean weights about 0.12, 0.60, 0.28).
2. Each look-ahead candidate is projected into the budget before it is scored.
3. Every image loss (first step, look-ahead gradient and score, multi-scale step) compares
   image and caption embeddings after projecting away the dominant direction(s) of a sample
   of captions: ``-sum <f, P g>`` with ``P = I - U^T U``, U the top `removed_directions`
   right singular vectors of the sample's unit embeddings (uncentred), no renormalisation.
   Since P is a symmetric projection, ``<P f, P g> = <f, P g>``: only the captions are
   projected. The text attack is not projected.

The caption sample (`corpus`). The official evaluation draws 40% of the *test* captions,
those of the attacked images included, and re-encodes them and runs SVDs at every loss
call. Here the sample is a parameter:

- ``"batch"`` (the default): the clean captions of the batch under attack, which the
  attacker holds anyway; nothing outside the batch is read. Its direction follows the
  batch, so it moves a little with `batch_size` and with which images share a batch.
- a dataset (``world:val``, ``karpathy:ROOT:JSON`` of a held-out split): the captions of
  its first `corpus_limit` images (400 images, about the official 2000 captions), encoded
  once per attack object (one run cell) and reduced by one SVD; the direction is then the
  same for every batch. Never name the split under attack: that is the official peek.

The choice matters more for some sources than others: on the toy zoo (batches of 8 world
test images against 400 val images) the batch's direction agrees with the corpus's at a
mean |cos| of 0.90 for toy-albef but only 0.49 for toy-clip-vit, whose captions share
less of one direction (20% of their energy against 43%).

On Flickr-sized embeddings (D = 256 or 512) the official code's 2000-caption sample gives
``P = I - u1 u1^T``; with the few dozen captions of one batch (N < D) its reduced SVD would
remove everything outside the captions' span, so P is defined here as the removal of the
top `removed_directions` directions whatever N is (0 turns the projection off).

BERT-Attack reads each word's substitutes at the word's own sub-word position; the official
SA-AET code inherits SGA's off-by-one (see `robust.attacks.dra`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from robust.attacks.base import AttackBatch, AttackConfigError, flatten
from robust.attacks.dra import DRA, DRAParams, Sampler
from robust.attacks.registry import register_attack
from robust.attacks.sga import SGA
from robust.data import DATASET_FORMS
from robust.data.world import WORLD_VERSIONS
from robust.victims.base import Victim

__all__ = ["SAAET", "SAAETParams", "dominant_directions", "project_out"]

BATCH_CORPUS = "batch"
CORPUS_ENCODE_BATCH = 256


@dataclass(frozen=True)
class SAAETParams(DRAParams):
    """DRA's parameters with SA-AET's defaults, plus its caption projection.

    - `removed_directions`: how many dominant caption directions the image loss ignores
      (1, as the official code; 0 = off).
    - `corpus`: where the caption sample comes from: ``"batch"`` or a dataset spec.
    - `corpus_limit`: images of a dataset corpus whose captions form the sample.
    """

    sampler: Sampler = "sa_aet"
    project_lookahead: bool = True
    removed_directions: int = 1
    corpus: str = BATCH_CORPUS
    corpus_limit: int = 400

    def __post_init__(self) -> None:
        super().__post_init__()
        removed = self.removed_directions
        if isinstance(removed, bool) or not isinstance(removed, int) or removed < 0:
            raise AttackConfigError(
                f"removed_directions must be a whole number >= 0 (0 = off), got {removed!r}"
            )
        corpus = self.corpus
        if not isinstance(corpus, str) or (
            corpus != BATCH_CORPUS and corpus.partition(":")[0] not in (*WORLD_VERSIONS, "karpathy")
        ):
            raise AttackConfigError(
                f"corpus must be 'batch' or a held-out dataset ({DATASET_FORMS}), got {corpus!r}"
            )
        limit = self.corpus_limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise AttackConfigError(f"corpus_limit must be a positive integer, got {limit!r}")


def dominant_directions(embeddings: torch.Tensor, count: int) -> torch.Tensor:
    """The top `count` right singular vectors `[count, D]` of `embeddings` `[N, D]`
    (uncentred: the directions captions share most), orthonormal rows."""
    rows, width = embeddings.shape
    if count > min(rows, width):
        raise AttackConfigError(
            f"removed_directions={count} needs at least that many captions and embedding "
            f"dimensions; the sample has {rows} captions of {width} dimensions"
        )
    _, _, right = torch.linalg.svd(embeddings.double(), full_matrices=False)
    return right[:count].to(embeddings.dtype)


def project_out(vectors: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """`vectors` `[T, D]` with their components along the orthonormal `directions`
    `[k, D]` removed (P v with P = I - U^T U; no renormalisation)."""
    return vectors - (vectors @ directions.T) @ directions


@register_attack
class SAAET(DRA):
    """SA-AET bound to a source victim; SGA's keywords plus `SAAETParams`."""

    name: ClassVar[str] = "sa_aet"
    ExtraParams: ClassVar[type[DRAParams]] = SAAETParams
    extra_params: ClassVar[frozenset[str]] = frozenset(f.name for f in fields(SAAETParams))
    defaults: ClassVar[dict[str, Any]] = {**SGA.defaults, **asdict(SAAETParams())}

    def __init__(self, victim: Victim, **kwargs: Any) -> None:
        super().__init__(victim, **kwargs)
        self.trajectory_params: SAAETParams
        self._corpus_directions: torch.Tensor | None = None

    def removed_directions_for(self, batch: AttackBatch) -> torch.Tensor:
        """The caption directions `[k, D]` the image loss ignores for this batch."""
        params = self.trajectory_params
        if params.corpus == BATCH_CORPUS:
            texts, _ = flatten(batch.texts)
            return dominant_directions(self._unit_text(texts), params.removed_directions)
        if self._corpus_directions is None:
            from robust.data import load_dataset

            corpus = load_dataset(params.corpus, limit=params.corpus_limit)
            embeddings = self._unit_text(corpus.captions)
            self._corpus_directions = dominant_directions(embeddings, params.removed_directions)
        return self._corpus_directions

    def caption_directions(self, texts: torch.Tensor, batch: AttackBatch) -> torch.Tensor:
        """The guide captions with the sample's dominant directions projected away."""
        if self.trajectory_params.removed_directions == 0:
            return texts
        return project_out(texts, self.removed_directions_for(batch).to(texts))

    def _unit_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit caption embeddings `[N, D]` under the source, encoded in chunks."""
        with torch.no_grad():
            chunks = [
                self.victim.encode_text(list(texts[start : start + CORPUS_ENCODE_BATCH])).float()
                for start in range(0, len(texts), CORPUS_ENCODE_BATCH)
            ]
        return F.normalize(torch.cat(chunks), dim=-1)
