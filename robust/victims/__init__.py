"""Victim models behind one contract, created by name through the registry."""

from typing import Any

from robust.victims.registry import (
    KNOWN_VICTIMS,
    list_victims,
    load_victim,
    register_victim_family,
)

__all__ = ["KNOWN_VICTIMS", "Victim", "list_victims", "load_victim", "register_victim_family"]


def __getattr__(name: str) -> Any:
    """`Victim` loads torch, so it is imported on first use: the registry alone does not."""
    if name == "Victim":
        from robust.victims.base import Victim

        return Victim
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
