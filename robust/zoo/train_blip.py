"""The project's own training code for the toy BLIP victims and the toy BERT masked LM.

The BLIP models are trained *through the victim classes that later load them*
(`BlipRetrievalVictim`, `BlipCaptionVictim`): tokenisation, caption cleaning, the `[ENC]` /
`[DEC]` swaps, the prompt and the CLIP mean/std all come from those classes, so what a toy
checkpoint was trained on is exactly what the suite evaluates and attacks. All three models
share the world WordPiece vocabulary (`robust.zoo.vocab`) and are saved in the real formats
(`save_blip`, `save_pretrained`), loaded by the real loaders.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust.data.dataset import CaptionDataset
from robust.errors import RobustError
from robust.progress import Progress, ensure_progress
from robust.victims.blip import DEC_TOKEN, ENC_TOKEN, ITM_MATCH_CLASS
from robust.victims.hf_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from robust.zoo.itm_negatives import check_easy_schedule, easy_share, sample_negatives
from robust.zoo.masked_lm import mask_tokens
from robust.zoo.recipes import (
    CALIBRATED_SCHEDULES,
    WORLD_IMAGE_SIZE,
    known_world,
    patch_for_size,
    world_image_size,
)
from robust.zoo.record import TrainReport, write_training_record
from robust.zoo.schedule import clipped_step, cosine_learning_rate
from robust.zoo.warm_start import (
    clip_visual_state,
    copy_into,
    image_projection_from_clip,
    vit_from_clip,
)

# BLIP clamps its learnable ITC temperature to this range (blip_retrieval.py).
TEMPERATURE_RANGE = (0.001, 0.5)
# Text positions: BLIP uses at most 35 (ITC/ITM) and 40 (decoder) tokens; BERT-Attack adds
# sub-words, so the masked LM gets a little more room.
BLIP_TEXT_POSITIONS = 48
MLM_TEXT_POSITIONS = 64


def _vision_defaults() -> dict:
    # HF's BLIP vision default initializer range (1e-10) suits loading weights, not training.
    return {
        "initializer_range": 0.05,
        "patch_size": 8,
        "hidden_size": 96,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    }


def _clip_vit_vision() -> dict:
    # toy-clip-vit's visual sizes (3 heads of 32, MLP x3), so toy-blip's ViT can start from it.
    return {
        "initializer_range": 0.02,
        "patch_size": 8,
        "hidden_size": 96,
        "intermediate_size": 288,
        "num_hidden_layers": 4,
        "num_attention_heads": 3,
    }


def vision_for_world(vision: dict, version: str) -> dict:
    """A BLIP ViT config at world `version`'s image size, its patch scaled to keep the
    token count."""
    size = world_image_size(version)
    patch = patch_for_size(vision["patch_size"], vision_image_size(vision), size)
    return dict(vision, image_size=size, patch_size=patch)


def vision_image_size(vision: dict) -> int:
    """The image side a BLIP recipe's ViT takes: its `image_size`, set by `for_world`;
    none means the shipped WORLD_IMAGE_SIZE (so the shipped recipes stay as they were)."""
    return vision.get("image_size", WORLD_IMAGE_SIZE)


def _text_defaults() -> dict:
    # The self-attention layers come from toy-mlm; cross-attention and heads start wider
    # than BERT's 0.02, which leaves the ITC text embeddings nearly identical at first.
    return {
        "initializer_range": 0.1,
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    }


@dataclass(frozen=True)
class BlipRetrievalRecipe:
    """A tiny `BlipForImageTextRetrieval` and its ITC + hard-negative ITM schedule.

    `captions_per_image` captions of each image enter ITC per step (one ViT pass). The ViT
    and `vision_proj` start from `vision_init`'s visual tower and the text encoder from
    `text_init` (as BLIP starts from a pre-trained ViT and bert-base); `fusion_lr_scale`
    multiplies the learning rate of the parts that start fresh (cross-attention, `text_proj`,
    ITM head). `itm_easy_schedule` is the share of uniformly drawn ITM negatives at the
    first and last step (`robust.zoo.itm_negatives`).
    """

    name: str
    vision: dict = field(default_factory=_clip_vit_vision)
    text: dict = field(default_factory=_text_defaults)
    embed_dim: int = 64
    epochs: int = 6
    batch_size: int = 128
    captions_per_image: int = 2
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    temperature: float = 0.07
    itm_weight: float = 1.0
    fusion_lr_scale: float = 4.0
    text_init: str | None = "toy-mlm"
    vision_init: str | None = "toy-clip-vit"
    bf16_autocast: bool = True
    seed: int = 0
    train_images: int | None = None
    # the world version trained on (robust.data.world.WORLD_VERSIONS)
    world: str = "world"
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    itm_easy_schedule: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        schedule = check_easy_schedule(self.itm_easy_schedule, self.name)
        object.__setattr__(self, "itm_easy_schedule", schedule)

    def config(self) -> dict:
        return asdict(self)

    def for_world(self, version: str) -> BlipRetrievalRecipe:
        """This recipe on world `version` (its ViT at the version's size, same token
        count, and the version's calibrated schedule, whose `text` entries update the text
        config); unchanged on its own world."""
        if version == self.world:
            return self
        schedule = dict(CALIBRATED_SCHEDULES.get(version, {}).get(self.name, {}))
        text = {**self.text, **schedule.pop("text", {})}
        vision = vision_for_world(self.vision, version)
        return replace(self, world=version, vision=vision, text=text, **schedule)


@dataclass(frozen=True)
class BlipCaptionRecipe:
    """A tiny `BlipForConditionalGeneration` and its teacher-forced LM schedule.

    `captions_per_image` captions of each image share one ViT pass per step.
    """

    name: str
    vision: dict = field(default_factory=_vision_defaults)
    text: dict = field(default_factory=_text_defaults)
    epochs: int = 5
    batch_size: int = 64
    captions_per_image: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    text_init: str | None = "toy-mlm"
    bf16_autocast: bool = True
    seed: int = 0
    train_images: int | None = None
    # the world version trained on (robust.data.world.WORLD_VERSIONS)
    world: str = "world"
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD

    def config(self) -> dict:
        return asdict(self)

    def for_world(self, version: str) -> BlipCaptionRecipe:
        """This recipe on world `version` (its ViT at the version's size, same token
        count); unchanged on its own world."""
        if version == self.world:
            return self
        return replace(self, world=version, vision=vision_for_world(self.vision, version))


@dataclass(frozen=True)
class MlmRecipe:
    """A tiny `BertForMaskedLM` trained with BERT's 15% (80/10/10) masking on world captions."""

    name: str
    hidden_size: int = 64
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    epochs: int = 2
    batch_size: int = 128
    mask_probability: float = 0.15
    learning_rate: float = 5e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    seed: int = 0
    train_images: int | None = None
    # the world version trained on (robust.data.world.WORLD_VERSIONS)
    world: str = "world"

    def config(self) -> dict:
        return asdict(self)

    def for_world(self, version: str) -> MlmRecipe:
        """This recipe on world `version`: its vocabulary is then built from that version's
        captions, whose word pieces fit MLM_TEXT_POSITIONS (world-v3's longest take 57
        even with the shipped world vocabulary)."""
        return replace(self, world=known_world(version))


