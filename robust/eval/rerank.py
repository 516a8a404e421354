"""ITM re-ranking of the ITC top-k candidates, batched over candidate pairs.

Each image's ITM inputs (its vision tokens, or for ALBEF/TCL their cross-attention keys
and values) and each caption's ITM inputs are computed once through the victim's
`ItmScorer`; per query only the fusion layers run on its k candidates, in pair batches.
Scores combine per family (`Victim.retrieval_score_fusion`): ALBEF/TCL rank by the ITM logit
alone, BLIP by ITM logit + ITC cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robust.data.dataset import CaptionDataset
from robust.eval.retrieval import RetrievalResult, encode_dataset, rank_from_features
from robust.progress import Progress, ensure_progress
from robust.victims.albef import trim_padding
from robust.victims.base import Victim

FLICKR_K_TEST = 128
COCO_K_TEST = 256


def default_k_test(dataset: CaptionDataset) -> int:
    """The official k_test: 128 for Flickr-size (1K) galleries, 256 for COCO-size (5K)."""
    return _official_k_test(dataset.num_images)


def _official_k_test(num_images: int) -> int:
    return FLICKR_K_TEST if num_images <= 1000 else COCO_K_TEST


class ItmReranker:
    """A `Reranker` over one dataset: cached image and text ITM inputs, batched ITM."""

    def __init__(
        self,
        victim: Victim,
        image_inputs: Tensor,
        text_inputs: Tensor,
        text_mask: Tensor,
        image_features: Tensor,
        text_features: Tensor,
        *,
        pair_batch_size: int = 256,
    ) -> None:
        if "itm" not in victim.capabilities:
            raise ValueError(f"{victim.name} has no ITM head; re-ranking needs a fusion victim")
        if pair_batch_size <= 0:
            raise ValueError(f"pair_batch_size must be positive, got {pair_batch_size}")
        self.victim = victim
        self.scorer = victim.itm_scorer()
        self.image_inputs = image_inputs
        self.text_inputs = text_inputs
        self.text_mask = text_mask
        self.image_features = image_features
        self.text_features = text_features
        self.pair_batch_size = pair_batch_size
        self.add_itc = victim.retrieval_score_fusion == "itm+itc"

    @classmethod
    def build(
        cls,
        victim: Victim,
        dataset: CaptionDataset,
        image_features: Tensor,
        text_features: Tensor,
        *,
        batch_size: int = 64,
        pair_batch_size: int = 256,
        progress: Progress | None = None,
    ) -> ItmReranker:
        """Compute the per-image and per-caption caches for `dataset` in batches."""
        image_inputs = itm_image_inputs(victim, dataset, batch_size=batch_size, progress=progress)
        text_inputs, text_mask = itm_text_inputs(
            victim, dataset.captions, batch_size=batch_size, progress=progress
        )
        return cls(
            victim,
            image_inputs,
            text_inputs,
            text_mask,
            image_features.to(victim.device),
            text_features.to(victim.device),
            pair_batch_size=pair_batch_size,
        )

    def score_image_queries(self, image_indices: Tensor, text_candidates: Tensor) -> Tensor:
        pairs_image = image_indices.repeat_interleave(text_candidates.shape[1])
        return self._score_pairs(pairs_image, text_candidates.reshape(-1)).view_as(text_candidates)

    def score_text_queries(self, text_indices: Tensor, image_candidates: Tensor) -> Tensor:
        pairs_text = text_indices.repeat_interleave(image_candidates.shape[1])
        return self._score_pairs(image_candidates.reshape(-1), pairs_text).view_as(image_candidates)

    def _score_pairs(self, image_index: Tensor, text_index: Tensor) -> Tensor:
        device = self.image_inputs.device
        image_index = image_index.to(device)
        text_index = text_index.to(device)
        scores = []
        with torch.no_grad():
            for start in range(0, image_index.numel(), self.pair_batch_size):
                images = image_index[start : start + self.pair_batch_size]
                texts = text_index[start : start + self.pair_batch_size]
                logits = self.scorer.match_logits(
                    self.image_inputs[images], self.text_inputs[texts], self.text_mask[texts]
                ).float()
                if self.add_itc:
                    logits = logits + (self.image_features[images] * self.text_features[texts]).sum(
                        -1
                    )
                scores.append(logits)
        return torch.cat(scores).cpu()


def itm_image_inputs(
    victim: Victim,
    dataset: CaptionDataset,
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> Tensor:
    """Every image's ITM inputs `[N, ...]` (the victim's `ItmScorer` half), in batches."""
    from robust.data.images import load_images

    progress = ensure_progress(progress)
    scorer = victim.itm_scorer()
    image_inputs: list[Tensor] = []
    with torch.no_grad():
        with progress.task(f"{victim.name}: ITM image cache", dataset.num_images) as task:
            for start in range(0, dataset.num_images, batch_size):
                indices = range(start, min(start + batch_size, dataset.num_images))
                images = load_images(
                    dataset.images, indices, victim.image_size, victim.resize_mode
                ).to(victim.device)
                image_inputs.append(scorer.image_inputs(scorer.image_tokens(images)))
                task.advance(len(indices))
    return torch.cat(image_inputs)


def itm_text_inputs(
    victim: Victim,
    captions: Sequence[str],
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> tuple[Tensor, Tensor]:
    """Every caption's ITM inputs `[T, L, ...]` and padding mask `[T, L]`, in batches."""
    progress = ensure_progress(progress)
    scorer = victim.itm_scorer()
    text_inputs: list[Tensor] = []
    text_masks: list[Tensor] = []
    with torch.no_grad():
        with progress.task(f"{victim.name}: ITM text cache", len(captions)) as task:
            for start in range(0, len(captions), batch_size):
                texts = captions[start : start + batch_size]
                inputs, mask = scorer.text_inputs(texts)
                text_inputs.append(inputs)
                text_masks.append(mask)
                task.advance(len(texts))
    length = max(mask.shape[1] for mask in text_masks)
    text_mask = torch.cat([_pad_length(m, length) for m in text_masks])
    # Columns that are padding in every caption change no score: drop them once here
    # rather than run them through the fusion layers for every candidate pair.
    return trim_padding(torch.cat([_pad_length(t, length) for t in text_inputs]), text_mask)


