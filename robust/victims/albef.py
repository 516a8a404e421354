"""ALBEF and TCL retrieval models in plain torch, loading the official `.pth` checkpoints.

TCL shares ALBEF's inference architecture and checkpoint layout, so one implementation
serves both (the `family` tag tells them apart). The modules are written here rather than
vendored because the original `xbert.py` breaks on current transformers; module attribute
names follow the official state-dict keys so checkpoints load without renaming:

- vision: a DeiT-B/16-style ViT (`visual_encoder.*`, fused `qkv`, LayerNorm eps 1e-6),
  returning all tokens `[B, 1+P, W]` with CLS first;
- text: one BERT (`text_encoder.*`); layers `< fusion_layer` are the unimodal text encoder,
  layers `>= fusion_layer` add cross-attention to the image tokens (the fusion encoder);
- heads: `vision_proj`, `text_proj` (ITC, 256-d) and `itm_head` (ITM, logit 1 = match).

Text follows the official evaluation exactly: `pre_caption(max_words=30)` cleaning, then
ALBEF's patched BERT tokenizer, which emits `[CLS] x` with no `[SEP]`, padded or truncated
to 30 tokens. Only the logic is reimplemented; the tokenizer itself is transformers'
`BertTokenizer` over the `bert-base-uncased` vocabulary file.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robust.checkpoints import (
    CheckpointError,
    check_checkpoint_file,
    read_torch_file,
    trust_pickle_from_env,
)
from robust.errors import RobustError, WeightsNotFoundError
from robust.victims.base import ItmScorer, Victim
from robust.victims.registry import register_victim_family
from robust.victims.weights import hub_file_in_cache, missing_weights, weights_root

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FAMILIES = ("albef", "tcl")
MAX_WORDS = 30
MAX_TEXT_TOKENS = 30
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
BERT_VOCAB_REPOS = ("bert-base-uncased", "google-bert/bert-base-uncased")
WEIGHTS_SOURCES = {
    "albef": "github.com/salesforce/ALBEF (README: flickr30k.pth, mscoco.pth)",
    "tcl": "github.com/uta-smile/TCL (README: TCL_Retrieval_{Coco,Flickr}_Finetune)",
}
# Training-only state in official checkpoints: contrastive queues and the temperature.
TRAINING_ONLY_KEYS = frozenset({"image_queue", "text_queue", "idx_queue", "queue_ptr", "temp"})


# --------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AlbefConfig:
    """Sizes of an ALBEF/TCL model; defaults are the released ViT-B/16 + BERT-base at 384 px."""

    image_size: int = 384
    patch_size: int = 16
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 12
    mlp_ratio: float = 4.0
    vision_layer_norm_eps: float = 1e-6
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    fusion_layer: int = 6
    encoder_width: int = 768
    embed_dim: int = 256

    def __post_init__(self) -> None:
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size")
        if self.vision_width % self.vision_heads:
            problems.append(f"vision_width {self.vision_width} is not divisible by vision_heads")
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads"
            )
        if not 0 < self.fusion_layer < self.num_hidden_layers:
            problems.append(
                f"fusion_layer {self.fusion_layer} must lie in 1..{self.num_hidden_layers - 1} "
                "(text layers before it, fusion layers from it on)"
            )
        if self.encoder_width != self.vision_width:
            problems.append(
                f"encoder_width {self.encoder_width} must equal vision_width {self.vision_width} "
                "(cross-attention reads the ViT tokens)"
            )
        if problems:
            raise ValueError("invalid AlbefConfig: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> AlbefConfig:
        """Build from a (possibly partial) dict; unknown keys are an error, not ignored."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise RobustError(
                f"{source}: unknown ALBEF config keys {', '.join(unknown)}; "
                f"allowed keys: {', '.join(known)}"
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            caster = float if known[key] == "float" else int
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RobustError(f"{source}: {key} must be a number, got {value!r}")
            if caster is int and float(value) != int(value):
                raise RobustError(f"{source}: {key} must be an integer, got {value!r}")
            values[key] = caster(value)
        try:
            return cls(**values)
        except ValueError as error:
            raise RobustError(f"{source}: {error}") from None


# --------------------------------------------------------------------------------- vision


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_width = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_width)


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens with one strided convolution (`patch_embed.proj`)."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)


