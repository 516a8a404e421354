"""The in-memory shape every retrieval dataset takes, real or embedded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image


class ImageSource(Protocol):
    """Random access to a dataset's images as RGB PIL images."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image: ...


@dataclass(frozen=True)
class ArrayImages:
    """Images held in memory as one uint8 array `[N, H, W, 3]` (the embedded world)."""

    pixels: np.ndarray

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index], mode="RGB")

    def subset(self, count: int) -> ArrayImages:
        return ArrayImages(self.pixels[:count])


@dataclass(frozen=True)
class FileImages:
    """Images read lazily from files under a root directory (Flickr30k, MSCOCO, exports)."""

    root: Path
    relative_paths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.relative_paths)

    def load(self, index: int) -> Image.Image:
        with Image.open(self.root / self.relative_paths[index]) as image:
            return image.convert("RGB")

    def subset(self, count: int) -> FileImages:
        return FileImages(self.root, self.relative_paths[:count])


@dataclass(frozen=True)
class CaptionDataset:
    """Images with several captions each, in file order, as Flickr30k/COCO retrieval uses them.

    `caption_image[t]` is the index of the image that caption `t` describes (ALBEF's
    `txt2img`); `image_captions[i]` lists the caption indices of image `i` (`img2txt`).
    `labels` holds per-image attribute labels where the dataset has them (the world).
    """

    name: str
    images: ImageSource
    image_ids: tuple[str, ...]
    captions: tuple[str, ...]
    caption_image: np.ndarray
    labels: tuple[dict, ...] | None = None
    image_captions: tuple[tuple[int, ...], ...] = field(init=False)

    def __post_init__(self) -> None:
        caption_image = np.asarray(self.caption_image, dtype=np.int64)
        object.__setattr__(self, "caption_image", caption_image)
        grouped: list[list[int]] = [[] for _ in range(len(self.image_ids))]
        for caption_index, image_index in enumerate(caption_image.tolist()):
            grouped[image_index].append(caption_index)
        object.__setattr__(self, "image_captions", tuple(tuple(g) for g in grouped))

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    def subset(self, limit: int | None) -> CaptionDataset:
        """The first `limit` images and all of their captions (None keeps everything)."""
        if limit is None or limit >= self.num_images:
            return self
        if limit <= 0:
            raise ValueError(f"limit must be a positive number of images, got {limit}")
        keep = self.caption_image < limit
        return CaptionDataset(
            name=f"{self.name}[:{limit}]",
            images=self.images.subset(limit),  # type: ignore[attr-defined]
            image_ids=self.image_ids[:limit],
            captions=tuple(c for c, k in zip(self.captions, keep, strict=True) if k),
            caption_image=self.caption_image[keep],
            labels=None if self.labels is None else self.labels[:limit],
        )

    def captions_of(self, image_indices: Sequence[int]) -> list[list[str]]:
        """The caption texts of each given image, in dataset order."""
        return [[self.captions[t] for t in self.image_captions[i]] for i in image_indices]