BlipRecipe = BlipRetrievalRecipe | BlipCaptionRecipe | MlmRecipe

BLIP_RECIPES: dict[str, BlipRecipe] = {
    "toy-blip": BlipRetrievalRecipe(name="toy-blip", itm_easy_schedule=(1.0, 0.0)),
    "toy-blip-cap": BlipCaptionRecipe(name="toy-blip-cap"),
    "toy-mlm": MlmRecipe(name="toy-mlm"),
}
"""Recipes of the toy BLIP retrieval model, BLIP captioner and BERT masked LM."""


# --------------------------------------------------------------------------------------
# Shared pieces: vocabulary, configs, optimiser, schedule, batches
# --------------------------------------------------------------------------------------


def world_tokenizer(
    *,
    blip: bool,
    vocab_images: int | None = None,
    vocab: Sequence[str] | None = None,
    world: str = "world",
):
    """BERT WordPiece tokenizer on the world vocabulary; with BLIP's `[DEC]` and `[ENC]`.

    `vocab` (tokens in id order) reuses an existing vocabulary, such as toy-mlm's, so models
    started from one another agree on ids; otherwise one is built from world train.
    `from_pretrained` on a folder holding vocab.txt is used because transformers 5 ignores
    `BertTokenizer(vocab_file=...)`. BLIP's `init_tokenizer` adds `[DEC]` as bos first, then
    `[ENC]`, so `[ENC]` = `[DEC]` + 1 as `blip_token_ids` expects.
    """
    from transformers import BertTokenizer

    from robust.zoo.vocab import build_world_vocab

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vocab.txt"
        if vocab is None:
            build_world_vocab(path, train_images=vocab_images, version=world)
        else:
            path.write_text("".join(f"{token}\n" for token in vocab))
        tokenizer = BertTokenizer.from_pretrained(folder)
    if blip:
        tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
        tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
    return tokenizer


