"""Executors: how the matrix's independent cells run, in-process or fanned out on Ray.

A cell is a small frozen dataclass naming one unit of work. Workers compute and return
results; only the driver writes to the SQLite store, so a distributed executor needs no
shared database, only the shared run directory that holds the adversarial-example cache.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from robust.errors import RobustError

__all__ = [
    "EXECUTORS",
    "Cell",
    "CleanCell",
    "CraftCell",
    "CraftShard",
    "EvalCell",
    "Executor",
    "LocalExecutor",
    "MODALITY_SPLIT",
    "PatchCell",
    "RETRIEVAL_ONLY",
    "TargetedCell",
    "Tasks",
    "best_available_executor",
    "describe_executor",
    "make_executor",
]

CellT = TypeVar("CellT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Tasks:
    """What an evaluation cell computes on its target, as data.

    The matrix asks for retrieval only (the default). Experiments add the world-label tasks
    (zero-shot and k-NN votes over clean features, `knn_k` neighbours) and captioning; with
    `where_supported`, a task the target cannot do is skipped instead of being an error.
    `targeted` reads the entry as a `TargetedCell`'s (image `i` paired with the target
    captions it carries) and scores retrieval as `robust.eval.targeted.targeted_retrieval`
    does: ITC only, batches of 128, no re-ranking. `modality_split` also scores retrieval on
    the two half-adversarial galleries (adversarial images with clean captions, clean images
    with adversarial captions), from this cell's encodings and the clean ones at the same
    geometry; on a clean cell it keeps the clean encodings for the evaluations that follow.
    """

    retrieval: bool = True
    labels: bool = False
    captions: bool = False
    knn_k: int = 10
    where_supported: bool = False
    targeted: bool = False
    modality_split: bool = False


RETRIEVAL_ONLY = Tasks()
MODALITY_SPLIT = Tasks(modality_split=True)


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
    tasks: Tasks = RETRIEVAL_ONLY


@dataclass(frozen=True)
class EvalCell:
    """Evaluate `target` on the cached adversarial examples of (attack, source, seed).

    `at` names the (image_size, resize_mode) of an entry made for this target's geometry (a
    `PatchCell`'s); None is the matrix's entry, crafted at the source's own resolution.
    """

    attack_label: str
    source: str
    target: str
    seed: int
    tasks: Tasks = RETRIEVAL_ONLY
    at: tuple[int, str] | None = None


class _MadeAtTargetGeometry:
    """A cell whose cache entry is made at one target's geometry names it as `at`."""

    image_size: int
    resize_mode: str

    @property
    def at(self) -> tuple[int, str]:
        return (self.image_size, self.resize_mode)


@dataclass(frozen=True)
class PatchCell(_MadeAtTargetGeometry):
    """Paste a saved patch (`patch_file`, PNG plus sidecar) on every dataset image at one
    (image_size, resize_mode) and cache the result like crafted examples.

    `source` is the victim the patch was fitted on and `seed` the seed that made the patch
    (its rows' seed); placements are drawn from `placement_seed`, so every geometry and
    every patch of one run sees the same boxes.
    """

    attack_label: str
    source: str
    seed: int
    patch_file: str
    placement_seed: int
    image_size: int
    resize_mode: str


@dataclass(frozen=True)
class TargetedCell(_MadeAtTargetGeometry):
    """Cache one gallery of AnyAttack's (clean, target) pairs at one (image_size,
    resize_mode): "adv" (clean plus the decoder's noise), "floor" (clean), "ceiling"
    (target) or "noise" (the noise mapped from [-eps, eps] to [0, 1]).

    The pairs are `pair_images(dataset, pairs, seed)`; cleans are at the decoder's size and
    targets at the encoder's (`source`). The float images are resized to the cell's geometry
    before the uint8 rounding, exactly as each victim received them in memory, so an entry
    per victim geometry holds the pixels that victim sees. `decoder_file` is the decoder as
    saved in the run directory.
    """

    attack_label: str
    source: str
    seed: int
    decoder_file: str
    eps: float
    pairs: int
    gallery: str
    image_size: int
    resize_mode: str


@dataclass(frozen=True)
class CraftShard:
    """Some batches of a craft cell, crafted (not finished) by one worker.

    Batches are independent (each has its own seeded generator), so shards of one cell can
    run on different workers; the cell itself then only finishes the entry.
    """

    cell: CraftCell
    batches: tuple[int, ...]


Cell = CraftCell | CraftShard | PatchCell | TargetedCell | CleanCell | EvalCell


class Executor(Protocol):
    """Runs `function` on every cell and yields the results in the cells' order."""

    def map(
        self, function: Callable[[CellT], ResultT], cells: Iterable[CellT]
    ) -> Iterator[ResultT]: ...

    def describe(self) -> dict[str, Any]:
        """What ran the cells, for the run's record (name plus executor settings)."""
        ...


class LocalExecutor:
    """Sequential and in-process: each result is yielded as soon as its cell finishes, so
    the driver stores it before the next cell starts (what makes a killed run resumable)."""

    def map(
        self, function: Callable[[CellT], ResultT], cells: Iterable[CellT]
    ) -> Iterator[ResultT]:
        for cell in cells:
            yield function(cell)

    def describe(self) -> dict[str, Any]:
        return {"name": "local"}


def _local(*, device: str = "cpu", address: str | None = None) -> Executor:
    if address is not None:
        raise RobustError("--address is for the ray executor; add --executor ray or drop it")
    return LocalExecutor()


def _ray(*, device: str = "cpu", address: str | None = None) -> Executor:
    from robust.harness.ray_executor import RayExecutor

    return RayExecutor(device=device, address=address)


EXECUTORS: dict[str, Callable[..., Executor]] = {"local": _local, "ray": _ray}


def make_executor(name: str, *, device: str = "cpu", address: str | None = None) -> Executor:
    """The named executor for cells on `device`; `address` is a Ray cluster to join.

    One clear error for unknown names, and for Ray when it is not installed.
    """
    if name not in EXECUTORS:
        raise RobustError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[name](device=device, address=address)


def best_available_executor() -> str:
    """ "ray" when Ray is installed, else "local": what the demo runs by default."""
    return "ray" if importlib.util.find_spec("ray") is not None else "local"


def describe_executor(executor: Any) -> dict[str, Any]:
    """`executor.describe()`, or its class name for executors without one."""
    describe = getattr(executor, "describe", None)
    return dict(describe()) if callable(describe) else {"name": type(executor).__name__}
