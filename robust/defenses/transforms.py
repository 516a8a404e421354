"""Input-transformation defenses: what a defended model does to pixels before it sees them.

Each defense maps float images `[B, 3, H, W]` in `[0, 1]` to images of the same shape. The
forward transform is always the exact defense (JPEG through Pillow's real codec, true
rounding for bit depth), so evaluation measures the defense as deployed. Whether gradients
are meaningful through it is declared by `differentiable`: adaptive attacks then either
backpropagate through it directly or need BPDA (see `robust.defenses.defended`).
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robust.data.images import gaussian_kernel, input_diversity
from robust.errors import RobustError

__all__ = [
    "BitDepthReduction",
    "Defense",
    "DefenseError",
    "GaussianSmoothing",
    "JpegCompression",
    "MedianSmoothing",
    "RandomResizePad",
]


class DefenseError(RobustError, ValueError):
    """A defense that is misnamed, out of range, or used where it cannot work."""


class Defense(ABC):
    """An input transformation placed in front of a victim.

    `differentiable`: gradients through `__call__` are informative (False for JPEG and
    rounding, whose gradient is zero or undefined almost everywhere). `randomized`: the
    transform draws from the generator, so adaptive attacks take an expectation (EOT).
    """

    differentiable: ClassVar[bool] = True
    randomized: ClassVar[bool] = False

    @property
    @abstractmethod
    def name(self) -> str:
        """The defense as users write it and the store records it, e.g. "jpeg-q75"."""

    @abstractmethod
    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The defended images, same shape, in [0, 1]."""

    def config(self) -> dict[str, Any]:
        """Everything that determines the transform, for results."""
        return {
            "defense": self.name,
            "differentiable": self.differentiable,
            "randomized": self.randomized,
        }


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise DefenseError(f"a defense takes images [B,3,H,W], got {tuple(images.shape)}")


class JpegCompression(Defense):
    """JPEG at a fixed quality through Pillow's codec (4:2:0 chroma subsampling, as saved
    photos are): the exact transform; not differentiable, so adaptive attacks use BPDA."""

    differentiable = False

    def __init__(self, quality: int = 75) -> None:
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 95:
            raise DefenseError(f"JPEG quality must be an integer in 1..95, got {quality!r}")
        self.quality = quality

    @property
    def name(self) -> str:
        return f"jpeg-q{self.quality}"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_images(images)
        pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        decoded = []
        for image in pixels:
            buffer = io.BytesIO()
            Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=self.quality)
            buffer.seek(0)
            with Image.open(buffer) as jpeg:
                decoded.append(np.asarray(jpeg.convert("RGB"), dtype=np.uint8))
        array = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
        return (array.to(images.dtype) / 255).to(images.device)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "quality": self.quality, "codec": "Pillow"}


class BitDepthReduction(Defense):
    """Feature squeezing: each channel rounded to `bits` bits; rounding has zero gradient
    almost everywhere, so adaptive attacks use BPDA."""

    differentiable = False

    def __init__(self, bits: int = 4) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 7:
            raise DefenseError(f"bit depth must be an integer in 1..7, got {bits!r}")
        self.bits = bits

    @property
    def name(self) -> str:
        return f"bits-{self.bits}"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_images(images)
        levels = 2**self.bits - 1
        return torch.round(images.clamp(0, 1) * levels) / levels

    def config(self) -> dict[str, Any]:
        return {**super().config(), "bits": self.bits}


def _check_kernel(size: int, what: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise DefenseError(f"{what} kernel size must be an odd integer >= 3, got {size!r}")


class GaussianSmoothing(Defense):
    """Depthwise Gaussian blur over a `size` x `size` window spanning +-3 sigma (sigma =
    (size-1)/6 pixels), reflect-padded so borders are not darkened; differentiable."""

    def __init__(self, size: int = 5) -> None:
        _check_kernel(size, "Gaussian")
        self.size = size

    @property
    def name(self) -> str:
        return f"gauss-{self.size}"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_images(images)
        kernel = gaussian_kernel(self.size).to(images.device, images.dtype)
        half = self.size // 2
        padded = F.pad(images, [half] * 4, mode="reflect")
        return F.conv2d(padded, kernel, groups=3)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "kernel_size": self.size, "sigma_px": (self.size - 1) / 6}


class MedianSmoothing(Defense):
    """Median filter over a `size` x `size` window, reflect-padded; gradients flow to the
    median pixel of each window, so it counts as differentiable (as in BPDA's study)."""

    def __init__(self, size: int = 3) -> None:
        _check_kernel(size, "median")
        self.size = size

    @property
    def name(self) -> str:
        return f"median-{self.size}"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_images(images)
        half = self.size // 2
        padded = F.pad(images, [half] * 4, mode="reflect")
        windows = padded.unfold(2, self.size, 1).unfold(3, self.size, 1)
        return windows.flatten(-2).median(dim=-1).values

    def config(self) -> dict[str, Any]:
        return {**super().config(), "kernel_size": self.size}


class RandomResizePad(Defense):
    """Randomisation (Xie et al., 2018): resize to a random size in [S, ratio*S), zero-pad
    at a random offset to ratio*S, and resize back to S (victims take their native size).
    One draw per batch from the seeded generator; differentiable, so adaptive attacks
    average over draws (EOT)."""

    randomized = True

    def __init__(self, ratio: float = 1.15) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 1 < ratio <= 2:
            raise DefenseError(f"resize-pad ratio must be in (1, 2], got {ratio!r}")
        self.ratio = float(ratio)

    @property
    def name(self) -> str:
        return f"resize-pad-{self.ratio:g}"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_images(images)
        if generator is None:
            raise DefenseError(
                f"{self.name} is randomized; pass a seeded torch.Generator so results repeat"
            )
        return input_diversity(images, self.ratio, generator).clamp(0, 1)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "ratio": self.ratio, "draws": "one per batch"}