def tokens_in_id_order(tokenizer) -> list[str]:
    """A tokenizer's vocabulary as the lines of its vocab.txt; ids must run 0..n-1."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if [index for _, index in vocabulary] != list(range(len(vocabulary))):
        raise RobustError("the tokenizer's ids have gaps; it is not a plain BERT vocabulary")
    return [token for token, _ in vocabulary]


def blip_config(recipe: BlipRetrievalRecipe | BlipCaptionRecipe, tokenizer, *, embed_dim: int = 64):
    """A `BlipConfig` at the world resolution with the special ids of `tokenizer`."""
    from transformers import BlipConfig

    sep = tokenizer.sep_token_id
    text = {
        **recipe.text,
        "vocab_size": len(tokenizer),
        "encoder_hidden_size": recipe.vision["hidden_size"],
        "max_position_embeddings": BLIP_TEXT_POSITIONS,
        "bos_token_id": tokenizer.bos_token_id,
        "sep_token_id": sep,
        "eos_token_id": sep,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {**recipe.vision, "image_size": vision_image_size(recipe.vision)}
    return BlipConfig(
        text_config=text,
        vision_config=vision,
        image_text_hidden_size=embed_dim,
        projection_dim=embed_dim,
    )


def _adamw(
    named_parameters: Sequence[tuple[str, nn.Parameter]],
    learning_rate: float,
    weight_decay: float,
    *,
    lr_scale: Callable[[str], float] = lambda _name: 1.0,
) -> torch.optim.AdamW:
    """AdamW that decays matrices only (not biases, norms, embeddings, the temperature).

    Each group carries an `lr_scale` (by parameter name) that `_set_learning_rate` applies.
    """
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        is_matrix = parameter.ndim >= 2 and "embedding" not in name
        groups.setdefault((is_matrix, float(lr_scale(name))), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": weight_decay if is_matrix else 0.0,
                "lr_scale": scale,
            }
            for (is_matrix, scale), params in groups.items()
        ],
        lr=learning_rate,
        betas=(0.9, 0.98),
    )


def _set_learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate * group.get("lr_scale", 1.0)


def _is_fusion_parameter(name: str) -> bool:
    """Parameters that start untrained in a warm start: cross-attention and the heads."""
    return "crossattention" in name or name.startswith(("itm_head", "text_proj"))


def _image_batches(
    num_images: int, batch_size: int, epochs: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Shuffled full batches of image indices, epoch after epoch (the last partial dropped)."""
    steps = num_images // batch_size
    for _ in range(epochs):
        order = rng.permutation(num_images)
        for step in range(steps):
            yield order[step * batch_size : (step + 1) * batch_size]


