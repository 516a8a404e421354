"""Defenses: input transformations, the DefendedVictim wrapper, and names for both."""

from robust.defenses import transforms
from robust.defenses.defended import DefendedVictim, bpda, defended_spec, load_defended_spec
from robust.defenses.registry import DEFENSE_FORMS, parse_defense
from robust.defenses.transforms import *  # noqa: F403 (every transform is the package's API)

__all__ = [
    *transforms.__all__,
    "DEFENSE_FORMS",
    "DefendedVictim",
    "bpda",
    "defended_spec",
    "load_defended_spec",
    "parse_defense",
]
