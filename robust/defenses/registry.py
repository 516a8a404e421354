"""Defenses by name: "jpeg-q75", "bits-4", "gauss-5", "median-3", "resize-pad-1.15"."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from robust.defenses import transforms
from robust.defenses.transforms import Defense, DefenseError

# pattern -> how the captured parameter builds the defense
_FORMS: Final[tuple[tuple[str, re.Pattern[str], Callable[[str], Defense]], ...]] = (
    ("jpeg-qQUALITY", re.compile(r"^jpeg-q(\d+)$"), lambda v: transforms.JpegCompression(int(v))),
    ("bits-BITS", re.compile(r"^bits-(\d+)$"), lambda v: transforms.BitDepthReduction(int(v))),
    ("gauss-KERNEL", re.compile(r"^gauss-(\d+)$"), lambda v: transforms.GaussianSmoothing(int(v))),
    ("median-KERNEL", re.compile(r"^median-(\d+)$"), lambda v: transforms.MedianSmoothing(int(v))),
    (
        "resize-pad-RATIO",
        re.compile(r"^resize-pad-(\d+(?:\.\d+)?)$"),
        lambda v: transforms.RandomResizePad(float(v)),
    ),
)
DEFENSE_FORMS: Final[str] = ", ".join(form for form, _, _ in _FORMS)


def parse_defense(name: str) -> Defense:
    """The defense a name describes; one clear error listing the forms otherwise."""
    text = str(name).strip().lower()
    for _, pattern, build in _FORMS:
        match = pattern.match(text)
        if match:
            defense = build(match.group(1))
            if defense.name != text:
                raise DefenseError(f"write defense {name!r} as {defense.name!r}")
            return defense
    raise DefenseError(f"unknown defense {name!r}; use one of {DEFENSE_FORMS}")
