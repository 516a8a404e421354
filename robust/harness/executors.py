"""Executors: how the matrix's independent cells run, in-process now, fanned out later (Ray).

A cell is a small frozen dataclass naming one unit of work. Workers compute and return
results; only the driver writes to the SQLite store, so a distributed executor needs no
shared database, only the shared run directory that holds the adversarial-example cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from robust.errors import RobustError

__all__ = [
    "EXECUTORS",
    "Cell",
    "CleanCell",
    "CraftCell",
    "EvalCell",
    "Executor",
    "LocalExecutor",
    "make_executor",
]

CellT = TypeVar("CellT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class CraftCell:
    """Craft (and cache) the adversarial examples of one attack on one source, one seed."""

    attack_label: str
    source: str
    seed: int


@dataclass(frozen=True)
class CleanCell:
    """Evaluate `target` on clean images quantised at a source's resolution and resize mode.

    Sources sharing (image_size, resize_mode) share this cell: identical preprocessing is
    evaluated once.
    """

    target: str
    image_size: int
    resize_mode: str


@dataclass(frozen=True)
class EvalCell:
    """Evaluate `target` on the cached adversarial examples of (attack, source, seed)."""

    attack_label: str
    source: str
    target: str
    seed: int


Cell = CraftCell | CleanCell | EvalCell


class Executor(Protocol):
    """Runs `function` on every cell and yields the results in the cells' order."""

    def map(
        self, function: Callable[[CellT], ResultT], cells: Iterable[CellT]
    ) -> Iterator[ResultT]: ...


class LocalExecutor:
    """Sequential and in-process: each result is yielded as soon as its cell finishes, so
    the driver stores it before the next cell starts (what makes a killed run resumable)."""

    def map(
        self, function: Callable[[CellT], ResultT], cells: Iterable[CellT]
    ) -> Iterator[ResultT]:
        for cell in cells:
            yield function(cell)


EXECUTORS: dict[str, Callable[[], Executor]] = {"local": LocalExecutor}


def make_executor(name: str) -> Executor:
    """The executor a spec names; one clear error for names not available here."""
    if name not in EXECUTORS:
        raise RobustError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name]()
