"""Downstream classification on frozen features: zero-shot prompts and k-NN, world labels.

A universal patch is meant to break tasks its author never saw. On the world, every image
has attribute labels; each task below turns them into a set of acceptable classes per
image ("shape": the shapes present, "color": the colours present, "background": the one
background), so a prediction is correct when it is in the image's set.

- zero-shot: each class is a prompt (several templates, embeddings averaged) from the
  world's attribute vocabulary; the image's class is the most similar prompt;
- k-NN: majority vote of the k nearest *clean* reference images (cosine, leave-one-out
  when queries and references are the same images), the linear-probe-free AdvCLIP "solo"
  setting.

Metrics: accuracy, and for attacked images the accuracy drop and the fooling rate (the
fraction of images whose prediction changes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from robust.errors import RobustError
from robust.eval.prompts import PromptTask, world_prompt_tasks

# the shipped world prompt files (robust/prompts/), the same ones `robust zeroshot` uses
WORLD_TASKS: tuple[PromptTask, ...] = world_prompt_tasks()


def class_embeddings(encode_text, task: PromptTask) -> torch.Tensor:
    """`[C, D]` L2-normalised prompt embeddings, averaged over templates."""
    with torch.no_grad():
        rows = [
            torch.nn.functional.normalize(encode_text(p).mean(0), dim=-1) for p in task.prompts()
        ]
    return torch.stack(rows)


def zero_shot_predictions(features: torch.Tensor, classes: torch.Tensor) -> np.ndarray:
    """Index of the most similar class prompt for each image feature."""
    return (features.float() @ classes.float().t()).argmax(dim=1).cpu().numpy()


def knn_predictions(
    queries: torch.Tensor,
    references: torch.Tensor,
    reference_sets: Sequence[frozenset[str]],
    classes: Sequence[str],
    k: int,
    *,
    leave_one_out: bool,
) -> np.ndarray:
    """Class index voted by the k most similar references (ties: the earlier class)."""
    if k < 1:
        raise RobustError(f"k-NN needs k >= 1, got {k}")
    similarity = queries.float() @ references.float().t()
    if leave_one_out:
        similarity.fill_diagonal_(-float("inf"))
    count = min(k, references.shape[0] - int(leave_one_out))
    neighbours = similarity.topk(count, dim=1).indices.cpu().numpy()
    position = {name: index for index, name in enumerate(classes)}
    predictions = np.empty(len(neighbours), dtype=np.int64)
    for row, indices in enumerate(neighbours):
        votes = Counter(name for index in indices for name in reference_sets[index])
        predictions[row] = min(
            position[name] for name, n in votes.items() if n == max(votes.values())
        )
    return predictions


def accuracy(predictions: np.ndarray, classes: Sequence[str], sets: Sequence[frozenset]) -> float:
    """Fraction of predictions that are among the image's acceptable classes."""
    hits = [classes[p] in acceptable for p, acceptable in zip(predictions, sets, strict=True)]
    return float(np.mean(hits))


def attacked_metrics(
    task: str,
    clean: np.ndarray,
    attacked: np.ndarray,
    classes: Sequence[str],
    sets: Sequence[frozenset],
) -> dict[str, float]:
    """`{task}_acc`, `{task}_acc_drop` (clean minus attacked) and `{task}_fooling_rate`."""
    clean_accuracy = accuracy(clean, classes, sets)
    attacked_accuracy = accuracy(attacked, classes, sets)
    return {
        f"{task}_acc": attacked_accuracy,
        f"{task}_acc_drop": clean_accuracy - attacked_accuracy,
        f"{task}_fooling_rate": float(np.mean(clean != attacked)),
    }
