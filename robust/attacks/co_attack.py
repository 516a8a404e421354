"""Co-Attack (embedding mode): attack the text first, then the image towards collaborating
with the adversarial text (Zhang et al. 2022), reimplemented from the paper's description."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from robust.attacks.base import AdvBatch, AttackBatch, AttackConfigError, MultimodalAttack
from robust.attacks.bert_attack import DEFAULT_MLM, MaskedLM
from robust.attacks.multimodal import (
    MultimodalParams,
    build_halves,
    flatten,
    per_image,
    regroup,
)
from robust.attacks.pgd import embedding_kl, linf_pgd
from robust.victims.base import Victim

DEFAULT_ALPHA = 3.0


class CoAttack(MultimodalAttack):
    """BERT-Attack the captions, then PGD on the image maximising

    KL(clean image emb || adv image emb) + alpha * KL(adv image emb || adv text emb),

    summed over each image's adversarial captions. The reference code attacks every
    (image, caption) pair separately and keeps the last image written; using the whole
    caption set once per image is our deliberate change (same objective, no arbitrary
    last-write-wins).
    """

    name: ClassVar[str] = "co_attack"
    extra_params: ClassVar[frozenset[str]] = frozenset({"alpha"})

    def __init__(
        self, victim: Victim, *, mlm: MaskedLM = DEFAULT_MLM, seed: int = 0, **params: Any
    ) -> None:
        super().__init__(victim, seed=seed)
        self.image_attack, self.text_attack, extra = build_halves(
            self.name,
            victim,
            params,
            image_objective="kl",
            text_objective="kl",
            mlm=mlm,
            seed=seed,
            extra_names=self.extra_params,
        )
        self.alpha = float(extra.get("alpha", DEFAULT_ALPHA))
        if not self.alpha >= 0:
            raise AttackConfigError(f"alpha must be a non-negative number, got {self.alpha}")

    def params(self) -> MultimodalParams:
        return MultimodalParams(
            self.image_attack.params(), self.text_attack.params(), {"alpha": self.alpha}
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "mlm": self.text_attack.mlm_name}

    def __call__(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        generator = self.generator(generator)
        victim = self.victim
        texts, owners = flatten(batch.texts)
        adversarial_texts = self.text_attack(texts, None, generator)
        count = batch.images.shape[0]
        with torch.no_grad():
            clean = victim.encode_image(batch.images.to(victim.device, torch.float32))
            text_embeddings = victim.encode_text(adversarial_texts)
        text_sets = per_image(text_embeddings, owners, count)
        owners_tensor = torch.as_tensor(owners, device=victim.device)
        alpha = self.alpha

        def objective(embeddings: torch.Tensor) -> torch.Tensor:
            adversarial = embeddings[0]
            image_term = embedding_kl(clean, adversarial).sum()
            paired = adversarial[owners_tensor]  # one row per adversarial caption
            text_term = embedding_kl(paired, torch.cat(text_sets)).sum()
            return image_term + alpha * text_term

        images = linf_pgd(victim, batch.images, objective, self.image_attack.params(), generator)
        return AdvBatch(images.to(batch.images.device), regroup(adversarial_texts, batch.texts))
