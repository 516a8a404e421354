"""Victim models behind one contract, created by name through the registry."""

from typing import Any

from robust.victims.zoo import KNOWN_VICTIMS, list_victims, load_victim

__all__ = ["KNOWN_VICTIMS", "Victim", "list_victims", "load_victim"]


def __getattr__(name: str) -> Any:
    """`Victim` loads torch, so it is imported on first use: the registry alone does not."""
    if name == "Victim":
        from robust.victims.base import Victim

        return Victim
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