def _autocast(enabled: bool):
    """bf16 autocast on CPU, where the toy zoo trains: CPUs with AVX512-BF16 or AMX run the
    matmuls about twice as fast; weights, optimiser state, norms and losses stay fp32."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def _steps(num_items: int, batch_size: int, epochs: int) -> int:
    steps = (num_items // batch_size) * epochs
    if steps <= 0:
        raise RobustError(
            f"{num_items} training items make no full batch of {batch_size}; "
            "use more images or a smaller batch"
        )
    return steps


def _pixels(dataset: CaptionDataset) -> torch.Tensor:
    """The dataset's uint8 images as `[N, 3, H, W]`; only in-memory world images qualify."""
    pixels = getattr(dataset.images, "pixels", None)
    if pixels is None:
        raise RobustError(f"{dataset.name}: training needs in-memory images (the world)")
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()


def _as_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images to the `[0, 1]` floats victims take (they normalise inside)."""
    return pixels.float() / 255.0


def _pick_captions(
    dataset: CaptionDataset, indices: np.ndarray, per_image: int, rng: np.random.Generator
) -> list[str]:
    """`per_image` distinct random captions of each image, grouped image by image."""
    texts = []
    for index in indices:
        choices = dataset.image_captions[int(index)]
        picked = rng.choice(len(choices), size=min(per_image, len(choices)), replace=False)
        texts.extend(dataset.captions[choices[int(p)]] for p in picked)
    return texts


def _train_dataset(dataset: CaptionDataset | None, recipe: BlipRecipe) -> CaptionDataset:
    """The given dataset, or the recipe's world train split (its first train_images)."""
    from robust.data.world import generate_world

    if dataset is not None:
        return dataset
    return generate_world("train", count=recipe.train_images, version=recipe.world)


def _vocab_source(dataset: CaptionDataset) -> dict:
    """The world version and the number of its train images the vocabulary comes from:
    those trained on.

    The full train split gives the zoo's shared vocabulary; a subset (pilots, tests) gives
    the vocabulary of that subset, so nothing needs the full split rendered.
    """
    from robust.data.world import DEFAULT_WORLD, WORLD_VERSIONS

    world, _, split = dataset.name.partition(":")
    if split == "train" and world in WORLD_VERSIONS:
        return {"vocab_images": dataset.num_images, "world": world}
    return {"vocab_images": None, "world": DEFAULT_WORLD}


def init_text_from_masked_lm(text_model: nn.Module, masked_lm: nn.Module) -> list[str]:
    """Copy a BERT masked LM's weights into a BLIP text encoder or decoder; returns what was
    copied.

    BLIP starts its text encoder and decoder from bert-base; the toy zoo starts them from
    toy-mlm the same way. Self-attention, feed-forward, embeddings (and the decoder's LM head)
    come from the masked LM; cross-attention stays freshly initialised, as in BLIP. BLIP has no
    token-type embeddings, so BERT's type-0 row is folded into the position embeddings. The
    BLIP vocabulary extends the masked LM's with `[DEC]` and `[ENC]`; the extra rows keep
    their initialisation, and rows and positions beyond the smaller table are dropped.
    """
    source = {key.removeprefix("bert."): value for key, value in masked_lm.state_dict().items()}
    if "embeddings.token_type_embeddings.weight" in source:
        type_zero = source.pop("embeddings.token_type_embeddings.weight")[0]
        source["embeddings.position_embeddings.weight"] = (
            source["embeddings.position_embeddings.weight"] + type_zero
        )
    copied = []
    with torch.no_grad():
        for key, target in text_model.state_dict().items():
            value = source.get(key.removeprefix("bert."))
            if value is None or key.endswith("position_ids"):
                continue
            if value.ndim != target.ndim or value.shape[1:] != target.shape[1:]:
                raise RobustError(
                    f"masked LM weight {key} has shape {tuple(value.shape)}, the BLIP text model "
                    f"{tuple(target.shape)}; give the masked LM the BLIP text sizes"
                )
            rows = min(value.shape[0], target.shape[0]) if value.ndim else None
            if rows is None:
                target.copy_(value)
            else:
                target[:rows].copy_(value[:rows])
            copied.append(key)
    return copied


