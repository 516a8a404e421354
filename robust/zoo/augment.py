"""Pixel and caption augmentations for training toy victims, driven by seeded generators.

Both keep world captions true: no flips (captions name left and right) and no crops that
could cut an object out of its grid cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def augment_images(
    images: torch.Tensor, *, max_shift: int, brightness: float, generator: torch.Generator
) -> torch.Tensor:
    """Cheap label-preserving views of `[B,3,S,S]` pixels in [0,1]: a random shift of up to
    `max_shift` px (reflect padding) and a brightness scale in [1-b, 1+b]."""
    batch, _, height, width = images.shape
    if max_shift > 0:
        padded = F.pad(images, (max_shift,) * 4, mode="reflect")
        dy, dx = torch.randint(0, 2 * max_shift + 1, (2, batch), generator=generator)
        rows = (dy[:, None] + torch.arange(height))[:, :, None]
        cols = (dx[:, None] + torch.arange(width))[:, None, :]
        picked = padded[torch.arange(batch)[:, None, None], :, rows, cols]  # [B, H, W, 3]
        images = picked.permute(0, 3, 1, 2)
    if brightness > 0:
        scale = 1 + brightness * (2 * torch.rand(batch, 1, 1, 1, generator=generator) - 1)
        images = (images * scale).clamp(0, 1)
    return images.contiguous()


def random_erasing(
    images: torch.Tensor,
    *,
    probability: float,
    area_range: tuple[float, float],
    aspect_range: tuple[float, float] = (0.5, 2.0),
    generator: torch.Generator,
) -> torch.Tensor:
    """Random Erasing (Zhong et al., 2020) on `[B,3,H,W]` pixels in [0,1], batched.

    With `probability`, each image gets one rectangle of `area_range` of its area (aspect
    ratio log-uniform in `aspect_range`, anywhere in the image) filled with uniform noise.
    Why the toys need it: trained only on flat shapes, they read any small occluder as
    scene content, so a random 3% patch alone broke most of their retrieval, which left a
    universal patch's random-patch control meaningless. Real CLIPs see occluders in web
    images; this gives the toys the same indifference to them.
    """
    low, high = area_range
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"erasing probability must be in [0, 1], got {probability}")
    if not 0.0 < low <= high < 1.0:
        raise ValueError(f"erasing area range must satisfy 0 < low <= high < 1, got {area_range}")
    batch, channels, height, width = images.shape
    chosen = torch.rand(batch, generator=generator) < probability
    area = (low + (high - low) * torch.rand(batch, generator=generator)) * height * width
    log_low, log_high = math.log(aspect_range[0]), math.log(aspect_range[1])
    aspect = torch.exp(log_low + (log_high - log_low) * torch.rand(batch, generator=generator))
    box_h = (area * aspect).sqrt().round().clamp(1, height).long()
    box_w = (area / aspect).sqrt().round().clamp(1, width).long()
    top = (torch.rand(batch, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(batch, generator=generator) * (width - box_w + 1)).long()
    rows = torch.arange(height)[None, :]
    cols = torch.arange(width)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :] & chosen[:, None, None])[:, None]
    noise = torch.rand(images.shape, generator=generator, dtype=images.dtype)
    return torch.where(mask.expand(-1, channels, -1, -1), noise, images)


def noisy_caption(
    caption: str,
    generator: np.random.Generator,
    *,
    drop: float = 0.0,
    swap: float = 0.0,
    vocabulary: Sequence[str] = (),
    confuse: float = 0.0,
    confusable: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The caption with each word swapped for a random `vocabulary` word with probability
    `swap`, else dropped with probability `drop` (at least one word kept); with probability
    `confuse`, first one of its attribute words becomes a `confusable` one (a wrong claim).

    Real captions are noisy and redundant, so real text towers shrug off one odd word; a
    tower trained on clean templated captions reads every word as decisive instead.
    """
    if swap > 0 and not vocabulary:
        raise ValueError("swapping words needs a vocabulary to draw from")
    if confuse > 0 and not confusable:
        raise ValueError("confusing attribute words needs their confusable words")
    words = caption.split(" ")
    if confuse > 0 and generator.random() < confuse:
        positions = [i for i, word in enumerate(words) if confusable.get(word)]  # type: ignore[union-attr]
        if positions:
            i = positions[int(generator.integers(len(positions)))]
            choices = confusable[words[i]]  # type: ignore[index]
            words = [*words[:i], choices[int(generator.integers(len(choices)))], *words[i + 1 :]]
    noisy = []
    for word in words:
        if swap > 0 and generator.random() < swap:
            noisy.append(vocabulary[int(generator.integers(len(vocabulary)))])
        elif drop == 0 or generator.random() >= drop:
            noisy.append(word)
    return " ".join(noisy) if noisy else words[int(generator.integers(len(words)))]