def _pad_length(tensor: Tensor, length: int) -> Tensor:
    """Zero-pad dim 1 to `length` (masks pad with 0, so padded positions are ignored)."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.ndim - 2) + [0, missing]
    return F.pad(tensor, pad)


@dataclass(frozen=True)
class EncodedGallery:
    """One victim's encodings of a gallery's images and captions: ITC features, plus ITM
    inputs where the victim re-ranks. Halves of two galleries combine (`rank_encoded`), so a
    gallery that mixes one's images with another's captions is scored without re-encoding."""

    image_features: Tensor
    text_features: Tensor
    image_inputs: Tensor | None = None
    text_inputs: Tensor | None = None
    text_mask: Tensor | None = None


def encode_gallery(
    victim: Victim,
    dataset: CaptionDataset,
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> EncodedGallery:
    """ITC features of `dataset`, and for an ITM victim its images' and captions' ITM inputs."""
    image_features, text_features = encode_dataset(
        victim, dataset, batch_size=batch_size, progress=progress
    )
    if "itm" not in victim.capabilities:
        return EncodedGallery(image_features, text_features)
    image_inputs = itm_image_inputs(victim, dataset, batch_size=batch_size, progress=progress)
    text_inputs, text_mask = itm_text_inputs(
        victim, dataset.captions, batch_size=batch_size, progress=progress
    )
    return EncodedGallery(image_features, text_features, image_inputs, text_inputs, text_mask)


def rank_encoded(
    victim: Victim,
    images: EncodedGallery,
    texts: EncodedGallery,
    caption_image: np.ndarray,
    *,
    k_test: int | None = None,
    pair_batch_size: int = 256,
    progress: Progress | None = None,
) -> tuple[RetrievalResult, RetrievalResult | None]:
    """(ITC result, ITM re-ranked result or None) of `images`' images against `texts`'
    captions; `k_test` None is the official value for the gallery's size."""
    itc = rank_from_features(
        images.image_features, texts.text_features, caption_image, progress=progress
    )
    if images.image_inputs is None or texts.text_inputs is None or texts.text_mask is None:
        return itc, None
    if k_test is None:
        k_test = _official_k_test(images.image_features.shape[0])
    reranker = ItmReranker(
        victim,
        images.image_inputs,
        texts.text_inputs,
        texts.text_mask,
        images.image_features.to(victim.device),
        texts.text_features.to(victim.device),
        pair_batch_size=pair_batch_size,
    )
    reranked = rank_from_features(
        images.image_features,
        texts.text_features,
        caption_image,
        k_test=k_test,
        reranker=reranker,
        progress=progress,
    )
    return itc, reranked


def evaluate_reranked(
    victim: Victim,
    dataset: CaptionDataset,
    *,
    k_test: int | None = None,
    batch_size: int = 64,
    pair_batch_size: int = 256,
    progress: Progress | None = None,
) -> tuple[RetrievalResult, RetrievalResult]:
    """(ITC-only result, ITM re-ranked result) of a fusion victim on `dataset`."""
    if "itm" not in victim.capabilities:
        raise ValueError(f"{victim.name} has no ITM head; re-ranking needs a fusion victim")
    gallery = encode_gallery(victim, dataset, batch_size=batch_size, progress=progress)
    itc, reranked = rank_encoded(
        victim,
        gallery,
        gallery,
        dataset.caption_image,
        k_test=k_test,
        pair_batch_size=pair_batch_size,
        progress=progress,
    )
    assert reranked is not None  # an ITM victim's gallery holds its ITM inputs
    return itc, reranked
