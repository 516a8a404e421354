"""Sep-Attack: PGD on the image and BERT-Attack on the text, run independently."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from robust.attacks.base import AdvBatch, AttackBatch, MultimodalAttack
from robust.attacks.bert_attack import DEFAULT_MLM, MaskedLM
from robust.attacks.multimodal import MultimodalParams, build_halves, flatten, regroup
from robust.victims.base import Victim


class SepAttack(MultimodalAttack):
    """The SGA paper's separate baseline: KL PGD images, untargeted (KL) BERT-Attack texts.

    Keyword arguments are PGD parameters (eps, step_size, steps, ...) and BERT-Attack
    parameters (max_words, top_k, ...); both halves' objectives are fixed.
    """

    name: ClassVar[str] = "sep_attack"

    def __init__(
        self, victim: Victim, *, mlm: MaskedLM = DEFAULT_MLM, seed: int = 0, **params: Any
    ) -> None:
        super().__init__(victim, seed=seed)
        self.image_attack, self.text_attack, _ = build_halves(
            self.name,
            victim,
            params,
            image_objective="kl",
            text_objective="kl",
            mlm=mlm,
            seed=seed,
        )

    def params(self) -> MultimodalParams:
        return MultimodalParams(self.image_attack.params(), self.text_attack.params(), {})

    def config(self) -> dict[str, Any]:
        return {**super().config(), "mlm": self.text_attack.mlm_name}

    def __call__(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        generator = self.generator(generator)
        images = self.image_attack(batch.images, batch.texts, generator)
        texts, _ = flatten(batch.texts)
        adversarial_texts = self.text_attack(texts, None, generator)
        return AdvBatch(images, regroup(adversarial_texts, batch.texts))
