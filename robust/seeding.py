"""Seeded draws for code that only reads torch's global generator, without disturbing it.

`nn.Module` initialisation and third-party attacks (torchattacks) draw from the global
generator and take no `torch.Generator`. Running them inside `global_generator_seeded`
makes those draws a function of an explicit seed, and the caller's global state is the
same afterwards as before, so nothing outside the block depends on what ran inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def global_generator_seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global generator (CPU, and `device` when it is CUDA) for one block only."""
    cuda_devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        yield
