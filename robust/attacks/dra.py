"""DRA: SGA diversified along the intersection region of the adversarial trajectory
(Gao et al., ECCV 2024), written from the facts in ``shared/research/transfer_2024.md``.

DRA keeps SGA's order (text, image, text) and its pieces: the first text round, the
multi-scale image set with set-level caption guidance, and BERT-Attack. It changes two
things:

- Image: from the second step on, each step draws K weights (current, clean, previous
  iterate) and scores each point of that triangle by a one-step look-ahead: the sign step
  of the single-copy caption loss, taken at the point and applied to the current iterate,
  then that candidate's loss. SGA's multi-scale gradient is taken at the best point and
  applied to the current iterate; the first step is SGA's.
- Text: the final round is guided by `text_ratios` of the clean, final and previous
  adversarial image embeddings, (0.6, 0.2, 0.2) by default; SGA's guide is the final one.

Deliberate differences from the official code:

- Each image picks its own best point; the official code picks one point for the whole
  batch by the batch's mean loss, so an image's result there depends on its batch mates.
- All randomness (the random start, the scale-set noise, the triangle weights) comes from
  the generator passed to `craft`; the official code mixes NumPy and Python's `random`.
- BERT-Attack reads each word's substitutes at the word's own sub-word position, as our
  SGA does; the official DRA code inherits SGA's off-by-one and reads the previous token's
  (word 0 gets `[CLS]`'s predictions).

Defaults are the official code's class defaults: SGA's budget (eps 2/255, 10 steps of
0.5/255), K = 5. Its main table runs at eps 8/255 with 10 steps of 2/255; pass those for
that protocol. With `sampler="current"` and `text_ratios=(0, 1, 0)` DRA is exactly SGA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

import torch

from robust.attacks.base import AttackBatch, AttackConfigError, make_params, project_linf
from robust.attacks.pgd import PGDParams, linf_pgd, set_similarity, stack_caption_sets
from robust.attacks.registry import register_attack
from robust.attacks.sga import SGA
from robust.victims.base import Victim

__all__ = ["DRA", "SAMPLERS", "DRAParams", "TrajectoryPoint", "trajectory_weights"]

Sampler = Literal["dra", "sa_aet", "current"]
SAMPLERS: tuple[str, ...] = ("dra", "sa_aet", "current")
# Candidate weight triples drawn per accepted one; SA-AET's rule accepts about 1 in 11.
_DRAWS_PER_WEIGHT = 32


@dataclass(frozen=True)
class DRAParams:
    """DRA's own hyper-parameters beside SGA's PGD and BERT-Attack ones.

    - `samples`: K, the triangle points scored by a look-ahead at every step after the first.
    - `sampler`: how the (current, clean, previous) weights are drawn, in percent as the
      official code does: ``"dra"`` (mean about 0.49, 0.25, 0.25), ``"sa_aet"`` (only
      current < previous < clean: points near the clean image), ``"current"`` (always
      (1, 0, 0): SGA's gradient point, for ablations).
    - `project_lookahead`: project each look-ahead candidate into the budget before scoring
      it (SA-AET does; DRA does not).
    - `text_ratios`: weights of the clean, final and previous adversarial image embeddings
      that guide the final text round.
    """

    samples: int = 5
    sampler: Sampler = "dra"
    project_lookahead: bool = False
    text_ratios: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise AttackConfigError(f"samples must be a positive integer, got {self.samples!r}")
        if self.sampler not in SAMPLERS:
            raise AttackConfigError(
                f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}"
            )
        if not isinstance(self.project_lookahead, bool):
            raise AttackConfigError(
                f"project_lookahead must be true or false, got {self.project_lookahead!r}"
            )
        ratios = self.text_ratios
        if (
            isinstance(ratios, str | bytes)
            or not isinstance(ratios, tuple | list)
            or len(ratios) != 3
            or any(
                isinstance(r, bool) or not isinstance(r, int | float) or not math.isfinite(r)
                for r in ratios
            )
            or any(r < 0 for r in ratios)
            or sum(ratios) <= 0
        ):
            raise AttackConfigError(
                "text_ratios must be three non-negative numbers (clean, final, previous) "
                f"with a positive sum, got {ratios!r}"
            )
        object.__setattr__(self, "text_ratios", tuple(float(r) for r in ratios))


def trajectory_weights(sampler: str, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` weight rows (current, clean, previous) `[count, 3]`, each summing to 1.

    ``"dra"`` and ``"sa_aet"`` follow the official `rand3Num` in whole percent: current ~
    U{1..100} (99 and 100 become 98 with clean 1), clean ~ U{1..100-current}, previous the
    rest, rejected when 0; ``"sa_aet"`` also rejects all but current < previous < clean.
    Every weight is then in [0.01, 0.98]. Draws come from `generator` only.
    """
    if sampler == "current":
        return torch.tensor([[1.0, 0.0, 0.0]]).repeat(count, 1)
    if sampler not in SAMPLERS:
        raise AttackConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    accepted: list[torch.Tensor] = []
    found = 0
    while found < count:
        uniform = torch.rand(
            (_DRAWS_PER_WEIGHT * count, 2), generator=generator, device=generator.device
        )
        uniform = uniform.cpu().double()
        current = (uniform[:, 0] * 100).floor() + 1
        top = current >= 99
        clean = torch.where(top, 1.0, (uniform[:, 1] * (100 - current)).floor() + 1)
        current = torch.where(top, 98.0, current)
        previous = 100 - current - clean
        keep = previous > 0
        if sampler == "sa_aet":
            keep &= (current < previous) & (previous < clean)
        rows = torch.stack([current, clean, previous], dim=1)[keep]
        accepted.append(rows)
        found += rows.shape[0]
    return (torch.cat(accepted)[:count] / 100).float()


# Maps image embeddings `[K, B, D]` to per-image scores `[K, B]` to maximise.
PointScore = Callable[[torch.Tensor], torch.Tensor]


class TrajectoryPoint:
    """DRA's gradient point for `linf_pgd`: the best of K triangle points by look-ahead.

    It keeps the last iterate it saw before the final one (`previous_iterate`), which
    guides DRA's final text round.
    """

    def __init__(
        self,
        victim: Victim,
        score: PointScore,
        params: DRAParams,
        image: PGDParams,
        generator: torch.Generator,
    ) -> None:
        self.victim = victim
        self.score = score
        self.params = params
        self.image = image
        self.generator = generator
        self.previous_iterate: torch.Tensor | None = None

    def __call__(
        self, step: int, current: torch.Tensor, clean: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        """Where step `step` takes its gradient: the current iterate at step 0, else the
        point whose look-ahead candidate scores highest, per image (ties: the first)."""
        self.previous_iterate = current
        if step == 0:
            return current
        count, samples = current.shape[0], self.params.samples
        weights = trajectory_weights(self.params.sampler, samples, self.generator)
        weights = weights.to(current.device).view(samples, 3, 1, 1, 1, 1)
        points = weights[:, 0] * current + weights[:, 1] * clean + weights[:, 2] * previous
        flat = points.reshape(samples * count, *current.shape[1:])
        with torch.enable_grad():
            flat.requires_grad_(True)
            embeddings = self.victim.encode_image(flat).view(samples, count, -1)
            (gradient,) = torch.autograd.grad(self.score(embeddings).sum(), flat)
        candidates = current + self.image.step_size * gradient.view_as(points).sign()
        if self.params.project_lookahead:
            candidates = project_linf(candidates, clean, self.image.eps)
        with torch.no_grad():
            flat_candidates = candidates.reshape(samples * count, *current.shape[1:])
            scores = self.score(self.victim.encode_image(flat_candidates).view(samples, count, -1))
        best = scores.argmax(dim=0)
        return points[best, torch.arange(count, device=best.device)]


@register_attack
class DRA(SGA):
    """DRA bound to a source victim; SGA's keywords plus `DRAParams` (samples, sampler,
    project_lookahead, text_ratios)."""

    name: ClassVar[str] = "dra"
    ExtraParams: ClassVar[type[DRAParams]] = DRAParams
    extra_params: ClassVar[frozenset[str]] = frozenset(f.name for f in fields(DRAParams))
    defaults: ClassVar[dict[str, Any]] = {**SGA.defaults, **asdict(DRAParams())}

    def __init__(self, victim: Victim, **kwargs: Any) -> None:
        super().__init__(victim, **kwargs)
        self.trajectory_params = make_params(self.name, self.ExtraParams, self.extra)
        self.extra = asdict(self.trajectory_params)

    @classmethod
    def check_extra(cls, extra: dict[str, Any]) -> None:
        make_params(cls.name, cls.ExtraParams, extra)

    def caption_directions(self, texts: torch.Tensor, batch: AttackBatch) -> torch.Tensor:
        """The unit caption embeddings `[T, D]` the image loss compares against (DRA: as
        they are; SA-AET projects them)."""
        return texts

    def attack_images(
        self,
        batch: AttackBatch,
        guide_sets: list[torch.Tensor],
        clean: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SGA's multi-scale steps taken at the look-ahead's best triangle point, and the
        `text_ratios` mix of clean, final and previous adversarial embeddings."""
        victim = self.victim
        self.image_attack.check_images(batch.images)
        image = self.image_attack.params()
        texts, owners = stack_caption_sets(guide_sets, victim.device)
        texts = self.caption_directions(texts, batch)

        def score(embeddings: torch.Tensor) -> torch.Tensor:
            return -set_similarity(embeddings, texts, owners)

        trajectory = TrajectoryPoint(victim, score, self.trajectory_params, image, generator)
        images = linf_pgd(
            victim,
            batch.images,
            lambda embeddings: score(embeddings).sum(),
            image,
            generator,
            gradient_point=trajectory,
        )
        before_final = trajectory.previous_iterate
        if before_final is None:  # an empty batch takes no step
            before_final = images
        with torch.no_grad():
            final = victim.encode_image(images)
            previous = victim.encode_image(before_final)
        clean_ratio, final_ratio, previous_ratio = self.trajectory_params.text_ratios
        guide = clean_ratio * clean + final_ratio * final + previous_ratio * previous
        return images.to(batch.images.device), guide
