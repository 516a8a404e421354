"""Defenses: input transformations, the DefendedVictim wrapper, and names for both."""

from robust.defenses.defended import DefendedVictim, bpda, defended_spec, load_defended_spec
from robust.defenses.registry import DEFENSE_FORMS, parse_defense
from robust.defenses.transforms import (
    BitDepthReduction,
    Defense,
    DefenseError,
    GaussianSmoothing,
    JpegCompression,
    MedianSmoothing,
    RandomResizePad,
)

__all__ = [
    "DEFENSE_FORMS",
    "BitDepthReduction",
    "DefendedVictim",
    "Defense",
    "DefenseError",
    "GaussianSmoothing",
    "JpegCompression",
    "MedianSmoothing",
    "RandomResizePad",
    "bpda",
    "defended_spec",
    "load_defended_spec",
    "parse_defense",
]
