"""The Victim contract every model family satisfies, so attacks and evaluation stay generic.

Images enter as float tensors `[B, 3, S, S]` in `[0, 1]` at the victim's native resolution
`S`; normalisation happens inside, so attacks work in pixel space. Embeddings leave
L2-normalised.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from robust.errors import CapabilityError

Capability = Literal["itc", "itm", "caption"]
ResizeMode = Literal["squash", "crop"]
ScoreFusion = Literal["itc", "itm", "itm+itc"]

# The ITM head's classes are (no match, match), in ALBEF, TCL and BLIP alike.
ITM_MATCH_CLASS = 1


class ItmScorer(ABC):
    """A fusion model's image-text matching in cacheable halves.

    A re-ranker scores thousands of (image, caption) pairs from a few images and captions:
    each image's inputs and each caption's inputs are computed once, and only the fusion
    layers run per pair. What the halves hold is the model's business (ALBEF caches
    cross-attention keys/values, BLIP the ViT tokens and token ids).
    """

    @abstractmethod
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Vision output tokens `[B, 1+P, W]` of pixel images."""

    def image_inputs(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Per-image ITM inputs `[B, ...]` from `image_tokens`; by default the tokens."""
        return image_tokens

    @abstractmethod
    def text_inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-caption ITM inputs `[T, L, ...]` and their padding mask `[T, L]`."""

    @abstractmethod
    def head(
        self, image_inputs: torch.Tensor, text_inputs: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Both ITM head outputs `[N, 2]` (no match, match) of N aligned rows."""

    def match_logits(
        self, image_inputs: torch.Tensor, text_inputs: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """Match logits `[N]` of N aligned rows: what re-ranking orders by."""
        return self.head(image_inputs, text_inputs, text_mask)[:, ITM_MATCH_CLASS]


class Victim(nn.Module, ABC):
    """A vision-language model under attack, always in eval mode.

    Subclasses set `family`, `image_size`, `mean`, `std`, `capabilities`, `resize_mode`
    (how dataset images reach `image_size`: "squash" for ALBEF/BLIP, "crop" for CLIP) and
    `retrieval_score_fusion` (how re-ranked retrieval scores combine).
    """

    family: str = "unknown"
    capabilities: frozenset[str] = frozenset({"itc"})
    resize_mode: ResizeMode = "crop"
    retrieval_score_fusion: ScoreFusion = "itc"

    def __init__(
        self,
        name: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.name = name
        self.image_size = int(image_size)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.pixel_mean.flatten().tolist())

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.pixel_std.flatten().tolist())

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True) -> Victim:
        """Victims never train: dropout and BatchNorm statistics stay frozen."""
        return super().train(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Check the pixel-space input and apply this model's mean/std."""
        self.check_images(images)
        return (images - self.pixel_mean) / self.pixel_std

    def check_images(self, images: torch.Tensor) -> None:
        """Refuse off-size input: resizing is an explicit step, never hidden in a model."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected images [B,3,H,W], got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.name}: expected {self.image_size}x{self.image_size} images, got "
                f"{images.shape[-2]}x{images.shape[-1]}; resize with robust.data.images first"
            )

    @abstractmethod
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings `[B, D]`, differentiable w.r.t. pixels."""

    @abstractmethod
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings `[T, D]` with this model's own tokenizer."""

    def itm_logits(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Pairwise image-text match logits `[B]` (fusion models only)."""
        raise CapabilityError(f"{self.name} ({self.family}) has no image-text matching head")

    def itm_scorer(self) -> ItmScorer:
        """This model's ITM split into cacheable halves, for batched re-ranking (fusion only)."""
        raise CapabilityError(f"{self.name} ({self.family}) has no image-text matching head")

    def generate_captions(self, images: torch.Tensor) -> list[str]:
        """Captions for each image (captioners only)."""
        raise CapabilityError(f"{self.name} ({self.family}) cannot generate captions")

    def caption_loss(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Teacher-forced caption loss per image `[B]`, differentiable (captioners only)."""
        raise CapabilityError(f"{self.name} ({self.family}) has no caption loss")

    def describe(self) -> dict:
        """The facts results record about this victim."""
        return {
            "name": self.name,
            "family": self.family,
            "image_size": self.image_size,
            "resize_mode": self.resize_mode,
            "mean": list(self.mean),
            "std": list(self.std),
            "capabilities": sorted(self.capabilities),
            "retrieval_score_fusion": self.retrieval_score_fusion,
        }