def load_text_init(name_or_path: str) -> tuple[nn.Module, list[str]]:
    """(masked LM, its vocabulary) that a BLIP recipe starts its text model from.

    `name_or_path` is a `save_pretrained` folder or the name of a zoo member (toy-mlm).
    """
    from transformers import AutoTokenizer, BertForMaskedLM

    from robust.resources import ZOO_DIR

    folder = Path(name_or_path)
    if not folder.is_dir():
        folder = ZOO_DIR / name_or_path
    if not (folder / "config.json").is_file():
        raise RobustError(
            f"no masked LM at {folder} to start the BLIP text model from; train it first "
            f"(robust zoo train {Path(name_or_path).name}) or set the recipe's text_init to None"
        )
    masked_lm = BertForMaskedLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return masked_lm, tokens_in_id_order(tokenizer)


def _blip_start(
    recipe: BlipRetrievalRecipe | BlipCaptionRecipe, dataset: CaptionDataset
) -> tuple[object, nn.Module | None]:
    """(BLIP tokenizer, masked LM to start the text model from, if the recipe names one)."""
    if recipe.text_init is None:
        return world_tokenizer(blip=True, **_vocab_source(dataset)), None
    masked_lm, vocab = load_text_init(recipe.text_init)
    return world_tokenizer(blip=True, vocab=vocab), masked_lm


# --------------------------------------------------------------------------------------
# toy-blip: ITC + ITM with hard negatives
# --------------------------------------------------------------------------------------


