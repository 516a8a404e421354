"""In-batch negatives for the image-text matching (ITM) head of the fusion toys.

ALBEF and BLIP draw each ITM negative from the in-batch ITC similarity ("hard" negatives).
From a fresh cross-attention that alone leaves ITM at its 1-in-3 prior on the world, whose
hard negatives differ from the positive by one attribute: a share of uniformly drawn
("easy") negatives, falling to none over training, first teaches the head to read the
image (`itm_easy_schedule` in the ALBEF/TCL and BLIP recipes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robust.errors import RobustError


def sample_negatives(
    similarity: torch.Tensor,
    positives: torch.Tensor,
    generator: torch.Generator,
    easy_fraction: float = 0.0,
) -> torch.Tensor:
    """One negative column per row: drawn with probability softmax(similarity) over
    non-positives (hard), or for `easy_fraction` of the rows uniformly over them (easy).
    Rows without any non-positive fall back to uniform. Draws run on the CPU generator."""
    with torch.no_grad():
        weights = (F.softmax(similarity.float(), dim=1) + 1e-5).cpu()
        easy = torch.rand(len(weights), generator=generator) < easy_fraction
        weights[easy] = 1.0
        weights = weights.masked_fill(positives.cpu(), 0)
        empty = weights.sum(dim=1) == 0
        weights[empty] = 1.0
        drawn = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return drawn.to(similarity.device)


def check_easy_schedule(schedule: tuple[float, float], recipe: str) -> tuple[float, float]:
    """The schedule as a tuple of two shares in [0, 1] (JSON records hold it as a list), or
    one error naming the recipe."""
    schedule = tuple(float(share) for share in schedule)
    if len(schedule) != 2 or not all(0.0 <= share <= 1.0 for share in schedule):
        raise RobustError(
            f"recipe {recipe}: itm_easy_schedule must be two shares in [0, 1] (first and "
            f"last step), got {schedule}"
        )
    return schedule  # type: ignore[return-value]


def easy_share(schedule: tuple[float, float], step: int, total_steps: int) -> float:
    """The share of easy negatives at `step`: linear from the schedule's first to last value."""
    first, last = schedule
    return first + (last - first) * step / max(1, total_steps - 1)
