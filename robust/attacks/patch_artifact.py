"""A fitted universal patch as a file pair: lossless PNG pixels plus a JSON sidecar.

`patch.png` holds the patch at its source resolution; `patch.json` beside it records the
source victim, its resolution, the area fraction, the placement policy, the attack's full
config, the seed and the training curve. The in-memory patch is always uint8-representable,
so saving and reloading gives bit-identical patched images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from robust.attacks.patch_geometry import (
    PLACEMENTS,
    PatchBoxes,
    apply_patch,
    patch_side,
    sample_boxes,
)
from robust.data.images import from_uint8_array, quantize_uint8, to_uint8_array
from robust.errors import RobustError

ARTIFACT_FORMAT = 1


class PatchFileError(RobustError):
    """A patch file or sidecar that is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class PatchArtifact:
    """A universal patch and everything needed to apply it again exactly."""

    patch: torch.Tensor  # [3, side, side] in [0, 1], uint8-representable
    source: str
    source_image_size: int
    area_fraction: float
    placement: str
    attack: str = "advclip-patch"
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        side = patch_side(self.source_image_size, self.area_fraction)
        if tuple(self.patch.shape) != (3, side, side):
            raise PatchFileError(
                f"patch is {tuple(self.patch.shape)} but a {self.area_fraction:.2%} patch at "
                f"{self.source_image_size} px must be (3, {side}, {side}); refit the patch"
            )
        object.__setattr__(self, "patch", quantize_uint8(self.patch.detach().float().cpu()))

    @property
    def side(self) -> int:
        return int(self.patch.shape[-1])

    def boxes(
        self, count: int, image_size: int, generator: torch.Generator | None = None
    ) -> PatchBoxes:
        """Where the patch goes on `count` images at `image_size` (same fraction and policy)."""
        side = patch_side(image_size, self.area_fraction)
        return sample_boxes(count, image_size, side, self.placement, generator)

    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Patched images at the images' own resolution (random placement needs `generator`)."""
        boxes = self.boxes(images.shape[0], int(images.shape[-1]), generator)
        return apply_patch(images, self.patch.to(images.device), boxes)

    def sidecar(self) -> dict[str, Any]:
        """Everything but the pixels, as JSON data."""
        return {
            "format": ARTIFACT_FORMAT,
            "attack": self.attack,
            "source": self.source,
            "source_image_size": self.source_image_size,
            "area_fraction": self.area_fraction,
            "side": self.side,
            "placement": self.placement,
            "seed": self.seed,
            "config": self.config,
            "curve": self.curve,
        }

    def save(self, png_path: Path | str) -> Path:
        """Write `png_path` and its sidecar (`.json` beside it); returns the PNG path."""
        png_path = Path(png_path)
        if png_path.suffix.lower() != ".png":
            raise PatchFileError(f"{png_path}: a patch is saved as a .png file; change the name")
        png_path.parent.mkdir(parents=True, exist_ok=True)
        pixels = torch.round(self.patch * 255.0).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(np.ascontiguousarray(pixels), mode="RGB").save(png_path, format="PNG")
        sidecar_path(png_path).write_text(json.dumps(self.sidecar(), indent=2) + "\n")
        return png_path