def retrieval_losses(
    victim,
    images: torch.Tensor,
    texts: Sequence[str],
    temperature: torch.Tensor | float,
    generator: torch.Generator,
    *,
    bf16_autocast: bool = False,
    easy: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ITC, ITM) losses of BLIP's retrieval objective on a batch of images and their texts.

    `texts` holds k captions per image, grouped image by image. ITC: InfoNCE between the
    unimodal CLS projections, image-to-text with all k captions as positives (BLIP's
    soft targets over same-image texts), text-to-image with the one image. ITM: each image
    with its first caption, plus for that caption a hard negative image and for each image a
    hard negative text, drawn in proportion to their ITC similarity (BLIP's in-batch hard
    negative mining), except `easy` of them drawn uniformly (`robust.zoo.itm_negatives`).
    `bf16_autocast` runs the ViT and the ITM pass in bf16; the unimodal
    text encoder, the projections and the similarities stay fp32, since at the start of
    training the embeddings differ by less than bf16 resolves and ITC never leaves its
    plateau.
    """
    batch = images.shape[0]
    per_image, remainder = divmod(len(texts), batch)
    if batch < 2 or remainder or per_image == 0:
        raise ValueError(
            f"need >= 2 images with the same number of texts each, got {batch} images and "
            f"{len(texts)} texts"
        )
    with _autocast(bf16_autocast):
        image_tokens = victim.image_tokens(images)
    image_tokens = image_tokens.float()
    image_features = victim.image_embedding_from_tokens(image_tokens)
    input_ids, attention_mask = victim.text_tokens(texts)
    text_features = victim.text_embedding_from_tokens(input_ids, attention_mask)
    logits = image_features @ text_features.T / temperature  # [B, kB]
    device = logits.device
    text_image = torch.arange(batch, device=device).repeat_interleave(per_image)
    positive = text_image[None, :] == torch.arange(batch, device=device)[:, None]
    image_to_text_loss = -(F.log_softmax(logits, dim=1) * positive).sum(1) / per_image
    itc = (image_to_text_loss.mean() + F.cross_entropy(logits.T, text_image)) / 2

    first_texts = torch.arange(batch, device=device) * per_image
    own_image = torch.eye(batch, dtype=torch.bool, device=device)
    negative_texts = sample_negatives(logits, positive, generator, easy)
    negative_images = sample_negatives(logits.T[first_texts], own_image, generator, easy)
    positive_ids, positive_mask = input_ids[first_texts], attention_mask[first_texts]
    pair_images = torch.cat([image_tokens, image_tokens[negative_images], image_tokens])
    pair_ids = torch.cat([positive_ids, positive_ids, input_ids[negative_texts]])
    pair_mask = torch.cat([positive_mask, positive_mask, attention_mask[negative_texts]])
    with _autocast(bf16_autocast):
        itm_logits = victim.itm_head_from_tokens(pair_images, pair_ids, pair_mask)
    labels = torch.full((3 * batch,), 1 - ITM_MATCH_CLASS, device=device)
    labels[:batch] = ITM_MATCH_CLASS
    itm = F.cross_entropy(itm_logits.float(), labels)
    return itc, itm


def _train_steps(
    recipe: BlipRetrievalRecipe | BlipCaptionRecipe,
    dataset: CaptionDataset,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: Callable[[torch.Tensor, list[str]], torch.Tensor],
    progress: Progress,
    *,
    after_step: Callable[[], None] | None = None,
) -> tuple[int, float, float]:
    """The loop both BLIP trainers share: seeded image batches with sampled captions, cosine
    learning rate, clipped steps. Returns (steps, final loss, seconds)."""
    pixels = _pixels(dataset)
    rng = np.random.default_rng(recipe.seed)
    total_steps = _steps(dataset.num_images, recipe.batch_size, recipe.epochs)
    schedule = cosine_learning_rate(recipe.learning_rate, total_steps, recipe.warmup_fraction)
    model.train()
    start = time.perf_counter()
    step, loss_value = 0, float("nan")
    with progress.task(f"train {recipe.name}", total_steps) as task:
        for indices in _image_batches(dataset.num_images, recipe.batch_size, recipe.epochs, rng):
            texts = _pick_captions(dataset, indices, recipe.captions_per_image, rng)
            _set_learning_rate(optimizer, schedule(step))
            loss = batch_loss(_as_unit(pixels[indices]), texts)
            loss_value = clipped_step(optimizer, loss, model.parameters())
            if after_step is not None:
                after_step()
            step += 1
            task.advance()
    model.eval()
    return step, loss_value, time.perf_counter() - start


def _save_trained(
    recipe: BlipRetrievalRecipe | BlipCaptionRecipe,
    model: nn.Module,
    tokenizer: Any,
    output_dir: Path,
    dataset: CaptionDataset,
    steps: int,
    final_loss: float,
    seconds: float,
    config: dict[str, Any],
) -> TrainReport:
    """Save a trained BLIP as a Hugging Face folder and write its training record."""
    from robust.victims.blip import save_blip

    save_blip(
        model,
        tokenizer,
        output_dir,
        mean=recipe.mean,
        std=recipe.std,
        image_size=vision_image_size(recipe.vision),
    )
    report = TrainReport(recipe.name, Path(output_dir), seconds, steps, final_loss, config)
    write_training_record(report, dataset)
    return report


def new_blip_retrieval_victim(recipe: BlipRetrievalRecipe, tokenizer):
    """A freshly initialised (seeded) retrieval model wrapped in the victim that scores it."""
    from transformers import BlipForImageTextRetrieval

    from robust.victims.blip import BlipRetrievalVictim

    torch.manual_seed(recipe.seed)
    model = BlipForImageTextRetrieval(blip_config(recipe, tokenizer, embed_dim=recipe.embed_dim))
    preprocess = {"size": vision_image_size(recipe.vision), "mean": recipe.mean, "std": recipe.std}
    return BlipRetrievalVictim(recipe.name, model, tokenizer, preprocess)


def train_blip_retrieval(
    recipe: BlipRetrievalRecipe,
    output_dir: Path,
    *,
    dataset: CaptionDataset | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train toy-blip (ITC + hard-negative ITM) on world train; save an `hf-blip:` folder."""
    progress = ensure_progress(progress)
    dataset = _train_dataset(dataset, recipe)
    tokenizer, masked_lm = _blip_start(recipe, dataset)
    victim = new_blip_retrieval_victim(recipe, tokenizer)
    if masked_lm is not None:
        init_text_from_masked_lm(victim.model.text_encoder, masked_lm)
    model = victim.model
    if recipe.vision_init is not None:
        clip_visual = clip_visual_state(recipe.vision_init)
        tensors = {
            **vit_from_clip(clip_visual, "blip", "vision_model."),
            **image_projection_from_clip(clip_visual, "vision_proj"),
        }
        copy_into(model, tensors, recipe.vision_init)
    temperature = nn.Parameter(torch.tensor(float(recipe.temperature)))
    optimizer = _adamw(
        [*model.named_parameters(), ("temperature", temperature)],
        recipe.learning_rate,
        recipe.weight_decay,
        lr_scale=lambda name: recipe.fusion_lr_scale if _is_fusion_parameter(name) else 1.0,
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    total_steps = _steps(dataset.num_images, recipe.batch_size, recipe.epochs)
    step = itertools.count()

    def batch_loss(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        itc, itm = retrieval_losses(
            victim, images, texts, temperature, generator, bf16_autocast=recipe.bf16_autocast,
            easy=easy_share(recipe.itm_easy_schedule, next(step), total_steps),
        )  # fmt: skip
        return itc + recipe.itm_weight * itm

    def clamp_temperature() -> None:
        with torch.no_grad():
            temperature.clamp_(*TEMPERATURE_RANGE)

    steps, final_loss, seconds = _train_steps(
        recipe, dataset, model, optimizer, batch_loss, progress, after_step=clamp_temperature
    )
    config = {**recipe.config(), "final_temperature": float(temperature.detach())}
    return _save_trained(
        recipe, model, tokenizer, output_dir, dataset, steps, final_loss, seconds, config
    )


# --------------------------------------------------------------------------------------
# toy-blip-cap: teacher-forced captioning loss
# --------------------------------------------------------------------------------------


def caption_training_loss(victim, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
    """Mean of the victim's own teacher-forced caption loss; images may carry several texts.

    `texts` holds `len(texts) / B` captions per image, grouped image by image; the ViT runs
    once per image and its tokens are repeated for each caption.
    """
    per_image, remainder = divmod(len(texts), images.shape[0])
    if remainder or per_image == 0:
        raise ValueError(f"{len(texts)} texts do not split evenly over {images.shape[0]} images")
    image_tokens = victim.image_tokens(images).repeat_interleave(per_image, dim=0)
    return victim.caption_loss_from_tokens(image_tokens, *victim.caption_tokens(texts)).mean()


def new_blip_caption_victim(recipe: BlipCaptionRecipe, tokenizer):
    """A freshly initialised (seeded) captioner wrapped in the victim that scores it."""
    from transformers import BlipForConditionalGeneration

    from robust.victims.blip import BlipCaptionVictim

    torch.manual_seed(recipe.seed)
    model = BlipForConditionalGeneration(blip_config(recipe, tokenizer))
    preprocess = {"size": vision_image_size(recipe.vision), "mean": recipe.mean, "std": recipe.std}
    return BlipCaptionVictim(recipe.name, model, tokenizer, preprocess)


def train_blip_captioner(
    recipe: BlipCaptionRecipe,
    output_dir: Path,
    *,
    dataset: CaptionDataset | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train toy-blip-cap with `BlipCaptionVictim`'s LM loss; save an `hf-blip-cap:` folder."""
    progress = ensure_progress(progress)
    dataset = _train_dataset(dataset, recipe)
    tokenizer, masked_lm = _blip_start(recipe, dataset)
    victim = new_blip_caption_victim(recipe, tokenizer)
    if masked_lm is not None:
        init_text_from_masked_lm(victim.model.text_decoder, masked_lm)
    model = victim.model
    optimizer = _adamw(list(model.named_parameters()), recipe.learning_rate, recipe.weight_decay)

    def batch_loss(images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        with _autocast(recipe.bf16_autocast):
            return caption_training_loss(victim, images, texts)

    steps, final_loss, seconds = _train_steps(
        recipe, dataset, model, optimizer, batch_loss, progress
    )
    return _save_trained(
        recipe, model, tokenizer, output_dir, dataset, steps, final_loss, seconds, recipe.config()
    )


# --------------------------------------------------------------------------------------
# toy-mlm: BERT masked language model for BERT-Attack
# --------------------------------------------------------------------------------------


def new_masked_lm(recipe: MlmRecipe, tokenizer):
    """A freshly initialised (seeded) tiny `BertForMaskedLM` for the world vocabulary."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(recipe.seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_hidden_layers,
        num_attention_heads=recipe.num_attention_heads,
        max_position_embeddings=MLM_TEXT_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForMaskedLM(config)


def _tokenize_captions(tokenizer, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = tokenizer(
        list(captions),
        padding="longest",
        truncation=True,
        max_length=MLM_TEXT_POSITIONS,
        return_tensors="pt",
    )
    return tokens["input_ids"], tokens["attention_mask"]


def masked_lm_loss(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over the masked positions."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


@torch.no_grad()
def masked_token_accuracy(
    model,
    tokenizer,
    captions: Sequence[str],
    *,
    mask_probability: float = 0.15,
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """Fraction of masked words the model recovers exactly (every chosen token -> `[MASK]`)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    for start in range(0, len(captions), batch_size):
        input_ids, attention_mask = _tokenize_captions(
            tokenizer, captions[start : start + batch_size]
        )
        corrupted, labels = mask_tokens(
            input_ids,
            attention_mask,
            tokenizer,
            generator,
            mask_probability=mask_probability,
            replace_fraction=1.0,
            random_fraction=0.0,
        )
        logits = model(input_ids=corrupted, attention_mask=attention_mask).logits
        scored = labels != -100
        correct += int((logits.argmax(-1)[scored] == labels[scored]).sum())
        total += int(scored.sum())
    return correct / max(1, total)


def train_mlm(
    recipe: MlmRecipe,
    output_dir: Path,
    *,
    dataset: CaptionDataset | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train toy-mlm on world-train captions; save model and tokenizer with `save_pretrained`."""
    progress = ensure_progress(progress)
    dataset = _train_dataset(dataset, recipe)
    tokenizer = world_tokenizer(blip=False, **_vocab_source(dataset))
    model = new_masked_lm(recipe, tokenizer)
    optimizer = _adamw(list(model.named_parameters()), recipe.learning_rate, recipe.weight_decay)
    captions = list(dataset.captions)
    rng = np.random.default_rng(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    total_steps = _steps(len(captions), recipe.batch_size, recipe.epochs)
    schedule = cosine_learning_rate(recipe.learning_rate, total_steps, recipe.warmup_fraction)

    model.train()
    start = time.perf_counter()
    step, loss_value = 0, float("nan")
    with progress.task(f"train {recipe.name}", total_steps) as task:
        for indices in _image_batches(len(captions), recipe.batch_size, recipe.epochs, rng):
            input_ids, attention_mask = _tokenize_captions(
                tokenizer, [captions[i] for i in indices]
            )
            corrupted, labels = mask_tokens(
                input_ids,
                attention_mask,
                tokenizer,
                generator,
                mask_probability=recipe.mask_probability,
            )
            _set_learning_rate(optimizer, schedule(step))
            loss = masked_lm_loss(model, corrupted, attention_mask, labels)
            loss_value = clipped_step(optimizer, loss, model.parameters())
            step += 1
            task.advance()
    seconds = time.perf_counter() - start

    model.eval()
    _save_masked_lm(model, tokenizer, Path(output_dir))
    report = TrainReport(recipe.name, Path(output_dir), seconds, step, loss_value, recipe.config())
    write_training_record(report, dataset)
    return report


def _save_masked_lm(model, tokenizer, folder: Path) -> None:
    """`save_pretrained` model + tokenizer, without transformers' progress bars."""
    from transformers.utils import logging as hf_logging

    folder.mkdir(parents=True, exist_ok=True)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def train_blip_recipe(
    recipe: BlipRecipe,
    output_dir: Path,
    *,
    dataset: CaptionDataset | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Run the trainer that fits the recipe's type (for `robust zoo train NAME`)."""
    if isinstance(recipe, BlipRetrievalRecipe):
        return train_blip_retrieval(recipe, output_dir, dataset=dataset, progress=progress)
    if isinstance(recipe, BlipCaptionRecipe):
        return train_blip_captioner(recipe, output_dir, dataset=dataset, progress=progress)
    if isinstance(recipe, MlmRecipe):
        return train_mlm(recipe, output_dir, dataset=dataset, progress=progress)
    raise RobustError(f"no trainer for a {type(recipe).__name__}")
