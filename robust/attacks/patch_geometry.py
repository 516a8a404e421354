"""Where a universal patch goes and how it is pasted: area-fraction sizing, placement, masks.

A patch is a square of pixels in [0, 1] that *replaces* the image under its mask
(x' = M * P + (1 - M) * x), in pixel space, before any victim's normalisation.

Its size is a fraction of the image area (AdvCLIP's default: 3%), so one patch means the
same thing at every resolution: side = floor(sqrt(fraction * S^2)). Placement is either
"fixed" (AdvCLIP's bottom-right corner, inset by 1/16 of the side, 14 px at 224) or
"random" (uniform location; during training the side is also scaled by a factor drawn from
`scale_range`, expectation over transformation).

Crossing resolutions: a patch fitted at the source resolution is applied to a target at
the *same area fraction and placement on the target-resolution image*, its pixels resized
(bilinear, antialiased) to the target's side. The target's clean images are loaded at its
own resolution and the patched ones are quantised to uint8 the same way, so only the patch
differs between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from robust.attacks.base import AttackConfigError

Placement = Literal["fixed", "random"]
PLACEMENTS: tuple[str, ...] = ("fixed", "random")
CORNER_INSET_FRACTION = 1 / 16  # AdvCLIP: 14 px from the bottom-right corner at 224 px


def check_area_fraction(area_fraction: float) -> None:
    """One clear error for a patch of no size, or one not smaller than the image."""
    if not area_fraction > 0:
        raise AttackConfigError(
            f"patch size must be positive: area fraction {area_fraction} <= 0; use e.g. 0.03 "
            "(3% of the image)"
        )
    if area_fraction >= 1:
        raise AttackConfigError(
            f"a patch covering {area_fraction:.0%} of the image is not smaller than the image; "
            "use an area fraction below 1, e.g. 0.03"
        )


def patch_side(image_size: int, area_fraction: float) -> int:
    """The patch's side in pixels at `image_size`; one clear error when it cannot exist."""
    check_area_fraction(area_fraction)
    side = int(math.floor(math.sqrt(area_fraction * image_size * image_size)))
    if side < 1:
        raise AttackConfigError(
            f"a {area_fraction:.2%} patch is under one pixel at {image_size}x{image_size}; "
            "use a larger area fraction"
        )
    return side


def check_placement(placement: str, scale_range: tuple[float, float]) -> None:
    """One clear error for an unknown placement or a meaningless scale range."""
    if placement not in PLACEMENTS:
        raise AttackConfigError(
            f"unknown patch placement {placement!r}; use 'fixed' (bottom-right corner) or "
            "'random' (random location, EOT over location and scale)"
        )
    low, high = scale_range
    if not 0 < low <= high:
        raise AttackConfigError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")


def corner_position(image_size: int, side: int) -> tuple[int, int]:
    """(top, left) of the fixed bottom-right placement, inset as AdvCLIP does."""
    inset = int(round(CORNER_INSET_FRACTION * image_size))
    offset = max(0, min(image_size - side - inset, image_size - side))
    return offset, offset


@dataclass(frozen=True)
class PatchBoxes:
    """Per-image patch boxes: top, left and side in pixels, each `[B]` (CPU long)."""

    top: torch.Tensor
    left: torch.Tensor
    side: torch.Tensor


def sample_boxes(
    count: int,
    image_size: int,
    side: int,
    placement: str,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] = (1.0, 1.0),
) -> PatchBoxes:
    """Boxes for `count` images: the fixed corner, or seeded random location (and scale)."""
    if placement == "fixed":
        top, left = corner_position(image_size, side)
        full = torch.full((count,), 0, dtype=torch.long)
        return PatchBoxes(full + top, full + left, full + side)
    if generator is None:
        raise AttackConfigError("random patch placement needs a seeded torch.Generator")
    low, high = scale_range
    scales = low + (high - low) * torch.rand(count, generator=generator)
    sides = (scales * side).round().long().clamp(1, image_size - 1)
    top = (torch.rand(count, generator=generator) * (image_size - sides + 1)).floor().long()
    left = (torch.rand(count, generator=generator) * (image_size - sides + 1)).floor().long()
    return PatchBoxes(top, left, sides)


def resize_patch(patch: torch.Tensor, side: int) -> torch.Tensor:
    """The patch `[3, s, s]` at `side x side` (bilinear, antialiased; unchanged if equal)."""
    if patch.shape[-1] == side:
        return patch
    resized = F.interpolate(
        patch.unsqueeze(0), size=(side, side), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.squeeze(0).clamp(0.0, 1.0)


def patch_masks(boxes: PatchBoxes, image_size: int) -> torch.Tensor:
    """Binary masks `[B, 1, S, S]`: 1 under each image's patch, 0 elsewhere."""
    rows = torch.arange(image_size).view(1, -1, 1)
    cols = torch.arange(image_size).view(1, 1, -1)
    top, left, side = (value.view(-1, 1, 1) for value in (boxes.top, boxes.left, boxes.side))
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return inside.unsqueeze(1).float()


def apply_patch(images: torch.Tensor, patch: torch.Tensor, boxes: PatchBoxes) -> torch.Tensor:
    """Paste `patch` `[3, s, s]` into each image's box by replacement; differentiable in both."""
    size = int(images.shape[-1])
    canvases = []
    for side in boxes.side.unique().tolist():
        resized = resize_patch(patch, int(side))
        chosen = (boxes.side == side).nonzero().flatten().tolist()
        for index in chosen:
            top, left = int(boxes.top[index]), int(boxes.left[index])
            padding = (left, size - left - side, top, size - top - side)
            canvases.append((index, F.pad(resized, padding)))
    canvases.sort(key=lambda item: item[0])
    canvas = torch.stack([item[1] for item in canvases]).to(images.device, images.dtype)
    mask = patch_masks(boxes, size).to(images.device, images.dtype)
    return mask * canvas + (1.0 - mask) * images
