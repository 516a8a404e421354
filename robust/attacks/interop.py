"""torchattacks interop: a victim as a classifier over text embeddings.

RobustVLM's trick: with fixed class embeddings, CLIP-style similarity becomes classifier
logits (`scale * image_emb @ class_emb.T`), so any torchattacks image attack (PGD, MIFGSM,
APGD, ...) runs unchanged against a VLP victim. The classes are whatever the caller needs:
single captions (`as_classifier`), each image's caption set (the matrix's `torchattacks`
kind) or prompt-ensembled class names (zero-shot classification, `robust.eval.zeroshot`).

torchattacks 3.5.1 declares `requests~=2.25.1`, which cannot coexist with the suite's
pinned requests, and never imports it; `make` installs it with `--no-deps` (README).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robust.attacks.base import AttackConfigError, ImageAttack
from robust.attacks.registry import register_attack
from robust.seeding import global_generator_seeded
from robust.victims.base import Victim

DEFAULT_LOGIT_SCALE = 100.0
TORCHATTACKS_INSTALL = "pip install --no-deps torchattacks==3.5.1 (see the README)"


def victim_logit_scale(victim: Victim, logit_scale: float | None = None) -> float:
    """The given scale, else the victim's own (CLIP's learned temperature), else 100."""
    if logit_scale is not None:
        return float(logit_scale)
    return float(getattr(victim, "logit_scale", None) or DEFAULT_LOGIT_SCALE)


class EmbeddingClassifier(nn.Module):
    """Logits of pixel images `[B,3,H,W]` over fixed unit class embeddings `[C, D]`."""

    def __init__(
        self, victim: Victim, class_embeddings: torch.Tensor, logit_scale: float | None = None
    ) -> None:
        super().__init__()
        if class_embeddings.ndim != 2 or class_embeddings.shape[0] == 0:
            raise ValueError("the classifier needs at least one class embedding [C, D]")
        self.victim = victim
        self.logit_scale = victim_logit_scale(victim, logit_scale)
        self.register_buffer("text_features", class_embeddings.detach())
        self.eval()

    @property
    def num_classes(self) -> int:
        return int(self.text_features.shape[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.victim.encode_image(images).float()
        return self.logit_scale * features @ self.text_features.float().T


class GalleryClassifier(EmbeddingClassifier):
    """One class per caption of a fixed gallery: `[B, len(gallery)]` logits."""

    def __init__(
        self, victim: Victim, text_gallery: Sequence[str], logit_scale: float | None = None
    ) -> None:
        if len(text_gallery) == 0:
            raise ValueError("the caption gallery is empty; give at least one caption")
        with torch.no_grad():
            embeddings = victim.encode_text(list(text_gallery))
        super().__init__(victim, embeddings, logit_scale)


class CaptionSetClassifier(GalleryClassifier):
    """One class per caption set: class j's logit is image-to-caption similarity, maximised
    over set j's captions.

    With the max, the classifier is right on an image exactly when its best-matching caption
    among all sets is one of its own, i.e. when text retrieval R@1 over that gallery is
    right (the mean would score a different question).
    """

    def __init__(
        self,
        victim: Victim,
        caption_sets: Sequence[Sequence[str]],
        logit_scale: float | None = None,
    ) -> None:
        sizes = [len(captions) for captions in caption_sets]
        if not sizes or min(sizes) == 0:
            raise ValueError("every caption set needs at least one caption")
        super().__init__(
            victim, [text for captions in caption_sets for text in captions], logit_scale
        )
        owners = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        self.register_buffer("membership", owners[None, :] == torch.arange(len(sizes))[:, None])

    @property
    def num_classes(self) -> int:
        return int(self.membership.shape[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        per_caption = super().forward(images)  # [B, T]
        outside = ~self.membership.to(per_caption.device)  # [C, T]
        return per_caption[:, None, :].masked_fill(outside, -torch.inf).amax(dim=-1)


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
    labels: str = "caption-set-max"


@register_attack
class TorchattacksAttack(ImageAttack):
    """Any torchattacks image attack as a source attack in the matrix.

    Per batch, each image is one class of a `CaptionSetClassifier` over the batch's caption
    sets (its logit: the best similarity over the image's own captions) and is labelled with
    its own class, so the attack succeeds exactly where it breaks TR R@1 within the batch.
    """

    name: ClassVar[str] = "torchattacks"
    Params: ClassVar[type] = TorchattacksParams

    def __init__(self, victim: Victim, *, seed: int = 0, attack: str = "PGD", **arguments):
        super().__init__(victim, seed=seed, attack=attack, **arguments)
        self._params: TorchattacksParams
        self._attack_class = torchattacks_class(attack)

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> TorchattacksParams:
        """`attack` names the torchattacks class; every other key is one of its arguments."""
        arguments = dict(params)
        attack = arguments.pop("attack", "PGD")
        if not isinstance(attack, str) or not attack:
            raise AttackConfigError(
                f"torchattacks: attack must name a torchattacks class such as 'PGD' or "
                f"'MIFGSM', got {attack!r}"
            )
        return TorchattacksParams(attack, arguments)

    def __call__(
        self,
        images: torch.Tensor,
        texts_per_image: Sequence[Sequence[str]],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        classifier = CaptionSetClassifier(self.victim, texts_per_image)
        own_set = torch.arange(len(texts_per_image), device=self.victim.device)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator(generator)))
        adversarial = run_torchattacks(
            self._attack_class(classifier, **self._params.arguments),
            images.to(self.victim.device),
            own_set,
            seed,
        )
        return adversarial.clamp(0, 1).to(images.device)


def run_torchattacks(
    attack: Any, images: torch.Tensor, labels: torch.Tensor, seed: int
) -> torch.Tensor:
    """Call a torchattacks attack with torch's global generator seeded from `seed` for the
    call only (torchattacks draws from it and takes no generator)."""
    with global_generator_seeded(seed, images.device):
        return attack(images, labels).detach()


def torchattacks_class(name: str) -> type:
    """The torchattacks class `name`, or one clear error (package missing / unknown name)."""
    try:
        module = importlib.import_module("torchattacks")
    except ImportError:
        raise AttackConfigError(f"torchattacks is not installed; {TORCHATTACKS_INSTALL}") from None
    attack_class = getattr(module, name, None)
    if not isinstance(attack_class, type):
        raise AttackConfigError(f"torchattacks has no attack {name!r}")
    return attack_class
