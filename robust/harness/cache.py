"""On-disk cache of adversarial examples: crafted once per (attack, source, seed), reused by
every target and by the report.

One folder per entry::

    <root>/<attack-label>/<source>/seed-<seed>/
        (seed-<seed>-at-<size>-<mode>/ for examples made at one target's geometry)
        plan.json           what is being crafted (attack config, batch size, dataset, count)
        images/000000.png   one lossless uint8 PNG per dataset image, at the source resolution
        batches/00000.json  the captions of one finished batch: that batch's done marker
        texts.json          adversarial captions, one list per image, dataset order
        config.json         the attack's config(), verbatim
        manifest.json       written last and atomically: the entry is complete

Folder names are the label/source made filesystem-safe plus a short hash of the original,
so two spec strings never share a folder. A folder without `manifest.json` is incomplete:
crafting resumes after its last finished batch if the plan is unchanged, and starts over
otherwise. PNGs make the uint8 quantisation explicit: what a target sees is exactly what
was stored. Shards of one entry may craft disjoint batches in parallel processes: `begin`
holds a lock file next to the folder, so only one of them ever creates or wipes it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image

from robust.errors import RobustError

__all__ = [
    "CACHE_FORMAT",
    "AdversarialCache",
    "AdversarialExamples",
    "CacheEntry",
    "CacheError",
    "jsonable",
    "slug",
]

CACHE_FORMAT: Final[int] = 1
MANIFEST: Final[str] = "manifest.json"
PLAN: Final[str] = "plan.json"
CONFIG: Final[str] = "config.json"
TEXTS: Final[str] = "texts.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class CacheError(RobustError):
    """A cache entry that cannot be read as written; the message says how to recover."""


def slug(text: str, *, max_length: int = 60) -> str:
    """A folder name for `text`: readable, filesystem-safe, and unique via a short hash."""
    readable = _UNSAFE.sub("-", text).strip("-.")[:max_length] or "x"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{readable}-{digest}"


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)


def jsonable(value: Any) -> Any:
    """`value` as plain JSON data (tuples become lists), so stored and fresh configs compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=_json_default))


