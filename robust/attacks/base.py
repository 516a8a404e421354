"""The attack contract: objects bound to a source victim and hyper-parameters, called on data.

Following the torchattacks habit, an attack is built once (`PGD(victim, eps=2/255)`) and
called on batches. Every caller (harness, CLI, benchmarks) uses one call,
`attack.craft(AttackBatch, generator) -> AdvBatch`; image, text and universal attacks adapt
their own per-kind method to it in their base classes, so no caller switches on a kind.
Every attack exposes `config()`, the complete dict of its hyper-parameters that results
store verbatim. Randomness comes only from the explicit `torch.Generator` passed to a call
(or one seeded from the attack's `seed`), never from global state, so the same seed gives
the same adversarial examples.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch

from robust.errors import RobustError
from robust.victims.base import Victim

if TYPE_CHECKING:
    from robust.data.dataset import CaptionDataset
    from robust.progress import Progress

# The kinds of attack, stored in every config; each base class below fixes one.
AttackKind = Literal["image", "text", "multimodal", "universal", "targeted"]
ParamsType = TypeVar("ParamsType")


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


def make_params(
    attack_name: str, params_class: type[ParamsType], params: Mapping[str, Any]
) -> ParamsType:
    """`params_class(**params)`, with unknown keys and out-of-range values as one
    `AttackConfigError` line that names the attack."""
    known = {item.name for item in fields(params_class)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise AttackConfigError(
            f"{attack_name} has no parameter {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    try:
        return params_class(**params)
    except (TypeError, ValueError) as error:
        raise AttackConfigError(f"{attack_name}: {error}") from None


def flatten(groups: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """All captions in one list, plus the image index each came from."""
    texts = [text for group in groups for text in group]
    owners = [index for index, group in enumerate(groups) for _ in group]
    return texts, owners


def regroup(texts: Sequence[str], groups: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], ...]:
    """Put a flat caption list back into the shape of `groups`."""
    result, start = [], 0
    for group in groups:
        result.append(tuple(texts[start : start + len(group)]))
        start += len(group)
    return tuple(result)


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
    """Base of every attack: a source victim, a seed and hyper-parameters.

    A subclass states its `name` (the registry key), its `Params` dataclass (whose
    construction validates ranges) and whether it loads a masked LM (`needs_mlm`), so specs
    check parameters and files by asking the class before any model loads.
    """

    name: ClassVar[str] = "attack"
    kind: ClassVar[AttackKind]
    Params: ClassVar[type]
    needs_mlm: ClassVar[bool] = False

    def __init__(self, victim: Victim, *, seed: int = 0, **params: Any) -> None:
        self.victim = victim
        self.seed = int(seed)
        self._params = self.validate_params(params)

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> Any:
        """The `Params` built from a spec's params dict; bad ones are one AttackConfigError."""
        return make_params(cls.name, cls.Params, params)

    @classmethod
    def check_files(cls, params: Mapping[str, Any], mlm: str | None) -> None:
        """Raise the error building the attack would for a file it reads, without loading it
        (runs call this before any work). Attacks that read files override it."""
        return None

    def generator(self, generator: torch.Generator | None = None) -> torch.Generator:
        """The caller's generator, or a fresh one seeded from this attack's seed."""
        if generator is not None:
            return generator
        return torch.Generator(device="cpu").manual_seed(self.seed)

    def params(self) -> Any:
        """The attack's hyper-parameters, as its `Params` dataclass validated them."""
        return self._params

    @abstractmethod
    def craft(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        """Adversarial images (at the input's resolution) and one caption per input caption,
        per image; the call every caller uses."""

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

    def craft(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        """The attacked images with the clean captions."""
        return AdvBatch(self(batch.images, batch.texts, generator), batch.texts)


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

    def craft(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        """The clean images with attacked captions, each caption guided by its own image's
        embedding under the source victim."""
        counts = [len(group) for group in batch.texts]
        texts, _ = flatten(batch.texts)
        with torch.no_grad():
            image_embeddings = self.victim.encode_image(batch.images)
        guide = image_embeddings.repeat_interleave(
            torch.tensor(counts, device=image_embeddings.device), dim=0
        )
        adversarial = list(self(texts, guide, generator))
        if len(adversarial) != len(texts):
            raise RobustError(
                f"text attack {self.name!r} returned {len(adversarial)} captions for "
                f"{len(texts)}; it must return one per caption"
            )
        return AdvBatch(batch.images, regroup(adversarial, batch.texts))


class MultimodalAttack(Attack):
    """Perturbs images and captions together (Sep-Attack, Co-Attack, SGA): `craft` is its
    own per-kind method."""

    kind: ClassVar[AttackKind] = "multimodal"


class UniversalAttack(Attack):
    """An attack fitted once into an artifact (a patch, decoder weights) that is saved,
    reloaded and then applied to any image; applying it is `craft`."""

    kind: ClassVar[AttackKind] = "universal"

    @abstractmethod
    def fit_data(self) -> CaptionDataset:
        """The dataset the harness fits the artifact on (named by the attack's params)."""

    @abstractmethod
    def fit(self, dataset: CaptionDataset, progress: Progress | None = None) -> Any:
        """Fit the artifact on `dataset`; returns it and keeps it for `apply`."""

    @abstractmethod
    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images with the fitted artifact applied, same shape, in [0, 1]."""

    @abstractmethod
    def save_artifact(self, folder: Path) -> Path:
        """Write the fitted artifact into `folder`; returns the file written."""

    @abstractmethod
    def load_artifact(self, folder: Path) -> bool:
        """Load the artifact from `folder` if one fitted with this exact config is there."""

    def craft(self, batch: AttackBatch, generator: torch.Generator | None = None) -> AdvBatch:
        """The images with the artifact applied, with the clean captions."""
        return AdvBatch(self.apply(batch.images, generator), batch.texts)
