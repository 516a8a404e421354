"""A fitted universal patch as a file pair: lossless PNG pixels plus a JSON sidecar.

`patch.png` holds the patch at its source resolution; `patch.json` beside it records the
source victim, its resolution, the area fraction, the placement policy, the attack's full
config, the seed and the training curve. The in-memory patch is always uint8-representable,
so saving and reloading gives bit-identical patched images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from robust.attacks.patch_geometry import (
    PatchBoxes,
    apply_patch,
    patch_side,
    sample_boxes,
)
from robust.data.images import quantize_uint8
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
    required = ("source", "source_image_size", "area_fraction", "side", "placement")
    missing = [key for key in required if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise PatchFileError(f"{meta_path}: sidecar lacks {', '.join(missing)}; re-save the patch")
    try:
        with Image.open(png_path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise PatchFileError(
            f"{png_path}: not a readable PNG ({error}); re-save the patch"
        ) from None
    side = int(meta["side"])
    if pixels.shape != (side, side, 3):
        raise PatchFileError(
            f"{png_path}: image is {pixels.shape[1]}x{pixels.shape[0]} but its sidecar says "
            f"{side}x{side}; the PNG and {meta_path.name} do not belong together"
        )
    patch = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0
    fields = {key: meta[key] for key in ("attack", "seed", "config", "curve") if key in meta}
    return PatchArtifact(
        patch=patch,
        source=str(meta["source"]),
        source_image_size=int(meta["source_image_size"]),
        area_fraction=float(meta["area_fraction"]),
        placement=str(meta["placement"]),
        **fields,
    )


def random_patch_like(artifact: PatchArtifact, seed: int) -> PatchArtifact:
    """The control: uniform random pixels, same size, placement and source as `artifact`."""
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(artifact.patch.shape, generator=generator)
    fields = asdict(artifact) | {"patch": noise, "attack": "random-patch", "seed": int(seed)}
    fields["config"] = {"attack": "random-patch", "seed": int(seed), "distribution": "U[0,1]"}
    fields["curve"] = []
    return PatchArtifact(**fields)