def _write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write to a temp file then rename: readers see the old file or the whole new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False, default=_json_default)
    _write_atomic(path, (text + "\n").encode("utf-8"), durable=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(
            f"{path}: unreadable cache file ({type(error).__name__}); delete "
            f"{path.parent} to recraft it"
        ) from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _encode_png(pixels: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class AdversarialExamples:
    """A complete cache entry in memory: uint8 images `[N,H,W,3]`, captions per image."""

    images: np.ndarray
    texts: list[list[str]]
    config: dict[str, Any]
    manifest: dict[str, Any]


class CacheEntry:
    """The folder of one (attack label, source, seed): crafted batch by batch, loaded whole."""

    def __init__(self, path: Path, attack_label: str, source: str, seed: int) -> None:
        self.path = Path(path)
        self.attack_label = attack_label
        self.source = source
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"CacheEntry({self.attack_label!r}, {self.source!r}, seed={self.seed})"

    @property
    def images_dir(self) -> Path:
        return self.path / "images"

    @property
    def batches_dir(self) -> Path:
        return self.path / "batches"

    def image_path(self, index: int) -> Path:
        return self.images_dir / f"{index:06d}.png"

    def is_complete(self) -> bool:
        """Whether the manifest exists, i.e. every image, text and the config were written."""
        return (self.path / MANIFEST).is_file()

    def manifest(self) -> dict[str, Any]:
        """The manifest of a complete entry."""
        if not self.is_complete():
            raise CacheError(f"{self.path}: cache entry is incomplete; run the matrix to craft it")
        return _read_json(self.path / MANIFEST)

    # -- crafting --------------------------------------------------------------------------

    def begin(self, plan: dict[str, Any]) -> set[int]:
        """Start or resume crafting under `plan`; returns the batch indices already done.

        A partial entry crafted under a different plan (other config, batch size or data)
        is wiped, since its batches would not belong to this one.
        """
        plan = jsonable(plan)
        plan_path = self.path / PLAN
        with _locked(self.path.with_name(f".{self.path.name}.lock")):
            if self.path.exists() and (not plan_path.is_file() or _read_plan(plan_path) != plan):
                shutil.rmtree(self.path)
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self.batches_dir.mkdir(parents=True, exist_ok=True)
            if not plan_path.is_file():
                _write_json(plan_path, plan)
        done: set[int] = set()
        for marker in self.batches_dir.glob("*.json"):
            if marker.stem.isdigit():
                done.add(int(marker.stem))
        return done

    def write_batch(
        self,
        batch_index: int,
        image_indices: Sequence[int],
        images: np.ndarray,
        texts: Sequence[Sequence[str]],
    ) -> None:
        """Store one finished batch: its PNGs first, then its caption marker (the commit)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [B,H,W,3], got {images.dtype} {images.shape}")
        if not len(image_indices) == images.shape[0] == len(texts):
            raise ValueError(
                f"batch {batch_index}: {len(image_indices)} indices, {images.shape[0]} images "
                f"and {len(texts)} caption groups must match"
            )
        for index, pixels in zip(image_indices, images, strict=True):
            _write_atomic(self.image_path(int(index)), _encode_png(pixels))
        marker = {
            "indices": [int(i) for i in image_indices],
            "texts": [[str(t) for t in group] for group in texts],
        }
        _write_json(self.batches_dir / f"{batch_index:05d}.json", marker)

    def finish(self, config: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        """Assemble texts.json and config.json from the batches, then write the manifest."""
        plan = _read_plan(self.path / PLAN)
        num_images = int(plan["num_images"])
        texts: list[list[str] | None] = [None] * num_images
        for marker_path in sorted(self.batches_dir.glob("*.json")):
            marker = _read_json(marker_path)
            for index, group in zip(marker["indices"], marker["texts"], strict=True):
                texts[int(index)] = list(group)
        missing = [i for i, group in enumerate(texts) if group is None]
        if missing or any(not self.image_path(i).is_file() for i in range(num_images)):
            raise CacheError(
                f"{self.path}: cannot finish an entry with unfinished batches "
                f"(e.g. image {missing[0] if missing else '?'}); run the matrix again"
            )
        _write_json(self.path / TEXTS, texts)
        _write_json(self.path / CONFIG, config)
        manifest = jsonable(
            {
                "format": CACHE_FORMAT,
                "attack_label": self.attack_label,
                "source": self.source,
                "seed": self.seed,
                "num_images": num_images,
                "num_captions": sum(len(group or ()) for group in texts),
                "plan": plan,
                **info,
            }
        )
        _write_json(self.path / MANIFEST, manifest)
        return manifest

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> AdversarialExamples:
        """The complete entry: uint8 images `[N,H,W,3]`, captions per image, attack config."""
        manifest = self.manifest()
        num_images = int(manifest["num_images"])
        arrays: list[np.ndarray] = []
        for index in range(num_images):
            path = self.image_path(index)
            try:
                with Image.open(path) as image:
                    arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
            except (OSError, ValueError) as error:
                raise CacheError(
                    f"{path}: cached image unreadable ({type(error).__name__}); delete "
                    f"{self.path} to recraft it"
                ) from None
        shapes = {array.shape for array in arrays}
        if len(shapes) != 1:
            raise CacheError(
                f"{self.path}: cached images have different shapes {sorted(shapes)}; delete "
                "the folder to recraft it"
            )
        texts = _read_json(self.path / TEXTS)
        if not isinstance(texts, list) or len(texts) != num_images:
            raise CacheError(
                f"{self.path / TEXTS}: expected {num_images} caption lists; delete "
                f"{self.path} to recraft it"
            )
        return AdversarialExamples(
            images=np.stack(arrays),
            texts=[list(group) for group in texts],
            config=_read_json(self.path / CONFIG),
            manifest=manifest,
        )


def _read_plan(path: Path) -> dict[str, Any]:
    plan = _read_json(path)
    if not isinstance(plan, dict):
        raise CacheError(f"{path}: not a crafting plan; delete {path.parent} to recraft it")
    return plan


class AdversarialCache:
    """All cache entries of one run directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def entry(
        self, attack_label: str, source: str, seed: int, at: tuple[int, str] | None = None
    ) -> CacheEntry:
        """The entry folder of (attack label, source, seed), whether or not it exists yet.

        `at` = (image_size, resize_mode) keeps apart entries made at a target's geometry
        rather than the source's (a patch pasted on each target's images): `seed-N-at-S-mode`.
        """
        folder = f"seed-{int(seed)}"
        if at is not None:
            folder += f"-at-{int(at[0])}-{at[1]}"
        path = self.root / slug(attack_label) / slug(source) / folder
        return CacheEntry(path, attack_label, source, seed)

    def complete_entries(self) -> list[CacheEntry]:
        """Every complete entry under the root, for the report."""
        entries = []
        for manifest_path in sorted(self.root.glob(f"*/*/seed-*/{MANIFEST}")):
            manifest = _read_json(manifest_path)
            entries.append(
                CacheEntry(
                    manifest_path.parent,
                    manifest["attack_label"],
                    manifest["source"],
                    manifest["seed"],
                )
            )
        return entries
