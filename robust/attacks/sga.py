"""SGA, the Set-level Guidance Attack (Lu et al., ICCV 2023), as its authors' code runs it.

Text -> image -> text: captions are first attacked guided by their clean images; the image
is then attacked away from the *set* of those adversarial captions, over a set of rescaled
copies (scales {0.5, 0.75, 1.25, 1.5}, each with fresh N(0, 0.05^2) noise); finally the
original captions are attacked again, guided by the adversarial image. The first round's
captions are only a guide and are not returned.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from robust.attacks.base import AdvBatch, AttackBatch, flatten, regroup
from robust.attacks.multimodal import TwoHalfAttack, per_image
from robust.attacks.registry import register_attack

SGA_SCALES = (0.5, 0.75, 1.25, 1.5)
SGA_NOISE_STD = 0.05


@register_attack
class SGA(TwoHalfAttack):
    """SGA bound to a source victim; defaults eps 2/255, 10 steps of 0.5/255, 1 word.

    Keyword arguments are PGD parameters (eps, step_size, steps, scales, noise_std, ...)
    and BERT-Attack parameters (max_words, top_k, ...).
    """

    name: ClassVar[str] = "sga"
    image_objective: ClassVar[str] = "text_cosine"
    text_objective: ClassVar[str] = "guide"
    defaults: ClassVar[dict[str, Any]] = {"scales": SGA_SCALES, "noise_std": SGA_NOISE_STD}

    def craft(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        generator = self.generator(generator)
        victim = self.victim
        count = batch.images.shape[0]
        texts, owners = flatten(batch.texts)
        owner_index = torch.as_tensor(owners, device=victim.device)
        with torch.no_grad():
            clean = victim.encode_image(batch.images.to(victim.device, torch.float32))
        guide_texts = self.text_attack(texts, clean[owner_index], generator)
        with torch.no_grad():
            guide_embeddings = victim.encode_text(guide_texts)
        images, final_guide = self.attack_images(
            batch, per_image(guide_embeddings, owners, count), clean, generator
        )
        final_texts = self.text_attack(texts, final_guide[owner_index], generator)
        return AdvBatch(images, regroup(final_texts, batch.texts))

    def attack_images(
        self,
        batch: AttackBatch,
        guide_sets: list[torch.Tensor],
        clean: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The adversarial images, pushed away from each image's guide captions `[n_i, D]`,
        and the image embeddings `[B, D]` that guide the final text round.

        SGA's guide is the adversarial image's own embedding; `clean` holds the clean
        images' embeddings, for attacks that mix them in (DRA).
        """
        images = self.image_attack(batch.images, batch.texts, generator, text_embeddings=guide_sets)
        with torch.no_grad():
            adversarial = self.victim.encode_image(images.to(self.victim.device, torch.float32))
        return images, adversarial
