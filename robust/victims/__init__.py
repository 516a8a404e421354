"""Victim models behind one contract, created by name through the registry."""

from robust.victims.base import Victim
from robust.victims.registry import (
    KNOWN_VICTIMS,
    list_victims,
    load_victim,
    register_victim_family,
)

__all__ = ["KNOWN_VICTIMS", "Victim", "list_victims", "load_victim", "register_victim_family"]
