"""The learning-rate schedule and the optimiser step every zoo recipe trains with."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def cosine_learning_rate(
    peak: float, total_steps: int, warmup_fraction: float
) -> Callable[[int], float]:
    """Linear warmup to `peak` over `warmup_fraction` of the steps (at least one), then
    cosine decay to zero at `total_steps`."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def learning_rate(step: int) -> float:
        if step < warmup:
            return peak * (step + 1) / warmup
        fraction = (step - warmup) / max(1, total_steps - warmup)
        return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, fraction)))

    return learning_rate


def clipped_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters: Iterable[torch.Tensor]
) -> float:
    """One optimiser step on `loss` with the gradient norm clipped at 1.0; the loss value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    return float(loss.detach())
