"""AnyAttack as a matrix attack: each image of a batch takes the noise of another one.

The targeted kind hands back the adversarial images *captioned with their targets'
captions*, so the matrix's usual retrieval on (adversarial images, returned captions) is
targeted retrieval: a high R@K means the target victim took the image for its target. The
targets are a seeded derangement of the batch (no image is its own target).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from robust.attacks.anyattack import (
    DEFAULT_EPS,
    AnyAttack,
    check_eps,
    load_decoder,
    read_checkpoint,
)
from robust.attacks.base import AdvBatch, Attack, AttackBatch, AttackConfigError, AttackKind
from robust.attacks.registry import register_attack
from robust.victims.base import Victim


@dataclass(frozen=True)
class AnyAttackTargetedParams:
    """The decoder file and the budget it is applied with."""

    decoder: str = ""
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        if not self.decoder:
            raise AttackConfigError(
                "params.decoder is required: a decoder checkpoint, e.g. "
                "robust/zoo/anyattack-world/decoder.pt"
            )
        check_eps(self.eps)


@register_attack
class AnyAttackTargeted(Attack):
    """Targeted noise from a decoder, targets drawn within each batch."""

    name: ClassVar[str] = "anyattack"
    kind: ClassVar[AttackKind] = "targeted"
    Params: ClassVar[type] = AnyAttackTargetedParams

    def __init__(
        self, victim: Victim, *, decoder: str = "", eps: float = DEFAULT_EPS, seed: int = 0
    ) -> None:
        super().__init__(victim, seed=seed, decoder=str(decoder), eps=float(eps))
        self.attack = AnyAttack(victim, load_decoder(decoder).to(victim.device), eps=eps)

    @classmethod
    def check_files(cls, params: Mapping[str, Any], mlm: str | None) -> None:
        """The decoder checkpoint it loads."""
        read_checkpoint(params["decoder"])

    def craft(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        count = batch.images.shape[0]
        if count < 2:
            raise AttackConfigError("anyattack needs batches of at least 2 images (targets)")
        shift = torch.randint(1, count, (1,), generator=self.generator(generator)).item()
        order = torch.roll(torch.arange(count), -int(shift))  # image i targets image order[i]
        targets = batch.images[order]
        adversarial = self.attack.apply(batch.images, targets)
        return AdvBatch(adversarial, tuple(batch.texts[int(i)] for i in order))
