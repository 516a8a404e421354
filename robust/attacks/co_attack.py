"""Co-Attack (embedding mode): attack the text first, then the image towards collaborating
with the adversarial text (Zhang et al. 2022), reimplemented from the paper's description."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from robust.attacks.base import AdvBatch, AttackBatch, AttackConfigError, flatten, regroup
from robust.attacks.multimodal import TwoHalfAttack, per_image
from robust.attacks.pgd import embedding_kl, linf_pgd
from robust.attacks.registry import register_attack
from robust.victims.base import Victim

DEFAULT_ALPHA = 3.0


@register_attack
class CoAttack(TwoHalfAttack):
    """BERT-Attack the captions, then PGD on the image maximising

    KL(clean image emb || adv image emb) + alpha * KL(adv image emb || adv text emb),

    summed over each image's adversarial captions. The reference code attacks every
    (image, caption) pair separately and keeps the last image written; using the whole
    caption set once per image is our deliberate change (same objective, no arbitrary
    last-write-wins).
    """

    name: ClassVar[str] = "co_attack"
    extra_params: ClassVar[frozenset[str]] = frozenset({"alpha"})
    defaults: ClassVar[dict[str, Any]] = {"alpha": DEFAULT_ALPHA}

    def __init__(self, victim: Victim, **kwargs: Any) -> None:
        super().__init__(victim, **kwargs)
        self.alpha = float(self.extra["alpha"])

    @classmethod
    def check_extra(cls, extra: dict[str, Any]) -> None:
        alpha = extra["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha >= 0:
            raise AttackConfigError(f"alpha must be a non-negative number, got {alpha!r}")

    def craft(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
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