class VitAttention(nn.Module):
    """Multi-head self-attention with a fused `qkv` projection, as in DeiT/timm."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(_merge_heads(F.scaled_dot_product_attention(query, key, value)))


class VitMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VitBlock(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        width = config.vision_width
        self.norm1 = nn.LayerNorm(width, eps=config.vision_layer_norm_eps)
        self.attn = VitAttention(width, config.vision_heads)
        self.norm2 = nn.LayerNorm(width, eps=config.vision_layer_norm_eps)
        self.mlp = VitMlp(width, int(width * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ALBEF's `visual_encoder`: normalised pixels `[B,3,S,S]` -> all tokens `[B, 1+P, W]`."""

    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        width = config.vision_width
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.grid_size**2, width))
        self.patch_embed = PatchEmbed(config.patch_size, width)
        self.blocks = nn.ModuleList(VitBlock(config) for _ in range(config.vision_depth))
        self.norm = nn.LayerNorm(width, eps=config.vision_layer_norm_eps)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(pixels)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------------- text


class BertEmbeddings(nn.Module):
    """Word + token-type (always 0) + absolute position embeddings, then LayerNorm."""

    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, hidden)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.position_embeddings.num_embeddings:
            raise ValueError(
                f"{length} tokens exceed max_position_embeddings "
                f"{self.position_embeddings.num_embeddings}"
            )
        positions = torch.arange(length, device=input_ids.device)
        # Same summation order as the original (word + type, then + position).
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        embeddings = embeddings + self.position_embeddings(positions)
        return self.LayerNorm(embeddings)


