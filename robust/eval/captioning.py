"""Captioning evaluation of a captioner victim on a dataset: generate, then score."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robust.data.dataset import CaptionDataset
from robust.errors import RobustError
from robust.eval.caption_metrics import caption_metrics
from robust.progress import Progress, ensure_progress
from robust.victims.base import Victim


@dataclass(frozen=True)
class CaptionEvaluation:
    """Generated captions (one per image, dataset order) and their metrics."""

    captions: tuple[str, ...]
    metrics: dict[str, float]


def generate_dataset_captions(
    victim: Victim,
    dataset: CaptionDataset,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> list[str]:
    """One generated caption per image, batched, at the victim's resolution."""
    from robust.data.images import load_images

    if "caption" not in victim.capabilities:
        raise RobustError(
            f"{victim.name} cannot generate captions; use a captioner such as toy-blip-cap "
            "or blip-cap-base"
        )
    progress = ensure_progress(progress)
    captions: list[str] = []
    with torch.no_grad(), progress.task(f"{victim.name}: captions", dataset.num_images) as task:
        for start in range(0, dataset.num_images, batch_size):
            indices = range(start, min(start + batch_size, dataset.num_images))
            images = load_images(dataset.images, indices, victim.image_size, victim.resize_mode)
            captions.extend(victim.generate_captions(images.to(victim.device)))
            task.advance(len(indices))
    return captions


def evaluate_captioning(
    victim: Victim,
    dataset: CaptionDataset,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> CaptionEvaluation:
    """Captions of every image scored against the dataset's references (BLEU, ROUGE-L, CIDEr)."""
    captions = generate_dataset_captions(victim, dataset, batch_size=batch_size, progress=progress)
    references = dataset.captions_of(range(dataset.num_images))
    return CaptionEvaluation(tuple(captions), caption_metrics(captions, references))
