"""Victim models behind one contract, created by name through the registry."""

from robust.victims.base import Victim
from robust.victims.zoo import KNOWN_VICTIMS, list_victims, load_victim

__all__ = ["KNOWN_VICTIMS", "Victim", "list_victims", "load_victim"]
