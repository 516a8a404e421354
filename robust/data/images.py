"""The one place where images change resolution or precision: explicit, logged, shared.

Every victim sees float tensors `[B,3,H,W]` in `[0,1]` at its own native resolution. Getting
there from files (`load_images`) or from another victim's resolution (`resize_tensor`) is an
explicit step here, never hidden inside a model, and is logged at DEBUG level on
`robust.data.images` so a run's preprocessing can be audited.

Two resize modes follow the victims' own evaluation pipelines:

- ``"squash"``: bicubic resize straight to `size x size`, ignoring aspect ratio (the ALBEF, TCL
  and BLIP test transforms);
- ``"crop"``: bicubic resize of the shorter side to `size`, then a centre crop (CLIP's
  `Resize(size)` + `CenterCrop(size)`).

Fair transfer: when adversarial images cross from a source victim to a target at another
resolution, the clean images they are compared against must go through *exactly* the same
resize and uint8 quantisation (`cross_resolution` does both). Otherwise resampling and
rounding shift alone would be counted as attack success.

The random resize-and-pad (DI) and the Gaussian smoothing kernel (TI) live here too: attacks
use them as transfer tricks and defenses as input transforms.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from robust.data.dataset import ImageSource

__all__ = [
    "RESIZE_MODES",
    "cross_resolution",
    "from_uint8_array",
    "gaussian_kernel",
    "input_diversity",
    "load_images",
    "quantize_uint8",
    "resize_tensor",
    "to_uint8_array",
]

logger = logging.getLogger(__name__)

RESIZE_MODES: tuple[str, ...] = ("squash", "crop")

# TI's Gaussian spans +-3 standard deviations of the kernel, as in the TI-FGSM code.
_TI_SIGMAS = 3.0


def _check_mode_and_size(size: int, mode: str) -> None:
    """Fail early with one line on a resize request that cannot mean anything."""
    if mode not in RESIZE_MODES:
        raise ValueError(
            f"unknown resize mode {mode!r}; use 'squash' (ALBEF/TCL/BLIP: bicubic to size x size)"
            " or 'crop' (CLIP: shorter side to size, then centre crop)"
        )
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
        raise ValueError(f"image size must be a positive number of pixels, got {size!r}")


def _shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to `size`, as torchvision Resize does."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _centre_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of a centred `size x size` window, rounded as torchvision CenterCrop does."""
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def _resize_pil(image: Image.Image, size: int, mode: str) -> tuple[Image.Image, bool]:
    """The image at `size x size` and whether any resampling happened."""
    width, height = image.size
    if (width, height) == (size, size):
        return image, False
    if mode == "squash":
        return image.resize((size, size), Image.Resampling.BICUBIC), True
    new_height, new_width = _shorter_side_size(height, width, size)
    resampled = (new_width, new_height) != (width, height)
    if resampled:
        image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    top, left = _centre_offsets(new_height, new_width, size)
    return image.crop((left, top, left + size, top + size)), resampled


def load_images(
    source: ImageSource, indices: Sequence[int], size: int, mode: str = "squash"
) -> torch.Tensor:
    """Decode images from a dataset at a victim's native resolution, `[B,3,size,size]` in [0,1].

    Resizing happens on the decoded uint8 image with PIL bicubic (what the reference
    pipelines do), then values are divided by 255 as torchvision's ToTensor does. An image
    that is already `size x size` is passed through untouched.
    """
    _check_mode_and_size(size, mode)
    arrays: list[np.ndarray] = []
    resampled_count = 0
    for index in indices:
        image = source.load(int(index))
        if image.mode != "RGB":
            image = image.convert("RGB")
        image, resampled = _resize_pil(image, size, mode)
        resampled_count += int(resampled)
        arrays.append(np.asarray(image, dtype=np.uint8))
    if resampled_count:
        logger.debug(
            "load_images: resampled %d of %d images to %dx%d (mode=%s, PIL bicubic)",
            resampled_count,
            len(arrays),
            size,
            size,
            mode,
        )
    if not arrays:
        return torch.zeros((0, 3, size, size), dtype=torch.float32)
    return from_uint8_array(np.stack(arrays))


