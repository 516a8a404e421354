"""Datasets: the embedded world, Karpathy-format real data, and the resize step."""

from __future__ import annotations

from dataclasses import replace

from robust.data.dataset import CaptionDataset
from robust.data.image_folder import ImageFolder
from robust.errors import RobustError

DATASET_FORMS = (
    "a world version (world, world-v2, world-v3) or VERSION:SPLIT, or karpathy:ROOT:ANNOTATION.json"
)


def load_dataset(spec: str, *, limit: int | None = None) -> CaptionDataset:
    """Open a dataset named on the command line or in a spec file.

    A world version alone (`world-v3`) is its test-1k; `world-v3:SPLIT` any of its splits;
    `karpathy:ROOT:JSON` real Flickr30k/MSCOCO (or an exported
    world) in the ALBEF json layout.
    """
    from robust.data.karpathy import load_karpathy
    from robust.data.world import SPLITS, WORLD_VERSIONS, generate_world

    if limit is not None and limit <= 0:
        raise RobustError(f"--limit must be a positive number of images, got {limit}")
    kind, _, rest = spec.partition(":")
    if kind in WORLD_VERSIONS:
        split = rest or "test-1k"
        if split not in SPLITS:
            raise RobustError(f"unknown world split {split!r}; choose one of {', '.join(SPLITS)}")
        if limit is None or limit >= SPLITS[split]:
            return generate_world(split, version=kind)
        # generate only what is used, named as CaptionDataset.subset names a prefix
        subset = generate_world(split, count=limit, version=kind)
        return replace(subset, name=f"{kind}:{split}[:{limit}]")
    if kind == "karpathy":
        root, sep, annotation = rest.partition(":")
        if not sep or not root or not annotation:
            raise RobustError(
                f"dataset {spec!r} must look like karpathy:ROOT:ANNOTATION.json "
                "(image root folder, then the ALBEF-style json)"
            )
        return load_karpathy(root, annotation).subset(limit)
    raise RobustError(f"unknown dataset {spec!r}; use {DATASET_FORMS}")


def load_image_dataset(spec: str, *, limit: int | None = None) -> CaptionDataset | ImageFolder:
    """A dataset for classification: `folder:ROOT` (one sub-folder per class), or any form
    `load_dataset` reads (the world's labels give its classes)."""
    from robust.data.image_folder import load_image_folder

    kind, _, root = spec.partition(":")
    if kind != "folder":
        return load_dataset(spec, limit=limit)
    if limit is not None and limit <= 0:
        raise RobustError(f"--limit must be a positive number of images, got {limit}")
    if not root:
        raise RobustError(f"dataset {spec!r} must look like folder:ROOT (one sub-folder per class)")
    return load_image_folder(root).subset(limit)


__all__ = ["DATASET_FORMS", "CaptionDataset", "load_dataset", "load_image_dataset"]
