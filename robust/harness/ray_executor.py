"""The matrix on Ray: cells, and shards of a cell's dataset, as Ray tasks across GPUs/machines.

Each cell is one task with a resource request (a GPU when the spec's device is CUDA, a CPU
otherwise). Cells whose runner can split them (crafting, by batches) run as several shard
tasks plus a last task, scheduled by Ray after all its shards, that finishes the cache entry.
Nothing a task leaves behind is half-written: cache files are written atomically and an
entry counts only once its manifest exists, and results go back to the driver, the only
writer of the SQLite store. A task whose worker dies (killed, out of memory, node lost) is
retried up to `max_retries` times and resumes after its last finished batch; an error
raised by the cell itself is not retried: a `RobustError` (bad input) reaches the caller as
raised, anything else with the worker's traceback.

Workers import `robust` themselves: on a cluster, install vlp-robust on every node and keep
the run directory on storage that every node sees at the same path.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from robust.errors import RobustError

__all__ = ["RayExecutor"]

CellT = TypeVar("CellT")
ResultT = TypeVar("ResultT")

_INSTALL_HINT = "install it with pip install 'vlp-robust[ray]' or use --executor local"

# Per worker process: the most recent runner of each map() call, so consecutive cells on the
# same worker reuse its loaded dataset and model instead of reloading them for every task.
_WORKER_RUNNERS: dict[str, Any] = {}


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RobustError(
            f"the ray executor needs Ray, which is not installed; {_INSTALL_HINT}"
        ) from None
    return ray


def _worker_function(token: str, function: Any) -> Any:
    """The worker's copy of `function` for map call `token` (only the latest call is kept)."""
    if token not in _WORKER_RUNNERS:
        _WORKER_RUNNERS.clear()
        _WORKER_RUNNERS[token] = function
    return _WORKER_RUNNERS[token]


def _run_cell(token: str, function: Any, cell: Any) -> Any:
    return _worker_function(token, function)(cell)


def _join_cell(token: str, function: Any, cell: Any, *shards: Any) -> Any:
    return _worker_function(token, function).join(cell, list(shards))


class RayExecutor:
    """Fans cells out as Ray tasks; yields results in the cells' order, as the driver expects.

    `address`: a running cluster ("auto", "ray://host:10001", host:port); None joins the
    Ray instance this process already started, or starts a local one. `device`: the spec's
    device; "cuda" makes every task request `gpus_per_cell` GPUs and run on the GPU Ray
    assigned it. `shards`: how many tasks one craft cell is split into (None: one per GPU
    in the cluster on CUDA, no splitting on CPU).
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        device: str = "cpu",
        cpus_per_cell: float = 1.0,
        gpus_per_cell: float = 1.0,
        max_retries: int = 3,
        shards: int | None = None,
    ) -> None:
        self._ray = _import_ray()
        target = torch.device(device)
        if target.type == "cuda" and target.index not in (None, 0):
            raise RobustError(
                f"device {device!r} names one GPU, but under Ray each task gets the GPU Ray "
                "assigns it; set device: cuda"
            )
        if max_retries < 0:
            raise RobustError(f"max_retries must be 0 or more, got {max_retries}")
        if shards is not None and shards < 1:
            raise RobustError(f"shards must be 1 or more, got {shards}")
        self.address = address
        self.device = device
        self.on_gpu = target.type == "cuda"
        self.cpus_per_cell = float(cpus_per_cell)
        self.gpus_per_cell = float(gpus_per_cell) if self.on_gpu else 0.0
        self.max_retries = int(max_retries)
        self.shards = shards
        self._connected = False

    def _connect(self) -> None:
        """Join (or start) Ray once, on the first map call."""
        ray = self._ray
        if self._connected:
            return
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as error:
                where = self.address or "a local Ray instance"
                raise RobustError(
                    f"cannot connect to {where} ({error}); check --address, or start the "
                    "cluster with `ray start --head`"
                ) from None
        self._connected = True

    def _shard_count(self) -> int:
        if self.shards is not None:
            return self.shards
        if not self.on_gpu:
            return 1
        gpus = float(self._ray.cluster_resources().get("GPU", 0.0))
        return max(int(gpus // max(self.gpus_per_cell, 1e-9)), 1)

    def describe(self) -> dict[str, Any]:
        """The executor's settings and the resources of the cluster it joins (joining it)."""
        self._connect()
        return {
            "name": "ray",
            "ray_version": getattr(self._ray, "__version__", None),
            "address": self.address,
            "device": self.device,
            "cpus_per_cell": self.cpus_per_cell,
            "gpus_per_cell": self.gpus_per_cell,
            "max_retries": self.max_retries,
            "shards": self._shard_count(),
            "cluster_resources": {
                key: value
                for key, value in self._ray.cluster_resources().items()
                if key in ("CPU", "GPU", "memory")
            },
        }

    def map(
        self, function: Callable[[CellT], ResultT], cells: Iterable[CellT]
    ) -> Iterator[ResultT]:
        """Submit every cell at once, then yield each result as soon as its cell and all
        cells before it are done (the driver stores results in order)."""
        cells = list(cells)
        if not cells:
            return
        self._connect()
        ray = self._ray
        options = {
            "num_cpus": self.cpus_per_cell,
            "num_gpus": self.gpus_per_cell,
            "max_retries": self.max_retries,
            "retry_exceptions": False,
        }
        run_cell = ray.remote(_run_cell).options(**options)
        join_cell = ray.remote(_join_cell).options(**options)
        token = uuid.uuid4().hex
        shared = ray.put(function)
        parts = self._shard_count()
        split = getattr(function, "split", None)
        pending = []  # (cell, the ref of its result, the refs of its crafting shards)
        for cell in cells:
            shards = split(cell, parts) if callable(split) else None
            if shards:
                shard_refs = [run_cell.remote(token, shared, shard) for shard in shards]
                joined = join_cell.remote(token, shared, cell, *shard_refs)
                pending.append((cell, joined, shard_refs))
            else:
                pending.append((cell, run_cell.remote(token, shared, cell), []))
        fetched = 0
        try:
            for cell, ref, _ in pending:
                result = self._result(cell, ref)
                fetched += 1
                yield result
        finally:  # the driver stopped early (error, interrupt): drop the queued cells
            left = pending[fetched:]
            self._cancel_unfinished(
                [ref for _, cell_ref, shard_refs in left for ref in (cell_ref, *shard_refs)]
            )

    def _cancel_unfinished(self, refs: list[Any]) -> None:
        """Cancel the tasks that have not finished. A finished task is never cancelled:
        Ray 2.60 aborts the driver when a cancel races the reply of a task whose result
        (or error) is already out, which is how a cell's error first reaches us."""
        if not refs:
            return
        ray = self._ray
        _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        for ref in unfinished:
            ray.cancel(ref)

    def _result(self, cell: Any, ref: Any) -> Any:
        """The cell's result; its user error as raised, or one line when its workers died."""
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except exceptions.RayTaskError as error:
            if isinstance(error.cause, RobustError):  # bad input: its own one-line message
                raise error.cause from None
            raise  # a bug: keep the worker's traceback
        except exceptions.RayError as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else error
            raise RobustError(
                f"{cell} failed on Ray after {self.max_retries} retries ({reason}); finished "
                "cells are kept, run again to resume"
            ) from None