def _check_batch(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images shaped [B,3,H,W], got {tuple(images.shape)}")


def resize_tensor(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Move float images `[B,3,H,W]` to `size x size`, differentiably (bicubic, antialiased).

    Used when images cross from one victim's resolution to another's; the output is clamped
    to [0,1] because bicubic overshoots at edges. Images already at `size x size` are
    returned as they are.
    """
    _check_mode_and_size(size, mode)
    _check_batch(images)
    height, width = int(images.shape[-2]), int(images.shape[-1])
    if (height, width) == (size, size):
        return images
    if mode == "squash":
        new_height, new_width = size, size
    else:
        new_height, new_width = _shorter_side_size(height, width, size)
    if (new_height, new_width) != (height, width):
        logger.debug(
            "resize_tensor: %d images %dx%d -> %dx%d (mode=%s, bicubic antialias)",
            images.shape[0],
            height,
            width,
            size,
            size,
            mode,
        )
        images = F.interpolate(
            images,
            size=(new_height, new_width),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        ).clamp(0.0, 1.0)
    if mode == "crop":
        top, left = _centre_offsets(new_height, new_width, size)
        images = images[:, :, top : top + size, left : left + size]
    return images


def quantize_uint8(images: torch.Tensor) -> torch.Tensor:
    """Round to the nearest of 256 levels, as saving to a PNG and reloading would.

    Clean and adversarial images crossing to a target must both go through this (after the
    same `resize_tensor`), so that rounding is never credited to the attack. Not
    differentiable (rounding has zero gradient); apply it after the attack, not inside it.
    """
    return torch.round(images.clamp(0.0, 1.0) * 255.0) / 255.0


def cross_resolution(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Images as a target victim at `size` receives them: resize, then uint8 quantisation.

    Apply this to clean and adversarial images alike; it is the whole crossing step.
    """
    return quantize_uint8(resize_tensor(images, size, mode))


def to_uint8_array(images: torch.Tensor) -> np.ndarray:
    """Float images `[B,3,H,W]` in [0,1] as a uint8 array `[B,H,W,3]` (for PNG files, caches)."""
    _check_batch(images)
    levels = torch.round(images.detach().clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return levels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def from_uint8_array(array: np.ndarray) -> torch.Tensor:
    """A uint8 array `[B,H,W,3]` as float32 images `[B,3,H,W]`; inverts `to_uint8_array` exactly."""
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 array shaped [B,H,W,3], got {array.dtype} {tuple(array.shape)}"
        )
    pixels = torch.from_numpy(np.ascontiguousarray(array))
    return pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)


def input_diversity(
    images: torch.Tensor, resize_ratio: float, generator: torch.Generator
) -> torch.Tensor:
    """DI: one random resize and zero-pad for the whole batch, then back to the input size.

    The resize goes to `H + k` with k uniform in [0, extra), the pad to `H + extra` at a
    random offset, with `extra = int(ratio*H) - H` (at least 1); bilinear both ways.
    """
    height, width = int(images.shape[-2]), int(images.shape[-1])
    side = min(height, width)
    extra = max(int(resize_ratio * side) - side, 1)
    grow = int(torch.randint(0, extra, (1,), generator=generator, device=generator.device))
    rescaled = F.interpolate(
        images, size=(height + grow, width + grow), mode="bilinear", align_corners=False
    )
    room = extra - grow
    top, left = (
        int(value)
        for value in torch.randint(0, room + 1, (2,), generator=generator, device=generator.device)
    )
    padded = F.pad(rescaled, [left, room - left, top, room - top], value=0.0)
    return F.interpolate(padded, size=(height, width), mode="bilinear", align_corners=False)


def gaussian_kernel(size: int, channels: int = 3) -> torch.Tensor:
    """TI's normalised 2-D Gaussian spanning +-3 sigma, as a depthwise `[C, 1, k, k]` weight."""
    positions = torch.linspace(-_TI_SIGMAS, _TI_SIGMAS, size, dtype=torch.float32)
    profile = torch.exp(-0.5 * positions**2)
    kernel = torch.outer(profile, profile)
    kernel = kernel / kernel.sum()
    return kernel.expand(channels, 1, size, size).contiguous()
