"""torchattacks interop: a victim as a classifier over a caption gallery.

RobustVLM's trick: with a fixed text gallery, CLIP-style similarity becomes classifier
logits (`scale * image_emb @ text_emb.T`), so any torchattacks image attack (PGD, MIFGSM,
APGD, ...) can run unchanged against a VLP victim. torchattacks stays an optional extra
(`pip install vlp-robust[torchattacks]`): it pins old versions of its own dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robust.attacks.base import AttackConfigError, ImageAttack
from robust.seeding import global_generator_seeded
from robust.victims.base import Victim

DEFAULT_LOGIT_SCALE = 100.0


class GalleryClassifier(nn.Module):
    """Logits of pixel images `[B,3,H,W]` over a fixed caption gallery, `[B, len(gallery)]`."""

    def __init__(
        self, victim: Victim, text_gallery: Sequence[str], logit_scale: float | None = None
    ) -> None:
        super().__init__()
        if len(text_gallery) == 0:
            raise ValueError("the caption gallery is empty; give at least one caption")
        self.victim = victim
        self.logit_scale = float(
            logit_scale
            if logit_scale is not None
            else getattr(victim, "logit_scale", None) or DEFAULT_LOGIT_SCALE
        )
        with torch.no_grad():
            self.register_buffer("text_features", victim.encode_text(list(text_gallery)))
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.victim.encode_image(images) @ self.text_features.T


def as_classifier(
    victim: Victim, text_gallery: Sequence[str], *, logit_scale: float | None = None
) -> GalleryClassifier:
    """Turn a victim into logits over `text_gallery` so torchattacks attacks apply to it."""
    return GalleryClassifier(victim, text_gallery, logit_scale)


@dataclass(frozen=True)
class TorchattacksParams:
    """Which torchattacks class to run (e.g. "PGD", "MIFGSM", "APGD") and its arguments.

    Specs name the class with the `attack` keyword: `{"attack": "MIFGSM", "eps": 8/255}`.
    """

    attack_class: str = "PGD"
    arguments: dict[str, Any] = field(default_factory=dict)


class TorchattacksAttack(ImageAttack):
    """Any torchattacks image attack as a source attack in the matrix.

    Per batch, the gallery is the batch's captions and image i's label is the index of its
    first caption, so the attack pushes each image away from its own captions.
    """

    name: ClassVar[str] = "torchattacks"

    def __init__(self, victim: Victim, *, seed: int = 0, attack: str = "PGD", **arguments):
        super().__init__(victim, seed=seed)
        self._params = TorchattacksParams(attack, dict(arguments))
        self._attack_class = torchattacks_class(attack)

    def params(self) -> TorchattacksParams:
        return self._params

    def __call__(
        self,
        images: torch.Tensor,
        texts_per_image: Sequence[Sequence[str]],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        gallery = [text for group in texts_per_image for text in group]
        first_caption = torch.tensor(
            [sum(len(group) for group in texts_per_image[:i]) for i in range(len(texts_per_image))]
        )
        classifier = as_classifier(self.victim, gallery)
        attack = self._attack_class(classifier, **self._params.arguments)
        # torchattacks draws from torch's global generator; seed it from ours for determinism
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator(generator)))
        with global_generator_seeded(seed, self.victim.device):
            adversarial = attack(
                images.to(self.victim.device), first_caption.to(self.victim.device)
            )
        return adversarial.detach().clamp(0, 1).to(images.device)


def torchattacks_class(name: str) -> type:
    """The torchattacks class `name`, or one clear error (package missing / unknown name)."""
    try:
        module = importlib.import_module("torchattacks")
    except ImportError:
        raise AttackConfigError(
            "torchattacks is not installed; pip install 'vlp-robust[torchattacks]'"
        ) from None
    attack_class = getattr(module, name, None)
    if not isinstance(attack_class, type):
        raise AttackConfigError(f"torchattacks has no attack {name!r}")
    return attack_class
