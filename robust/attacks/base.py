"""The attack contract: objects bound to a source victim and hyper-parameters, called on data.

Following the torchattacks habit, an attack is built once (`PGD(victim, eps=2/255)`) and
called on batches. Every attack exposes `config()`, the complete dict of its
hyper-parameters that results store verbatim. Randomness comes only from the explicit
`torch.Generator` passed to a call (or one seeded from the attack's `seed`), never from
global state, so the same seed gives the same adversarial examples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch

from robust.errors import RobustError
from robust.victims.base import Victim

AttackKind = Literal["image", "text", "multimodal", "universal", "targeted"]


class AttackConfigError(RobustError, ValueError):
    """A hyper-parameter outside its valid range (e.g. eps not in (0, 1])."""


@dataclass(frozen=True)
class AttackBatch:
    """Clean inputs of one multimodal attack call: images and each image's captions."""

    images: torch.Tensor
    texts: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if self.images.shape[0] != len(self.texts):
            raise ValueError(
                f"AttackBatch has {self.images.shape[0]} images but {len(self.texts)} caption "
                "groups; give every image its captions"
            )


@dataclass(frozen=True)
class AdvBatch:
    """Adversarial outputs: images at the source resolution and each image's captions."""

    images: torch.Tensor
    texts: tuple[tuple[str, ...], ...]


def check_budget(eps: float, step_size: float, steps: int) -> None:
    """One clear error for an L-inf budget outside its valid range."""
    if not 0 < eps <= 1:
        raise AttackConfigError(f"eps must be in (0, 1] (pixels are in [0, 1]), got {eps}")
    if not 0 < step_size <= 1:
        raise AttackConfigError(f"step_size must be in (0, 1], got {step_size}")
    if int(steps) != steps or steps < 1:
        raise AttackConfigError(f"steps must be a positive integer, got {steps}")


def project_linf(adversarial: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps around `clean`, then onto [0, 1]."""
    return torch.min(torch.max(adversarial, clean - eps), clean + eps).clamp(0.0, 1.0)


class Attack(ABC):
    """Base of every attack: a source victim, a seed and hyper-parameters."""

    name: ClassVar[str] = "attack"
    kind: ClassVar[AttackKind] = "image"

    def __init__(self, victim: Victim, *, seed: int = 0) -> None:
        self.victim = victim
        self.seed = int(seed)

    def generator(self, generator: torch.Generator | None = None) -> torch.Generator:
        """The caller's generator, or a fresh one seeded from this attack's seed."""
        if generator is not None:
            return generator
        return torch.Generator(device="cpu").manual_seed(self.seed)

    @abstractmethod
    def params(self) -> Any:
        """The attack's hyper-parameter dataclass."""

    def config(self) -> dict[str, Any]:
        """Every hyper-parameter plus the attack name, kind, source victim and seed."""
        return {
            "attack": self.name,
            "kind": self.kind,
            "source": self.victim.name,
            "seed": self.seed,
            **asdict(self.params()),
        }


class ImageAttack(Attack):
    """Perturbs images (within an L-inf budget), guided by each image's captions."""

    kind: ClassVar[AttackKind] = "image"

    @abstractmethod
    def __call__(
        self,
        images: torch.Tensor,
        texts_per_image: Sequence[Sequence[str]],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Adversarial images, same shape as `images`, in [0, 1]."""


class TextAttack(Attack):
    """Perturbs captions (a word budget), guided by embeddings to move away from."""

    kind: ClassVar[AttackKind] = "text"

    @abstractmethod
    def __call__(
        self,
        texts: Sequence[str],
        guide_embeddings: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> list[str]:
        """One adversarial caption per input caption, same order."""


class MultimodalAttack(Attack):
    """Perturbs images and captions together (Sep-Attack, Co-Attack, SGA)."""

    kind: ClassVar[AttackKind] = "multimodal"
    # keywords of its own beside the PGD and BERT-Attack ones (e.g. Co-Attack's alpha), so
    # specs can reject typos before anything runs
    extra_params: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def __call__(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        """Adversarial images and captions for the batch."""
