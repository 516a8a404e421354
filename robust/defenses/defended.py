"""`DefendedVictim`: a victim behind an input-transformation defense, for evaluation and for
adaptive attacks.

Two modes:

- evaluation (`adaptive=False`): every image goes through the exact defense once. This is
  the defended target of a non-adaptive evaluation. Asking for pixel gradients through a
  non-differentiable defense here is an error, since they would be silently meaningless.
- adaptive (`adaptive=True`): the mode an attack crafts through. Non-differentiable
  defenses need `bpda=True` (Athalye et al., 2018: the exact transform forward, the
  identity backward); randomized ones are averaged over `eot_samples` draws (EOT). The
  average is taken over the draws' outputs (embeddings re-normalised, logits, losses), so
  every attack objective built on them sees the expectation over the defense's randomness.
  Each call draws from a generator seeded by (seed, the input pixels): fresh draws at every
  attack step, yet the same draws for the same input whatever ran before, so a resumed
  crafting run repeats an uninterrupted one.

Evaluation mode draws from one generator seeded at construction (`reset_generator`
restarts it), so a clean and an adversarial evaluation batched alike see the same draws.

Victims are also built by spec, `defended:jpeg-q75,adaptive,bpda,eot=4,seed=0:toy-clip-vit`
(options after the defense name, then any victim name or spec), which is how the harness
names defended sources and targets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from robust.defenses.registry import parse_defense
from robust.defenses.transforms import Defense, DefenseError
from robust.victims.base import ItmScorer, Victim
from robust.victims.registry import (
    check_victim,
    load_victim,
    register_victim_family,
    spec_image_size,
)

__all__ = ["DefendedVictim", "bpda", "defended_spec", "load_defended_spec"]

SPEC_PREFIX = "defended"


def bpda(images: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
    """BPDA with the identity: the value of `transformed`, the gradient of `images`."""
    return images + (transformed - images).detach()


class DefendedVictim(Victim):
    """`victim` with `defense` applied to every image it sees; text passes through."""

    def __init__(
        self,
        victim: Victim,
        defense: Defense,
        *,
        adaptive: bool = False,
        bpda: bool = False,
        eot_samples: int = 1,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if isinstance(eot_samples, bool) or not isinstance(eot_samples, int) or eot_samples < 1:
            raise DefenseError(f"eot_samples must be a positive integer, got {eot_samples!r}")
        if adaptive and not defense.differentiable and not bpda:
            raise DefenseError(
                f"{defense.name} is not differentiable, so an adaptive attack through it needs "
                "BPDA; set bpda=True (spec: defenses.bpda: true)"
            )
        if not adaptive and (bpda or eot_samples > 1):
            raise DefenseError(
                "bpda and eot_samples only apply to adaptive attacks; set adaptive=True"
            )
        mode = "/adaptive" if adaptive else ""
        super().__init__(
            name or f"{victim.name}+{defense.name}{mode}",
            victim.image_size,
            victim.mean,
            victim.std,
        )
        self.victim = victim
        self.defense = defense
        self.adaptive = adaptive
        self.bpda = bpda
        self.eot_samples = eot_samples if defense.randomized else 1
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.family = victim.family
        self.capabilities = victim.capabilities
        self.resize_mode = victim.resize_mode
        self.retrieval_score_fusion = victim.retrieval_score_fusion

    # -- the defense ---------------------------------------------------------------------

    def reset_generator(self) -> None:
        """Restart the defense's draws from its seed, so two evaluations batched alike (clean
        and adversarial) see identical draws and randomness is never counted as attack
        success."""
        self.generator.manual_seed(self.seed)

    def draw_generator(self, images: torch.Tensor) -> torch.Generator:
        """Where an adaptive call's draws come from: seeded by (seed, the input pixels)."""
        pixels = images.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        digest = hashlib.sha256(f"{self.seed}:".encode() + pixels).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def defended_copies(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The images as the model sees them: one copy, or one per EOT draw."""
        self.check_images(images)
        if not self.adaptive:
            if torch.is_grad_enabled() and images.requires_grad and not self.defense.differentiable:
                raise DefenseError(
                    f"{self.name}: gradients through {self.defense.name} are meaningless; attack "
                    "through DefendedVictim(..., adaptive=True, bpda=True) instead"
                )
            return [self.defense(images, self.generator)]
        generator = self.draw_generator(images) if self.defense.randomized else None
        copies = []
        for _ in range(self.eot_samples):
            transformed = self.defense(images, generator)
            copies.append(transformed if self.defense.differentiable else bpda(images, transformed))
        return copies

    def _expected(self, images: torch.Tensor, function: Callable[[torch.Tensor], torch.Tensor]):
        """`function` of the defended images, averaged over the EOT draws."""
        copies = self.defended_copies(images)
        if len(copies) == 1:
            return function(copies[0])
        outputs = function(torch.cat(copies))
        return outputs.view(len(copies), images.shape[0], *outputs.shape[1:]).mean(dim=0)

    # -- the Victim contract ---------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._expected(images, self.victim.encode_image), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.victim.encode_text(texts)

    def itm_logits(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        repeats = self.eot_samples if self.adaptive else 1
        return self._expected(images, lambda x: self.victim.itm_logits(x, list(texts) * repeats))

    def itm_scorer(self) -> DefendedItmScorer:
        return DefendedItmScorer(self, self.victim.itm_scorer())

    def generate_captions(self, images: torch.Tensor) -> list[str]:
        return self.victim.generate_captions(self.defended_copies(images)[0])

    def caption_loss(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        repeats = self.eot_samples if self.adaptive else 1
        return self._expected(images, lambda x: self.victim.caption_loss(x, list(texts) * repeats))

    def describe(self) -> dict[str, Any]:
        return {
            **self.victim.describe(),
            "name": self.name,
            "defense": self.defense.config(),
            "adaptive": self.adaptive,
            "bpda": self.bpda,
            "eot_samples": self.eot_samples,
            "defense_seed": self.seed,
        }


class DefendedItmScorer(ItmScorer):
    """The wrapped victim's ITM halves, with the defense applied to every image."""

    def __init__(self, defended: DefendedVictim, scorer: ItmScorer) -> None:
        self.defended = defended
        self.scorer = scorer

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.defended._expected(images, self.scorer.image_tokens)

    def image_inputs(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.scorer.image_inputs(image_tokens)

    def text_inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scorer.text_inputs(texts)

    def head(
        self, image_inputs: torch.Tensor, text_inputs: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.scorer.head(image_inputs, text_inputs, text_mask)


# -- specs -----------------------------------------------------------------------------------


def defended_spec(
    defense: str,
    victim_spec: str,
    *,
    adaptive: bool = False,
    bpda: bool = False,
    eot_samples: int = 1,
    seed: int = 0,
) -> str:
    """The spec string `load_victim` reads back into this DefendedVictim."""
    options = [parse_defense(defense).name]
    if adaptive:
        options.append("adaptive")
    if bpda:
        options.append("bpda")
    if eot_samples != 1:
        options.append(f"eot={int(eot_samples)}")
    options.append(f"seed={int(seed)}")
    return f"{SPEC_PREFIX}:{','.join(options)}:{victim_spec}"


def parse_defended_spec(arg: str) -> tuple[Defense, dict[str, Any], str]:
    """(defense, DefendedVictim settings, inner victim spec) of
    `DEFENSE[,adaptive][,bpda][,eot=N][,seed=N]:VICTIM`; a malformed spec is one error line."""
    options, sep, inner = arg.partition(":")
    if not sep or not inner:
        raise DefenseError(
            f"defended spec {arg!r} names no victim; write defended:DEFENSE[,adaptive,bpda,"
            "eot=N,seed=N]:VICTIM"
        )
    first, *flags = options.split(",")
    settings: dict[str, Any] = {}
    for flag in flags:
        key, _, value = flag.partition("=")
        if key in ("adaptive", "bpda") and not value:
            settings[key] = True
        elif key in ("eot", "seed") and value.isdigit():
            settings["eot_samples" if key == "eot" else key] = int(value)
        else:
            raise DefenseError(
                f"unknown defended-victim option {flag!r}; use adaptive, bpda, eot=N or seed=N"
            )
    return parse_defense(first), settings, inner  # an unknown defense fails before any load


def load_defended_spec(arg: str, name: str | None) -> DefendedVictim:
    """Build a DefendedVictim from `DEFENSE[,adaptive][,bpda][,eot=N][,seed=N]:VICTIM`."""
    defense, settings, inner = parse_defended_spec(arg)
    victim = load_victim(inner)
    display = None if name is None or name == f"{SPEC_PREFIX}:{arg}" else name
    return DefendedVictim(victim, defense, name=display, **settings)


def check_defended_spec(arg: str, name: str | None = None) -> None:
    """The spec parses and the victim behind the defense has its files here."""
    _, _, inner = parse_defended_spec(arg)
    check_victim(inner)


def defended_image_size(arg: str, name: str | None = None) -> int | None:
    """The resolution of the victim behind the defense (a defense never resizes)."""
    return spec_image_size(parse_defended_spec(arg)[2])


register_victim_family(
    SPEC_PREFIX,
    DefendedVictim,
    load=load_defended_spec,
    check=check_defended_spec,
    image_size=defended_image_size,
    family="defended",
)
