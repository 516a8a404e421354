"""Errors that end in one clear line for the user: what is wrong and how to fix it."""

from __future__ import annotations


class RobustError(Exception):
    """Base for user-facing errors; the CLI prints the message alone and exits with code 2."""


class UnknownVictimError(RobustError, KeyError):
    """A victim name or spec that the registry cannot resolve."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(RobustError, FileNotFoundError):
    """Checkpoint files that are not on this machine."""


class CapabilityError(RobustError, TypeError):
    """A victim asked for something its family cannot do (e.g. ITM on CLIP)."""