def _shown(value: Any) -> str:
    """A sidecar value as JSON, shortened to fit an error line."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(minimum: int) -> Callable[[Any], bool]:
    """A check for an integer >= minimum (JSON booleans are not numbers here)."""
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _fraction(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1


REQUIRED_FIELDS = ("source", "source_image_size", "area_fraction", "side", "placement")
# field -> (what it must be, check); `side` is checked here and then against the PNG.
SIDECAR_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "source": ("a victim name", lambda value: isinstance(value, str) and value != ""),
    "source_image_size": ("a positive whole number", _whole(1)),
    "area_fraction": ("a number between 0 and 1", _fraction),
    "side": ("a positive whole number", _whole(1)),
    "placement": (f"one of {', '.join(PLACEMENTS)}", lambda value: value in PLACEMENTS),
    "attack": ("a name", lambda value: isinstance(value, str)),
    "seed": ("a whole number >= 0", _whole(0)),
    "config": ("an object", lambda value: isinstance(value, dict)),
    "curve": (
        "a list of objects",
        lambda value: isinstance(value, list) and all(isinstance(row, dict) for row in value),
    ),
}


def sidecar_path(png_path: Path | str) -> Path:
    """The JSON sidecar of a patch PNG: same folder and stem, `.json`."""
    return Path(png_path).with_suffix(".json")


def load_patch(png_path: Path | str) -> PatchArtifact:
    """Read a patch PNG and its sidecar; every problem is one `PatchFileError` line."""
    png_path = Path(png_path)
    meta_path = sidecar_path(png_path)
    if not png_path.is_file():
        raise PatchFileError(
            f"{png_path}: patch file not found; train one with `robust patch train`"
        )
    if not meta_path.is_file():
        raise PatchFileError(
            f"{meta_path}: the patch's JSON sidecar is missing; keep it beside {png_path.name}"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PatchFileError(
            f"{meta_path}: unreadable sidecar ({error}); re-save the patch"
        ) from None
    fields = check_sidecar(meta, meta_path)
    try:
        with Image.open(png_path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise PatchFileError(
            f"{png_path}: not a readable PNG ({error}); re-save the patch"
        ) from None
    side = fields.pop("side")
    if pixels.shape != (side, side, 3):
        raise PatchFileError(
            f"{png_path}: image is {pixels.shape[1]}x{pixels.shape[0]} but its sidecar says "
            f"{side}x{side}; the PNG and {meta_path.name} do not belong together"
        )
    patch = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0
    return PatchArtifact(patch=patch, **fields)


def check_sidecar(meta: Any, meta_path: Path) -> dict[str, Any]:
    """The sidecar's fields, each checked for its kind and range (the file may have been
    edited by hand); one `PatchFileError` line naming the first bad field otherwise."""
    missing = [key for key in REQUIRED_FIELDS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise PatchFileError(f"{meta_path}: sidecar lacks {', '.join(missing)}; re-save the patch")
    fields: dict[str, Any] = {}
    for key, (kind, valid) in SIDECAR_FIELDS.items():
        if key not in meta:
            continue
        value = meta[key]
        if not valid(value):
            raise PatchFileError(
                f"{meta_path}: sidecar field {key!r} must be {kind}, got {_shown(value)}; fix "
                "it or re-save the patch"
            )
        fields[key] = value
    return fields


def random_patch_like(artifact: PatchArtifact, seed: int) -> PatchArtifact:
    """The control: uniform random pixels, same size, placement and source as `artifact`."""
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(artifact.patch.shape, generator=generator)
    fields = asdict(artifact) | {"patch": noise, "attack": "random-patch", "seed": int(seed)}
    fields["config"] = {"attack": "random-patch", "seed": int(seed), "distribution": "U[0,1]"}
    fields["curve"] = []
    return PatchArtifact(**fields)


def patch_boxes(
    artifact: PatchArtifact, count: int, image_size: int, seed: int, batch_size: int = 256
) -> PatchBoxes:
    """Where `patched_pixels` pastes the patch on `count` images (seeded, drawn per batch)."""
    generator = torch.Generator().manual_seed(int(seed))
    parts = [
        artifact.boxes(min(batch_size, count - start), image_size, generator)
        for start in range(0, count, batch_size)
    ]
    return PatchBoxes(*(torch.cat([getattr(p, f) for p in parts]) for f in ("top", "left", "side")))


def patched_pixels(
    artifact: PatchArtifact, pixels: np.ndarray, seed: int, batch_size: int = 256
) -> np.ndarray:
    """uint8 images `[N,H,W,3]` with the patch pasted at the artifact's placement (seeded)."""
    boxes = patch_boxes(artifact, len(pixels), int(pixels.shape[2]), seed, batch_size)
    chunks = []
    for start in range(0, len(pixels), batch_size):
        images = from_uint8_array(pixels[start : start + batch_size])
        chunk = slice(start, start + batch_size)
        chunk_boxes = PatchBoxes(boxes.top[chunk], boxes.left[chunk], boxes.side[chunk])
        chunks.append(to_uint8_array(apply_patch(images, artifact.patch, chunk_boxes)))
    return np.concatenate(chunks)