class BertSelfAttention(nn.Module):
    """Scaled dot-product attention; key/value read `context_width` inputs (cross-attention)."""

    def __init__(self, config: AlbefConfig, context_width: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(context_width, hidden)
        self.value = nn.Linear(context_width, hidden)

    def context_heads(self, context: torch.Tensor) -> torch.Tensor:
        """Keys and values of `context` split into heads, stacked `[B, 2, heads, L, d]`."""
        key = _split_heads(self.key(context), self.heads)
        return torch.stack([key, _split_heads(self.value(context), self.heads)], dim=1)

    def attend(
        self, hidden: torch.Tensor, heads: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attention of `hidden` to precomputed `context_heads` output."""
        query = _split_heads(self.query(hidden), self.heads)
        attended = F.scaled_dot_product_attention(
            query, heads[:, 0], heads[:, 1], attn_mask=context_mask
        )
        return _merge_heads(attended)

    def forward(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        return self.attend(hidden, self.context_heads(context), context_mask)


class BertSelfOutput(nn.Module):
    """Projection, residual and post-LayerNorm after an attention block."""

    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(attended) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: AlbefConfig, context_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, context_width)
        self.output = BertSelfOutput(config)

    def forward(
        self,
        hidden: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        return self.output(self.self(hidden, context, context_mask), hidden)

    def attend(
        self, hidden: torch.Tensor, heads: torch.Tensor, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """As `forward`, with the context's keys and values already computed."""
        return self.output(self.self.attend(hidden, heads, context_mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))


class BertOutput(nn.Module):
    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, intermediate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(intermediate) + residual)


class BertLayer(nn.Module):
    """Self-attention, cross-attention to image tokens (fusion layers only), feed-forward."""

    def __init__(self, config: AlbefConfig, index: int) -> None:
        super().__init__()
        self.attention = BertAttention(config, config.hidden_size)
        if index >= config.fusion_layer:
            self.crossattention = BertAttention(config, config.encoder_width)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden: torch.Tensor,
        text_mask: torch.Tensor,
        image_tokens: torch.Tensor | None = None,
        image_heads: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`image_heads` (this layer's cross-attention keys/values of the image tokens) may
        replace `image_tokens`, so a cached image is not re-projected per caption."""
        hidden = self.attention(hidden, hidden, text_mask)
        if hasattr(self, "crossattention"):
            # ALBEF's retrieval evaluation attends to every image token (mask of ones).
            if image_heads is not None:
                hidden = self.crossattention.attend(hidden, image_heads, None)
            elif image_tokens is not None:
                hidden = self.crossattention(hidden, image_tokens, None)
            else:
                raise ValueError("a fusion layer needs image tokens for cross-attention")
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(config, index) for index in range(config.num_hidden_layers)
        )


class AlbefTextEncoder(nn.Module):
    """ALBEF's `text_encoder`: a BERT split into a text part and a fusion part."""

    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        self.fusion_layer = config.fusion_layer
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Unimodal hidden states `[T, L, H]` (ALBEF `mode='text'`)."""
        mask = _key_mask(attention_mask)
        hidden = self.embeddings(input_ids)
        for layer in self.encoder.layer[: self.fusion_layer]:
            hidden = layer(hidden, mask)
        return hidden

    def fusion(
        self,
        text_hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        image_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Multimodal hidden states `[N, L, H]` (ALBEF `mode='fusion'`)."""
        mask = _key_mask(attention_mask)
        hidden = text_hidden
        for layer in self.encoder.layer[self.fusion_layer :]:
            hidden = layer(hidden, mask, image_tokens)
        return hidden

    def image_heads(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Every fusion layer's cross-attention keys/values of the image tokens,
        `[B, fusion layers, 2, heads, P, d]`: what `fusion_from_heads` reuses per image."""
        fusion = self.encoder.layer[self.fusion_layer :]
        return torch.stack(
            [layer.crossattention.self.context_heads(image_tokens) for layer in fusion], dim=1
        )

    def fusion_from_heads(
        self, text_hidden: torch.Tensor, attention_mask: torch.Tensor, image_heads: torch.Tensor
    ) -> torch.Tensor:
        """`fusion` with the images' cross-attention keys/values from `image_heads`."""
        mask = _key_mask(attention_mask)
        hidden = text_hidden
        for index, layer in enumerate(self.encoder.layer[self.fusion_layer :]):
            hidden = layer(hidden, mask, image_heads=image_heads[:, index])
        return hidden


def _key_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """`[B, L]` 1/0 padding mask -> boolean `[B, 1, 1, L]` keys-to-attend mask."""
    return attention_mask.bool()[:, None, None, :]


# ---------------------------------------------------------------------------------- model


class AlbefModel(nn.Module):
    """The inference part of ALBEF/TCL retrieval: no momentum encoders, queues or temperature.

    Inputs are normalised pixels and token ids; `AlbefVictim` adds pixel-space input and
    the official text pipeline on top.
    """

    def __init__(self, config: AlbefConfig) -> None:
        super().__init__()
        self.config = config
        self.visual_encoder = VisionTransformer(config)
        self.text_encoder = AlbefTextEncoder(config)
        self.vision_proj = nn.Linear(config.vision_width, config.embed_dim)
        self.text_proj = nn.Linear(config.hidden_size, config.embed_dim)
        self.itm_head = nn.Linear(config.hidden_size, 2)
        self.eval()

    def image_features(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """ITC image embedding from ViT tokens: normalize(vision_proj(CLS))."""
        return F.normalize(self.vision_proj(image_tokens[:, 0]), dim=-1)

    def text_features(self, text_hidden: torch.Tensor) -> torch.Tensor:
        """ITC text embedding from unimodal hidden states: normalize(text_proj(CLS))."""
        return F.normalize(self.text_proj(text_hidden[:, 0]), dim=-1)

    def itm_logits(
        self,
        image_tokens: torch.Tensor,
        text_hidden: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Match logit (class 1 of `itm_head`) for each aligned (image, text) pair."""
        fused = self.text_encoder.fusion(text_hidden, text_mask, image_tokens)
        return self.itm_head(fused[:, 0])[:, 1]


# ------------------------------------------------------------------------------ text side


def pre_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """ALBEF/TCL caption cleaning (`dataset/utils.py::pre_caption`), step for step.

    Lower-case, drop ,.'!?"()*#:;~, turn - and / into spaces, `<person>` into `person`,
    squeeze runs of whitespace, strip, and keep the first `max_words` space-separated words.
    """
    text = re.sub(r"[,.'!?\"()*#:;~]", "", caption.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def read_vocab(vocab_file: Path) -> dict[str, int]:
    """A BERT `vocab.txt`: one token per line, id = line number."""
    lines = Path(vocab_file).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {token: index for index, token in enumerate(lines)}


def make_bert_tokenizer(vocab_file: str | Path):
    """transformers' BertTokenizer over a vocab file, on transformers 4.x and 5.x.

    transformers 5 ignores `vocab_file=` in the constructor (it builds a 5-token vocab and
    maps every word to [UNK]), so there the vocabulary is passed as a dict.
    """
    import inspect

    from transformers import BertTokenizer

    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:
        return BertTokenizer(vocab=read_vocab(Path(vocab_file)))
    return BertTokenizer(vocab_file=str(vocab_file))


# --------------------------------------------------------------------------------- victim


class AlbefVictim(Victim):
    """An ALBEF or TCL retrieval model: ITC embeddings plus the ITM head for re-ranking.

    Batched re-ranking goes through `itm_scorer()`, which caches each image's and each
    caption's half of ITM and runs only the fusion layers per candidate pair.
    """

    family = "albef"
    capabilities = frozenset({"itc", "itm"})
    resize_mode = "squash"
    retrieval_score_fusion = "itm"
    max_words = MAX_WORDS
    max_text_tokens = MAX_TEXT_TOKENS
    config_source = ""  # where load_albef_checkpoint read the model sizes from

    def __init__(
        self,
        name: str,
        model: AlbefModel,
        vocab_file: str | Path,
        *,
        family: str = "albef",
    ) -> None:
        if family not in FAMILIES:
            raise RobustError(f"unknown ALBEF-style family {family!r}; use one of {FAMILIES}")
        super().__init__(name, model.config.image_size, CLIP_MEAN, CLIP_STD)
        self.family = family
        self.model = model.eval()
        self.vocab_file = Path(vocab_file)
        self.tokenizer = make_bert_tokenizer(self.vocab_file)
        if len(self.tokenizer) > model.config.vocab_size:
            raise RobustError(
                f"{name}: vocabulary {self.vocab_file} has {len(self.tokenizer)} tokens but the "
                f"model embeds only {model.config.vocab_size}; use the vocab.txt it was "
                "trained with"
            )

    @property
    def config(self) -> AlbefConfig:
        return self.model.config

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask `[T, 30]`: cleaned captions as `[CLS] x`, no `[SEP]`.

        Mirrors ALBEF's patched tokenizer called with padding='max_length', truncation=True,
        max_length=30: at most 29 word pieces follow `[CLS]`, padding is `[PAD]`.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        cleaned = [pre_caption(text, self.max_words) for text in texts]
        length = self.max_text_tokens
        pieces: list[list[int]] = []
        if cleaned:
            encoded = self.tokenizer(
                cleaned, add_special_tokens=False, truncation=True, max_length=length - 1
            )
            pieces = encoded["input_ids"]
        input_ids = torch.full((len(cleaned), length), self.tokenizer.pad_token_id)
        attention_mask = torch.zeros((len(cleaned), length), dtype=torch.long)
        for row, ids in enumerate(pieces):
            tokens = [self.tokenizer.cls_token_id, *ids[: length - 1]]
            input_ids[row, : len(tokens)] = torch.tensor(tokens)
            attention_mask[row, : len(tokens)] = 1
        return input_ids.to(self.device), attention_mask.to(self.device)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All ViT output tokens `[B, 1+P, W]` for pixel images, reusable for ITC and ITM."""
        return self.model.visual_encoder(self.normalize(images))

    def text_hidden(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unimodal text hidden states `[T, L, H]` and their attention mask `[T, L]`."""
        input_ids, attention_mask = self.tokenize(texts)
        return self.model.text_encoder.text(input_ids, attention_mask), attention_mask

    def image_features_from_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """ITC embedding `[B, D]` from `image_tokens` output, without re-running the ViT."""
        return self.model.image_features(image_tokens)

    def text_features_from_hidden(self, text_hidden: torch.Tensor) -> torch.Tensor:
        """ITC embedding `[T, D]` from `text_hidden` output, without re-running BERT."""
        return self.model.text_features(text_hidden)

    def itm_scorer(self) -> AlbefItmScorer:
        return AlbefItmScorer(self)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.image_features(self.image_tokens(images))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """ITC text embeddings. Padding columns shared by every caption are dropped first:
        exact (keys are masked and positions absolute) and, for short captions, most of the
        cost of the 30-token layout, which text attacks pay per candidate."""
        input_ids, attention_mask = trim_padding(*self.tokenize(texts))
        return self.model.text_features(self.model.text_encoder.text(input_ids, attention_mask))

    def itm_logits(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        if len(texts) != images.shape[0]:
            raise ValueError(
                f"{self.name}: itm_logits pairs image i with text i, got "
                f"{images.shape[0]} images and {len(texts)} texts"
            )
        hidden, mask = self.text_hidden(texts)
        return self.model.itm_logits(self.image_tokens(images), hidden, mask)

    def describe(self) -> dict:
        described = {**super().describe(), "text_tokens": self.max_text_tokens}
        if self.config_source:
            described["config_source"] = self.config_source
        return described

    @classmethod
    def from_spec(
        cls,
        arg: str,
        name: str | None = None,
        *,
        family: str = "albef",
        trust_pickle: bool | None = None,
    ) -> AlbefVictim:
        """Load `PATH` of an `albef:PATH` / `tcl:PATH` spec (a relative PATH may live under
        $ROBUST_WEIGHTS). `trust_pickle=None` reads $ROBUST_TRUST_PICKLE."""
        display = name or f"{family}:{arg}"
        checkpoint = locate_albef_checkpoint(arg, display, family)
        if trust_pickle is None:
            trust_pickle = trust_pickle_from_env()
        return load_albef_checkpoint(
            checkpoint, family=family, trust_pickle=trust_pickle, name=display
        )


class AlbefItmScorer(ItmScorer):
    """ALBEF/TCL cache each caption's unimodal text states and each image's cross-attention
    keys/values, so re-ranking projects an image once rather than once per candidate
    caption and runs only the fusion layers per pair."""

    def __init__(self, victim: AlbefVictim) -> None:
        self.victim = victim

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.victim.image_tokens(images)

    def image_inputs(self, image_tokens: torch.Tensor) -> torch.Tensor:
        return self.victim.model.text_encoder.image_heads(image_tokens)

    def text_inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.victim.text_hidden(texts)

    def head(
        self, image_inputs: torch.Tensor, text_inputs: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        _check_pairs(image_inputs, text_inputs, text_mask)
        model = self.victim.model
        fused = model.text_encoder.fusion_from_heads(text_inputs, text_mask, image_inputs)
        return model.itm_head(fused[:, 0])


def trim_padding(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing columns that are padding in every row (at least one column stays)."""
    length = max(1, int(attention_mask.sum(dim=1).max())) if len(attention_mask) else 1
    return input_ids[:, :length], attention_mask[:, :length]


def _check_pairs(image_tokens: torch.Tensor, text_hidden: torch.Tensor, mask: torch.Tensor) -> None:
    if not image_tokens.shape[0] == text_hidden.shape[0] == mask.shape[0]:
        raise ValueError(
            f"aligned pairs need equal batch sizes, got image tokens {image_tokens.shape[0]}, "
            f"text states {text_hidden.shape[0]}, masks {mask.shape[0]}"
        )


def load_albef_spec(arg: str, name: str | None = None) -> AlbefVictim:
    """Registry loader for `albef:PATH`."""
    return AlbefVictim.from_spec(arg, name, family="albef")


def load_tcl_spec(arg: str, name: str | None = None) -> AlbefVictim:
    """Registry loader for `tcl:PATH`."""
    return AlbefVictim.from_spec(arg, name, family="tcl")


# --------------------------------------------------------------------------------- files


def find_albef_checkpoint(arg: str) -> tuple[Path | None, list[str]]:
    """The checkpoint a spec names: the path as given, else relative to $ROBUST_WEIGHTS."""
    given = Path(arg).expanduser()
    candidates = [given]
    root = weights_root()
    if root is not None and not given.is_absolute():
        candidates.append(root / given)
    for candidate in candidates:
        if candidate.is_file():
            return candidate, [str(c) for c in candidates]
    return None, [str(c) for c in candidates]


def locate_albef_checkpoint(arg: str, display: str, family: str = "albef") -> Path:
    """The checkpoint `albef:arg` / `tcl:arg` names; missing weights are one error line."""
    checkpoint, looked = find_albef_checkpoint(arg)
    if checkpoint is None:
        raise missing_weights(display, looked, WEIGHTS_SOURCES.get(family, "the ALBEF repo"))
    return checkpoint


def check_albef_spec(arg: str, name: str | None = None, *, family: str = "albef") -> None:
    """Everything `albef:arg` / `tcl:arg` will read is here and looks right, checked without
    loading the weights, so a run fails before any work instead of half-way."""
    checkpoint = locate_albef_checkpoint(arg, name or f"{family}:{arg}", family)
    find_bert_vocab(checkpoint)
    read_config_beside(checkpoint)
    check_checkpoint_file(checkpoint)


def albef_image_size(arg: str, name: str | None = None) -> int:
    """The resolution the checkpoint loads at, from the config.json beside it; the released
    models' (its AlbefConfig default) where there is none or the file is not here."""
    checkpoint, _ = find_albef_checkpoint(arg)
    config = None
    if checkpoint is not None:
        try:
            config, _ = read_config_beside(checkpoint)
        except RobustError:
            config = None
    return (config or AlbefConfig()).image_size


def albef_weights_present(arg: str) -> bool:
    """Whether `albef:arg` / `tcl:arg` would find its checkpoint and vocabulary here."""
    try:
        check_albef_spec(arg)
    except RobustError:
        return False
    return True


def find_bert_vocab(checkpoint: Path) -> Path:
    """vocab.txt beside the checkpoint, else $ROBUST_WEIGHTS/bert-base-uncased/, else HF cache."""
    candidates = [Path(checkpoint).parent / VOCAB_FILE]
    root = weights_root()
    if root is not None:
        candidates.append(root / "bert-base-uncased" / VOCAB_FILE)
    looked = []
    for candidate in candidates:
        looked.append(str(candidate))
        if candidate.is_file():
            return candidate
    for repo in BERT_VOCAB_REPOS:
        looked.append(f"HF cache {repo}/{VOCAB_FILE}")
        cached = hub_file_in_cache(repo, VOCAB_FILE)
        if cached is not None:
            return cached
    raise WeightsNotFoundError(
        f"BERT vocabulary {VOCAB_FILE} for {checkpoint} not found (looked in: "
        f"{'; '.join(looked)}); it comes from huggingface.co/bert-base-uncased: put it beside "
        "the checkpoint or in $ROBUST_WEIGHTS/bert-base-uncased/"
    )


def read_config_beside(checkpoint: Path) -> tuple[AlbefConfig | None, str]:
    """The config.json beside a checkpoint (tiny/toy models declare sizes there), or None."""
    path = Path(checkpoint).parent / CONFIG_FILE
    if not path.is_file():
        return None, ""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RobustError(f"{path} is not valid JSON ({error.msg}); fix or remove it") from None
    if not isinstance(data, dict):
        raise RobustError(f"{path} must hold a JSON object of ALBEF config keys")
    return AlbefConfig.from_dict(data, str(path)), str(path)


DEFAULT_CONFIG_SOURCE = (
    "the released ViT-B/16 + BERT-base sizes (no config.json beside the checkpoint, no sizes "
    "in its `config` entry)"
)
# Size keys of the training config ALBEF/TCL save in a checkpoint's `config` entry (their
# YAML: image_res, vision_width, embed_dim; BERT's sizes live in a separate config_bert.json
# the checkpoint only names, so they stay at bert-base's).
OFFICIAL_SIZE_KEYS = {
    "image_res": "image_size",
    "vision_width": "vision_width",
    "embed_dim": "embed_dim",
}


def config_in_checkpoint(checkpoint: Any, source: str) -> tuple[AlbefConfig | None, str]:
    """The sizes a checkpoint's own `config` entry records, or None when it has none.

    `save_albef_checkpoint` also writes the complete sizes as `config.model_config`; an
    official checkpoint gives the image resolution, ViT width and embedding size, and
    everything else keeps the released model's defaults.
    """
    record = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    if not isinstance(record, Mapping):
        return None, ""
    where = f"{source} (its `config` entry)"
    if isinstance(record.get("model_config"), Mapping):
        return AlbefConfig.from_dict(record["model_config"], where), where
    sizes = {ours: record[key] for key, ours in OFFICIAL_SIZE_KEYS.items() if key in record}
    if not sizes:
        return None, ""
    if "vision_width" in sizes:
        sizes["encoder_width"] = sizes["vision_width"]  # cross-attention reads the ViT tokens
    return AlbefConfig.from_dict(sizes, where), where


def read_checkpoint(path: Path, *, trust_pickle: bool = False) -> Any:
    """Read a `.pth`/`.bin` (weights-only unless trusted) or `.safetensors` file; every bad
    file is one `CheckpointError` line."""
    return read_torch_file(path, trust_pickle=trust_pickle)


def extract_state_dict(checkpoint: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of `{'model': sd, ...}` (official) or of a raw state dict."""
    state = checkpoint
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        state = checkpoint["model"]
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(
            f"{source} is neither an ALBEF checkpoint ({{'model': state_dict, ...}}) nor a "
            "state dict; pass the .pth saved by ALBEF/TCL"
        )
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source} has non-tensor entries ({', '.join(map(str, not_tensors[:5]))}); "
            "expected {'model': state_dict, ...} or a state dict"
        )
    state = dict(state)
    if all(key.startswith("module.") for key in state):  # saved from a DDP wrapper
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def is_dropped_key(key: str) -> bool:
    """Training-only keys: momentum copies, queues, temperature, the MLM head, position_ids."""
    top = key.split(".", 1)[0]
    return (
        top.endswith("_m")
        or top in TRAINING_ONLY_KEYS
        or key.startswith("text_encoder.cls.")
        or key.endswith(".position_ids")
    )


def clean_state_dict(
    state: Mapping[str, torch.Tensor], config: AlbefConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official keys -> this module's keys: strip `bert.`, drop training-only entries and
    interpolate `pos_embed` to the config's grid. Returns (kept, dropped keys)."""
    kept: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        # Pre-training checkpoints hold a BertForMaskedLM: text_encoder.bert.X -> text_encoder.X
        renamed = re.sub(r"(^|\.)bert\.", r"\1", key)
        if is_dropped_key(renamed):
            dropped.append(key)
            continue
        if renamed in kept:
            raise RobustError(f"checkpoint holds both {key} and {renamed}; keep one of them")
        kept[renamed] = value
    pos_key = "visual_encoder.pos_embed"
    if pos_key in kept and kept[pos_key].shape[1] != 1 + config.grid_size**2:
        kept[pos_key] = interpolate_pos_embed(kept[pos_key], config.grid_size)
    return kept, dropped


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resize ViT position embeddings `[1, 1+n*n, W]` to a `grid_size` grid, bicubically.

    The CLS entry is kept; the patch grid is resized like ALBEF's `interpolate_pos_embed`
    (bicubic, align_corners=False). Needed e.g. for 256-px pre-trained weights at 384 px.
    """
    patches = pos_embed.shape[1] - 1
    old_grid = int(round(patches**0.5))
    if old_grid * old_grid != patches:
        raise RobustError(
            f"visual_encoder.pos_embed has {patches} patch positions, not a square grid"
        )
    if old_grid == grid_size:
        return pos_embed
    width = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].float().reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_size, grid_size), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, width)
    return torch.cat([pos_embed[:, :1], grid.to(pos_embed.dtype)], dim=1)


def load_albef_state(
    model: AlbefModel,
    state: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    config_source: str = "config",
) -> list[str]:
    """Load official ALBEF/TCL weights into `model`; every model key must be present.

    Missing keys, leftover keys that are not training-only and shape mismatches are each one
    RobustError line; nothing is silently skipped. Returns the dropped training-only keys.
    """
    kept, dropped = clean_state_dict(state, model.config)
    expected = model.state_dict()
    hint = f" (model config: {config_source})"
    missing = [key for key in expected if key not in kept]
    if missing:
        raise RobustError(
            f"{source} lacks {len(missing)} model weights: {_first_keys(missing)}{hint}"
        )
    unexpected = [key for key in kept if key not in expected]
    if unexpected:
        raise RobustError(
            f"{source} has {len(unexpected)} weights this model does not know: "
            f"{_first_keys(unexpected)}{hint}"
        )
    for key, target in expected.items():
        if kept[key].shape != target.shape:
            raise RobustError(
                f"{source}: {key} has shape {tuple(kept[key].shape)} but the model expects "
                f"{tuple(target.shape)}{hint}; a model of another size declares it in "
                f"{CONFIG_FILE} beside the checkpoint"
            )
    tensors = {
        key: (value.float() if value.is_floating_point() else value).contiguous()
        for key, value in kept.items()
    }
    model.load_state_dict(tensors, strict=True, assign=True)
    return dropped


def _first_keys(keys: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")


def load_albef_checkpoint(
    path: str | Path,
    *,
    family: str = "albef",
    config: AlbefConfig | None = None,
    vocab_file: str | Path | None = None,
    trust_pickle: bool = False,
    name: str | None = None,
) -> AlbefVictim:
    """An ALBEF/TCL victim from an official `.pth` (retrieval or pre-training) or state dict.

    `config` defaults to `config.json` beside the file, else the sizes the checkpoint's own
    `config` entry records, else the released model's; which one was used is logged (INFO)
    and kept as the victim's `config_source` (in `describe()`);
    `vocab_file` defaults to `find_bert_vocab`. Parameters are frozen (attacks need only
    input gradients).
    """
    path = Path(path).expanduser()
    if family not in FAMILIES:
        raise RobustError(f"unknown ALBEF-style family {family!r}; use one of {FAMILIES}")
    if not path.is_file():
        raise missing_weights(f"{family}:{path}", [str(path)], WEIGHTS_SOURCES[family])
    config_source = "given AlbefConfig"
    if config is None:
        config, config_source = read_config_beside(path)
    if vocab_file is None:
        vocab_file = find_bert_vocab(path)
    elif not Path(vocab_file).is_file():
        raise WeightsNotFoundError(
            f"BERT vocabulary {vocab_file} does not exist; pass the bert-base-uncased vocab.txt"
        )
    checkpoint = read_checkpoint(path, trust_pickle=trust_pickle)
    if config is None:
        config, config_source = config_in_checkpoint(checkpoint, str(path))
    if config is None:
        config, config_source = AlbefConfig(), DEFAULT_CONFIG_SOURCE
    logger.info("%s: model sizes from %s", path, config_source)
    state = extract_state_dict(checkpoint, str(path))
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = AlbefModel(config)
    load_albef_state(model, state, source=str(path), config_source=config_source)
    model.requires_grad_(False)
    victim = AlbefVictim(name or f"{family}:{path}", model.eval(), vocab_file, family=family)
    victim.config_source = config_source
    return victim


def save_albef_checkpoint(
    victim_or_model: AlbefVictim | AlbefModel,
    path: str | Path,
    *,
    vocab_file: str | Path | None = None,
) -> Path:
    """Write `{'model': state_dict, 'config': {...}}` as ALBEF does, plus config.json and
    vocab.txt beside it, so `load_albef_checkpoint(path)` rebuilds the same model.

    One model per folder: config.json and vocab.txt are per-folder files.
    """
    if isinstance(victim_or_model, AlbefVictim):
        model = victim_or_model.model
        family = victim_or_model.family
        vocab_file = vocab_file or victim_or_model.vocab_file
    else:
        model, family = victim_or_model, "albef"
    if vocab_file is None:
        raise RobustError("save_albef_checkpoint needs vocab_file when given a bare AlbefModel")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    record = {
        "image_res": config.image_size,
        "embed_dim": config.embed_dim,
        "family": family,
        "bert_config": CONFIG_FILE,
        "model_config": config.to_dict(),
    }
    torch.save({"model": state, "config": record}, path)
    (path.parent / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    vocab_target = path.parent / VOCAB_FILE
    if not vocab_target.exists() or not vocab_target.samefile(vocab_file):
        shutil.copyfile(vocab_file, vocab_target)
    return path


def _check_tcl_spec(arg: str, name: str | None = None) -> None:
    check_albef_spec(arg, name, family="tcl")


register_victim_family(
    "albef",
    AlbefVictim,
    load=load_albef_spec,
    check=check_albef_spec,
    image_size=albef_image_size,
    family="albef",
)
register_victim_family(
    "tcl",
    AlbefVictim,
    load=load_tcl_spec,
    check=_check_tcl_spec,
    image_size=albef_image_size,
    family="tcl",
)
