"""ITM re-ranking of the ITC top-k candidates, batched over candidate pairs.

Each image's ITM inputs (its vision tokens, or for ALBEF/TCL their cross-attention keys
and values) and each caption's ITM inputs are computed once through the victim's
`ItmScorer`; per query only the fusion layers run on its k candidates, in pair batches.
Scores combine per family (`Victim.retrieval_score_fusion`): ALBEF/TCL rank by the ITM logit
alone, BLIP by ITM logit + ITC cosine.
"""

from __future__ import annotations

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
    return FLICKR_K_TEST if dataset.num_images <= 1000 else COCO_K_TEST


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
        from robust.data.images import load_images

        progress = ensure_progress(progress)
        scorer = victim.itm_scorer()
        image_inputs: list[Tensor] = []
        text_inputs: list[Tensor] = []
        text_masks: list[Tensor] = []
        with torch.no_grad():
            with progress.task(f"{victim.name}: ITM image cache", dataset.num_images) as task:
                for start in range(0, dataset.num_images, batch_size):
                    indices = range(start, min(start + batch_size, dataset.num_images))
                    images = load_images(
                        dataset.images, indices, victim.image_size, victim.resize_mode
                    ).to(victim.device)
                    image_inputs.append(scorer.image_inputs(scorer.image_tokens(images)))
                    task.advance(len(indices))
            with progress.task(f"{victim.name}: ITM text cache", dataset.num_captions) as task:
                for start in range(0, dataset.num_captions, batch_size):
                    texts = dataset.captions[start : start + batch_size]
                    inputs, mask = scorer.text_inputs(texts)
                    text_inputs.append(inputs)
                    text_masks.append(mask)
                    task.advance(len(texts))
        length = max(mask.shape[1] for mask in text_masks)
        text_mask = torch.cat([_pad_length(m, length) for m in text_masks])
        # Columns that are padding in every caption change no score: drop them once here
        # rather than run them through the fusion layers for every candidate pair.
        text_hidden, text_mask = trim_padding(
            torch.cat([_pad_length(t, length) for t in text_inputs]), text_mask
        )
        return cls(
            victim,
            torch.cat(image_inputs),
            text_hidden,
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


def _pad_length(tensor: Tensor, length: int) -> Tensor:
    """Zero-pad dim 1 to `length` (masks pad with 0, so padded positions are ignored)."""
    missing = length - tensor.shape[1]
    if missing == 0:
        return tensor
    pad = [0, 0] * (tensor.ndim - 2) + [0, missing]
    return F.pad(tensor, pad)


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
    k_test = default_k_test(dataset) if k_test is None else k_test
    image_features, text_features = encode_dataset(
        victim, dataset, batch_size=batch_size, progress=progress
    )
    itc = rank_from_features(image_features, text_features, dataset.caption_image)
    reranker = ItmReranker.build(
        victim,
        dataset,
        image_features,
        text_features,
        batch_size=batch_size,
        pair_batch_size=pair_batch_size,
        progress=progress,
    )
    reranked = rank_from_features(
        image_features,
        text_features,
        dataset.caption_image,
        k_test=k_test,
        reranker=reranker,
        progress=progress,
    )
    return itc, reranked
