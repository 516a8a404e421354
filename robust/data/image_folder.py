"""An image-folder classification dataset (ImageNet-style): one sub-folder per class.

`folder:ROOT` names it on the command line. Images are read lazily from their files, as
Karpathy datasets are; files that are not images by suffix are ignored, and a folder
without class sub-folders (or classes without images) is one error line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robust.data.dataset import FileImages
from robust.errors import RobustError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageFolder:
    """Images of a folder tree with each image's class folder name, in sorted order."""

    name: str
    images: FileImages
    class_folders: tuple[str, ...]  # per image

    def subset(self, limit: int | None) -> ImageFolder:
        """The first `limit` images (None keeps all); the order interleaves classes so a
        prefix holds every class."""
        if limit is None or limit >= len(self.class_folders):
            return self
        return ImageFolder(
            f"{self.name}[:{limit}]", self.images.subset(limit), self.class_folders[:limit]
        )


def load_image_folder(root: Path | str) -> ImageFolder:
    """Every image under `root/CLASS/`, round-robin over the classes (each sorted by name)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise RobustError(f"{root} is not a folder; pass folder:ROOT with one sub-folder per class")
    per_class = {
        folder.name: sorted(
            p.relative_to(root).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    }
    if not per_class:
        raise RobustError(
            f"{root} has no class sub-folders; put each class's images in ROOT/CLASS_NAME/"
        )
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise RobustError(
            f"{root}: class folder(s) {', '.join(empty[:5])} hold no images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folders"
        )
    paths, classes = [], []
    depth = max(len(files) for files in per_class.values())
    for position in range(depth):
        for name, files in per_class.items():
            if position < len(files):
                paths.append(files[position])
                classes.append(name)
    return ImageFolder(f"folder:{root}", FileImages(root, tuple(paths)), tuple(classes))


def folder_labels(folder: ImageFolder, classes: tuple[str, ...], source: str) -> np.ndarray:
    """Each image's index among a task's classes; a class folder the task lacks is an error."""
    position = {name: index for index, name in enumerate(classes)}
    missing = sorted(set(folder.class_folders) - set(position))
    if missing:
        raise RobustError(
            f"{folder.name} has class folder(s) {', '.join(missing[:5])} that the prompt file "
            f"{source} does not list; add them to its classes"
        )
    return np.asarray([position[name] for name in folder.class_folders], dtype=np.int64)
