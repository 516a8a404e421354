"""Sep-Attack: PGD on the image and BERT-Attack on the text, run independently."""

from __future__ import annotations

from typing import ClassVar

import torch

from robust.attacks.base import AdvBatch, AttackBatch, flatten, regroup
from robust.attacks.multimodal import TwoHalfAttack
from robust.attacks.registry import register_attack


@register_attack
class SepAttack(TwoHalfAttack):
    """The SGA paper's separate baseline: KL PGD images, untargeted (KL) BERT-Attack texts.

    Keyword arguments are PGD parameters (eps, step_size, steps, ...) and BERT-Attack
    parameters (max_words, top_k, ...); both halves' objectives are fixed.
    """

    name: ClassVar[str] = "sep_attack"

    def craft(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        generator = self.generator(generator)
        images = self.image_attack(batch.images, batch.texts, generator)
        texts, _ = flatten(batch.texts)
        adversarial_texts = self.text_attack(texts, None, generator)
        return AdvBatch(images, regroup(adversarial_texts, batch.texts))
