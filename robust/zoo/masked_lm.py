"""BERT's masked-language-model objective for the toy zoo's text and fusion encoders.

`mask_tokens` trains toy-mlm; `MaskedLmHead` gives ALBEF/TCL's fusion encoder the MLM term
of their pre-training: predicting masked caption words from the text *and the image* is
what teaches the fusion layers' cross-attention to look up each word's object (colour,
shape, position) in the image, which ITM alone learns only slowly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# BERT's masking: of the chosen tokens 80% become [MASK], 10% a random token, 10% stay.
MASK_REPLACE_FRACTION = 0.8
MASK_RANDOM_FRACTION = 0.1


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer,
    generator: torch.Generator,
    *,
    mask_probability: float = 0.15,
    replace_fraction: float = MASK_REPLACE_FRACTION,
    random_fraction: float = MASK_RANDOM_FRACTION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (corrupted ids, labels with -100 wherever nothing is predicted).

    Each real, non-special token is chosen with `mask_probability`; a chosen token becomes
    `[MASK]` (80%), a random non-special token (10%) or stays (10%).
    """
    special = torch.tensor(tokenizer.all_special_ids)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special)
    draws = torch.rand(input_ids.shape, generator=generator)
    chosen = eligible & (draws < mask_probability)
    labels = input_ids.masked_fill(~chosen, -100)
    corrupted = input_ids.clone()
    kind = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (kind < replace_fraction)
    to_random = chosen & (kind >= replace_fraction) & (kind < replace_fraction + random_fraction)
    corrupted[to_mask] = tokenizer.mask_token_id
    first_word = max(tokenizer.all_special_ids) + 1
    random_ids = torch.randint(first_word, len(tokenizer), input_ids.shape, generator=generator)
    corrupted[to_random] = random_ids[to_random]
    return corrupted, labels


class MaskedLmHead(nn.Module):
    """BERT's MLM head (`cls.predictions`): dense + GELU + LayerNorm, then the word
    embeddings (tied, passed in at call time so they are not a second copy) plus a bias.

    Training-only: ALBEF's retrieval checkpoints do not keep `text_encoder.cls.*` and the
    loader drops it, so the head is never saved with a toy.
    """

    def __init__(self, hidden_size: int, vocab_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(hidden))) @ word_embeddings.T + self.bias

    def load_masked_lm(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Copy a `BertForMaskedLM`'s `cls.predictions.*` tensors in; returns their names.

        A head with room for a larger vocabulary (a recipe on another world keeps room for
        any world's) takes the masked LM's output bias into its first rows: the ids beyond
        are ones the masked LM's tokenizer never produces."""
        names = {
            "cls.predictions.transform.dense.weight": self.dense.weight,
            "cls.predictions.transform.dense.bias": self.dense.bias,
            "cls.predictions.transform.LayerNorm.weight": self.norm.weight,
            "cls.predictions.transform.LayerNorm.bias": self.norm.bias,
            "cls.predictions.bias": self.bias,
        }
        missing = [name for name in names if name not in state]
        if missing:
            raise KeyError(f"the masked LM has no {missing[0]}; it is not a BertForMaskedLM")
        with torch.no_grad():
            for name, parameter in names.items():
                value = state[name]
                fits = value.shape == parameter.shape or (
                    name == "cls.predictions.bias" and len(value) <= len(parameter)
                )
                if not fits:
                    raise ValueError(
                        f"{name} is {tuple(value.shape)} but the head needs "
                        f"{tuple(parameter.shape)}"
                    )
                parameter[: len(value)].copy_(value)
        return list(names)
