"""The project's own training code for the toy fusion victims `toy-albef` and `toy-tcl`.

Both train the same `AlbefModel` that the ALBEF/TCL victim loads, on world train, and save it
as an official-layout `.pth` (`{'model': state_dict, 'config': ...}` plus config.json and the
world WordPiece vocab.txt beside it), so the zoo goes through `load_albef_checkpoint`.

Objectives, scaled down from the papers to what a CPU trains in minutes:

- ALBEF: ITC (symmetric InfoNCE, learnable temperature clamped to [0.001, 0.5]) and ITM with
  in-batch negatives drawn from the ITC similarity (hard), after a curriculum of uniformly
  drawn (easy) ones. MLM on the fusion encoder is a recipe option (`mlm_weight`), off in
  the toys: in a 100-step pilot it held ITM at its prior. No momentum distillation.
- TCL: the same, plus its intra-modal contrastive terms: image-image InfoNCE between two
  augmented views of each image and text-text InfoNCE between two different captions of it.
  TCL's local mutual-information term is omitted.

ITC sees `captions_per_image` captions of every image in a batch (multi-positive InfoNCE):
text is cheap next to the ViT, so this buys signal per image at little cost on a CPU.
Captions with identical token ids count as positives of each other (ALBEF's `idx`-based
targets), so duplicate world captions are not pushed apart. Text is tokenised by the
victim's own `tokenize` (`[CLS] x`, no `[SEP]`, 30 tokens) and images are normalised by the
victim's own `normalize`, so training sees exactly what evaluation sees.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robust.data.dataset import CaptionDataset
from robust.errors import RobustError
from robust.progress import Progress, ensure_progress
from robust.victims.albef import (
    FAMILIES,
    AlbefConfig,
    AlbefModel,
    AlbefVictim,
    save_albef_checkpoint,
    trim_padding,
)
from robust.zoo.augment import augment_images, random_erasing
from robust.zoo.itm_negatives import check_easy_schedule, easy_share, sample_negatives
from robust.zoo.masked_lm import MaskedLmHead, mask_tokens
from robust.zoo.recipes import WORLD_IMAGE_SIZE, patch_for_size, world_image_size
from robust.zoo.record import TrainReport, write_training_record
from robust.zoo.scene_attributes import attribute_loss, scene_attribute_targets
from robust.zoo.schedule import clipped_step, cosine_learning_rate
from robust.zoo.vocab import VOCAB_SIZE, build_world_vocab
from robust.zoo.warm_start import (
    TEXT_SOURCE,
    VISION_SOURCE,
    bert_layers_from_masked_lm,
    clip_visual_state,
    copy_into,
    image_projection_from_clip,
    masked_lm_head_state,
    masked_lm_state,
    vit_from_clip,
)

CHECKPOINT_FILE = "checkpoint.pth"
TEMPERATURE_RANGE = (0.001, 0.5)  # ALBEF clamps its learnable `temp` to this range
TOKENIZE_CHUNK = 4096
HEAD_PREFIX = "mlm_head."


def _toy_model() -> dict:
    """An AlbefConfig dict for the toy ALBEF/TCL at world resolution.

    The ViT has toy-clip-vit's visual sizes (width 96, 4 layers, 3 heads, MLP x3, patch 8)
    and the BERT toy-mlm's (hidden 64, 4 heads, FFN 256, 64 positions, its 235-token
    vocabulary), so both warm starts fit: 4 text layers are toy-mlm's 4 layers and the 2
    fusion layers start from its top 2 (cross-attention fresh), as ALBEF's fusion layers start
    from bert-base's top 6. ITC embeddings are 64-d like toy-clip-vit's, so `vision_proj`
    starts as its image projection.
    """
    return {
        "image_size": WORLD_IMAGE_SIZE,
        "patch_size": 8,
        "vision_width": 96,
        "vision_depth": 4,
        "vision_heads": 3,
        "mlp_ratio": 3.0,
        "vocab_size": 235,
        "hidden_size": 64,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "max_position_embeddings": 64,
        "fusion_layer": 4,
        "encoder_width": 96,
        "embed_dim": 64,
    }


@dataclass(frozen=True)
class AlbefRecipe:
    """A tiny ALBEF/TCL model and the schedule that trains it on world train.

    `model` holds `AlbefConfig` fields. `vision_init` / `text_init` name the zoo members
    (or folders) the ViT and the BERT start from (None: random); weights that start fresh
    train at `fresh_lr_scale` times `learning_rate`. `captions_per_image`
    captions of each image enter ITC per step. `image_image_weight` / `text_text_weight`
    switch on TCL's intra-modal terms; `mlm_weight` the fusion encoder's masked-LM term
    (`mlm_probability` of caption tokens masked, BERT's 80/10/10); `augment` applies the
    cheap pixel augmentation (shift up to `max_shift` px, brightness +-`brightness`) to the
    image-text view as well (TCL's second image view is always augmented).
    `erase_probability` / `erase_area` apply Random Erasing to every view, as the CLIP toys
    get it (`robust.zoo.augment.random_erasing`), so the fusion toys tolerate occluders too.
    `itm_easy_schedule` (first step, last step; linear between) is the share of ITM
    negatives drawn uniformly instead of by ITC similarity: from a fresh cross-attention,
    hard negatives alone (world scenes that differ in one attribute) leave ITM at its
    1-in-3 prior, and so does an even mix; easy ones first teach it to read the image.
    `attribute_weight` adds the CLIP toys' scene-attribute loss on the ITC image embedding
    (before normalisation), `attribute_text` on the caption's too, `attribute_kinds` limits
    the head to some kinds (`robust.zoo.scene_attributes`): contrastive training alone on the
    world makes the ITC a colour reader even from a shape-reading ViT.
    """

    name: str
    family: str
    model: dict
    epochs: int = 4
    batch_size: int = 128
    learning_rate: float = 5e-4
    weight_decay: float = 0.02
    warmup_fraction: float = 0.05
    seed: int = 0
    train_images: int | None = None
    # the world version trained on (robust.data.world.WORLD_VERSIONS)
    world: str = "world"
    initial_temperature: float = 0.07
    init_std: float = 0.02
    fresh_lr_scale: float = 4.0
    vision_init: str | None = VISION_SOURCE
    text_init: str | None = TEXT_SOURCE
    captions_per_image: int = 2
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    image_image_weight: float = 0.0
    text_text_weight: float = 0.0
    mlm_weight: float = 0.0
    mlm_probability: float = 0.15
    itm_easy_schedule: tuple[float, float] = (0.0, 0.0)
    augment: bool = False
    max_shift: int = 4
    brightness: float = 0.1
    erase_probability: float = 0.0
    erase_area: tuple[float, float] = (0.01, 0.08)
    attribute_weight: float = 0.0
    attribute_text: bool = False
    attribute_kinds: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        schedule = check_easy_schedule(self.itm_easy_schedule, self.name)
        object.__setattr__(self, "itm_easy_schedule", schedule)
        object.__setattr__(self, "erase_area", tuple(self.erase_area))
        if self.attribute_kinds is not None:
            object.__setattr__(self, "attribute_kinds", tuple(self.attribute_kinds))
        if self.family not in FAMILIES:
            raise RobustError(f"recipe {self.name}: family must be one of {FAMILIES}")
        if self.captions_per_image < (2 if self.intra_modal else 1):
            raise RobustError(
                f"recipe {self.name}: captions_per_image must be at least "
                f"{2 if self.intra_modal else 1} (TCL's text-text term pairs two captions)"
            )

    @property
    def intra_modal(self) -> bool:
        """Whether TCL's second views (augmented image, second caption) are needed."""
        return self.image_image_weight > 0 or self.text_text_weight > 0

    def model_config(self) -> AlbefConfig:
        return AlbefConfig.from_dict(self.model, f"recipe {self.name}")

    def config(self) -> dict:
        """The recipe as its JSON record holds it (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    def for_world(self, version: str) -> AlbefRecipe:
        """This recipe on world `version`: the version's image size with the ViT's patch
        scaled to keep its token count, TCL's view shift scaled with the image, and room
        for any world vocabulary (the text warm start's, up to VOCAB_SIZE tokens);
        unchanged on its own world."""
        if version == self.world:
            return self
        size = world_image_size(version)
        patch = patch_for_size(self.model["patch_size"], self.model["image_size"], size)
        vocab_size = max(self.model["vocab_size"], VOCAB_SIZE)
        model = dict(self.model, image_size=size, patch_size=patch, vocab_size=vocab_size)
        max_shift = self.max_shift * size // self.model["image_size"]
        return replace(self, world=version, model=model, max_shift=max_shift)


ALBEF_RECIPES: dict[str, AlbefRecipe] = {
    "toy-albef": AlbefRecipe(
        name="toy-albef",
        family="albef",
        model=_toy_model(),
        epochs=6,
        itm_easy_schedule=(1.0, 0.0),
    ),
    "toy-tcl": AlbefRecipe(
        name="toy-tcl",
        family="tcl",
        model=_toy_model(),
        epochs=6,
        itm_easy_schedule=(1.0, 0.0),
        erase_probability=0.5,
        image_image_weight=0.5,
        text_text_weight=0.5,
        augment=True,
    ),
}


# ---------------------------------------------------------------------------------- model


def init_albef_model(recipe: AlbefRecipe) -> tuple[AlbefModel, list[str]]:
    """The model a recipe starts from, and the weight names warm-started from the zoo.

    Everything is first initialised as BERT/ViT do (seeded truncated normal, std
    `init_std`, zero biases, unit LayerNorms); then the ViT and `vision_proj` come from
    `recipe.vision_init`'s visual tower and the BERT's embeddings, self-attention and
    feed-forward from `recipe.text_init` (see `robust.zoo.warm_start`). Cross-attention,
    `text_proj` and `itm_head` stay fresh, as in ALBEF.
    """
    torch.manual_seed(recipe.seed)
    model = AlbefModel(recipe.model_config())
    std = recipe.init_std
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    copied: list[str] = []
    if recipe.vision_init is not None:
        clip_visual = clip_visual_state(recipe.vision_init)
        tensors = {
            **vit_from_clip(clip_visual, "albef", "visual_encoder."),
            **image_projection_from_clip(clip_visual, "vision_proj"),
        }
        copied += copy_into(model, tensors, recipe.vision_init)
    if recipe.text_init is not None:
        bert, _ = masked_lm_state(recipe.text_init)
        sources = text_layer_sources(model.config, _masked_lm_depth(bert), recipe.text_init)
        tensors = bert_layers_from_masked_lm(bert, sources, "text_encoder.")
        copied += copy_into(model, tensors, recipe.text_init)
    return model.train(), copied


def new_masked_lm_head(config: AlbefConfig, recipe: AlbefRecipe) -> MaskedLmHead:
    """The fusion encoder's MLM head: from the text warm start's `cls.predictions` when the
    recipe has one (as ALBEF's comes from bert-base), else seeded fresh."""
    torch.manual_seed(recipe.seed + 1)
    head = MaskedLmHead(config.hidden_size, config.vocab_size, config.layer_norm_eps)
    nn.init.trunc_normal_(head.dense.weight, std=recipe.init_std)
    nn.init.zeros_(head.dense.bias)
    if recipe.text_init is not None:
        try:
            head.load_masked_lm(masked_lm_head_state(recipe.text_init))
        except (KeyError, ValueError) as error:
            raise RobustError(f"MLM head warm start from {recipe.text_init}: {error}") from None
    return head


def _masked_lm_depth(bert: dict[str, torch.Tensor]) -> int:
    return len({key.split(".")[2] for key in bert if key.startswith("encoder.layer.")})


def text_layer_sources(config: AlbefConfig, source_depth: int, source: str) -> dict[int, int]:
    """Which masked-LM layer each BERT layer starts from: text layers from the bottom ones,
    fusion layers from the top ones (ALBEF: bert-base layers 0-5 and 6-11)."""
    fusion_depth = config.num_hidden_layers - config.fusion_layer
    if config.fusion_layer > source_depth or fusion_depth > source_depth:
        raise RobustError(
            f"warm start from {source}: it has {source_depth} layers, but the model needs "
            f"{config.fusion_layer} text and {fusion_depth} fusion layers from it; use at most "
            f"{source_depth} of each"
        )
    sources = {layer: layer for layer in range(config.fusion_layer)}
    for layer in range(config.fusion_layer, config.num_hidden_layers):
        sources[layer] = source_depth - (config.num_hidden_layers - layer)
    return sources


def _optimizer(
    model: AlbefModel,
    temperature: nn.Parameter,
    recipe: AlbefRecipe,
    warm_started: set[str],
    head: MaskedLmHead | None = None,
    attribute_head: nn.Linear | None = None,
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not biases, norms, embeddings, temperature).

    Weights that start fresh (cross-attention, `text_proj`, `itm_head`, the temperature)
    learn `fresh_lr_scale` times faster than the warm-started towers, which a high rate
    would wash out; each group's `lr_scale` is applied by the training loop. The MLM head
    is warm-started whenever the text is; the attribute head is always fresh.
    """
    named = list(model.named_parameters())
    if head is not None:
        head_named = [(f"{HEAD_PREFIX}{name}", p) for name, p in head.named_parameters()]
        named += head_named
        if recipe.text_init is not None:
            warm_started = warm_started | {name for name, _ in head_named}
    if attribute_head is not None:
        named += [(f"attribute_head.{name}", p) for name, p in attribute_head.named_parameters()]
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in named:
        is_matrix = parameter.ndim >= 2 and name.endswith(".weight")
        decays = is_matrix and "embeddings" not in name
        groups.setdefault((decays, name in warm_started), []).append(parameter)
    groups.setdefault((False, False), []).append(temperature)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": recipe.weight_decay if decays else 0.0,
                "lr_scale": 1.0 if warm else recipe.fresh_lr_scale,
            }
            for (decays, warm), params in groups.items()
        ],
        lr=recipe.learning_rate,
        betas=(0.9, 0.98),
    )


# ----------------------------------------------------------------------------------- data


def tokenize_all(victim: AlbefVictim, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every caption through the victim's own tokenizer, once, in chunks."""
    ids, masks = [], []
    for start in range(0, len(captions), TOKENIZE_CHUNK):
        chunk_ids, chunk_mask = victim.tokenize(list(captions[start : start + TOKENIZE_CHUNK]))
        ids.append(chunk_ids.cpu())
        masks.append(chunk_mask.cpu())
    return torch.cat(ids), torch.cat(masks)


def caption_keys(input_ids: torch.Tensor) -> torch.Tensor:
    """An id per distinct token sequence: captions with equal keys are the same text."""
    _, keys = torch.unique(input_ids, dim=0, return_inverse=True)
    return keys


def _caption_table(dataset: CaptionDataset) -> tuple[np.ndarray, np.ndarray]:
    """Captions of each image as a padded `[N, max]` table plus per-image counts."""
    counts = np.array([len(c) for c in dataset.image_captions], dtype=np.int64)
    if counts.min() < 1:
        missing = int(np.argmin(counts))
        raise RobustError(f"{dataset.name}: image {missing} has no caption; every image needs one")
    table = np.zeros((len(counts), int(counts.max())), dtype=np.int64)
    for row, captions in enumerate(dataset.image_captions):
        table[row, : len(captions)] = captions
    return table, counts


def sample_captions(
    table: np.ndarray,
    counts: np.ndarray,
    images: np.ndarray,
    rng: np.random.Generator,
    per_image: int = 2,
) -> np.ndarray:
    """`[B, per_image]` caption indices: distinct captions of each image, repeating only
    where an image has fewer than `per_image`."""
    n = counts[images]
    shuffled = rng.random((len(images), table.shape[1]))
    shuffled[np.arange(table.shape[1])[None, :] >= n[:, None]] = np.inf
    order = np.argsort(shuffled, axis=1)
    columns = order[np.arange(len(images))[:, None], np.arange(per_image)[None, :] % n[:, None]]
    return table[images[:, None], columns]


def _dataset_pixels(dataset: CaptionDataset, image_size: int) -> torch.Tensor:
    """All images as uint8 `[N, 3, S, S]` (the world keeps them in one array)."""
    pixels = getattr(dataset.images, "pixels", None)
    if pixels is None:
        from robust.data.images import load_images, to_uint8_array

        indices = list(range(dataset.num_images))
        pixels = to_uint8_array(load_images(dataset.images, indices, image_size, "squash"))
    pixels = np.asarray(pixels)
    if pixels.shape[1:] != (image_size, image_size, 3):
        raise RobustError(
            f"{dataset.name}: images are {pixels.shape[1]}x{pixels.shape[2]} but the recipe's "
            f"model takes {image_size}x{image_size}; resize the dataset or change image_size"
        )
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------- losses


def soft_info_nce(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each row against a uniform target over its positive columns."""
    targets = positives.float() / positives.float().sum(dim=1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def symmetric_info_nce(
    a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor, temperature: torch.Tensor
) -> torch.Tensor:
    """InfoNCE both ways between L2-normalised `a` and `b` (`positives[i, j]`: a_i ~ b_j)."""
    logits = a @ b.T / temperature
    return (soft_info_nce(logits, positives) + soft_info_nce(logits.T, positives.T)) / 2


@dataclass
class Batch:
    """One training batch of B images: pixel views in [0,1] and k captions per image.

    Captions are view-major: row `v * B + i` is caption view `v` of image `i`, so
    `input_ids[:B]` holds one caption of every image. `keys` tells identical texts apart.
    """

    images: torch.Tensor
    input_ids: torch.Tensor
    mask: torch.Tensor
    keys: torch.Tensor
    images_2: torch.Tensor | None = None
    attributes: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return self.images.shape[0]


def _caption_positives(keys: torch.Tensor, size: int) -> torch.Tensor:
    """`[B, kB]`: image i matches caption j if j is one of its captions or the same text as
    one of them (so duplicate world captions are not pushed apart)."""
    owner = torch.arange(keys.shape[0]) % size
    owns = owner[None, :] == torch.arange(size)[:, None]
    same_text = keys[:, None] == keys[None, :]
    return (owns.float() @ same_text.float()) > 0


def training_losses(
    victim: AlbefVictim,
    temperature: torch.Tensor,
    batch: Batch,
    recipe: AlbefRecipe,
    generator: torch.Generator,
    head: MaskedLmHead | None = None,
    easy: float = 0.0,
    attribute_head: nn.Linear | None = None,
) -> dict[str, torch.Tensor]:
    """Every loss term of one step (unweighted) plus their weighted sum under "loss".

    `head` (needed when `recipe.mlm_weight` > 0) is the MLM head of the fusion encoder;
    `easy` is this step's share of uniformly drawn ITM negatives; `attribute_head` (needed
    when `recipe.attribute_weight` > 0) reads `batch.attributes` from the ITC embeddings."""
    if (head is None) != (recipe.mlm_weight <= 0):
        raise ValueError("pass an MLM head exactly when the recipe's mlm_weight is positive")
    if (attribute_head is None) != (recipe.attribute_weight <= 0) or (
        attribute_head is not None and batch.attributes is None
    ):
        raise ValueError(
            "pass an attribute head and batch attributes exactly when attribute_weight > 0"
        )
    model = victim.model
    size = batch.size
    temp = temperature.clamp(*TEMPERATURE_RANGE)

    image_tokens = model.visual_encoder(victim.normalize(batch.images))
    input_ids, mask = trim_padding(batch.input_ids, batch.mask)
    text_hidden = model.text_encoder.text(input_ids, mask)
    image_feat = model.image_features(image_tokens)
    text_feat = model.text_features(text_hidden)
    positives = _caption_positives(batch.keys, size)
    losses = {"itc": symmetric_info_nce(image_feat, text_feat, positives, temp)}
    if attribute_head is not None:
        # the head reads the ITC projections before normalisation, as the CLIP toys' does
        image_embedding = model.vision_proj(image_tokens[:, 0])
        text_embedding = model.text_proj(text_hidden[:size, 0]) if recipe.attribute_text else None
        losses["attribute"] = attribute_loss(
            attribute_head, batch.attributes, image_embedding, text_embedding
        )

    # ITM: each image with its first caption (positive) and with a hard negative among all
    # captions; each first caption with a hard negative image. Negatives are drawn from the
    # (detached) ITC similarity, as ALBEF does.
    similarity = image_feat @ text_feat.T / temp
    negative_text = sample_negatives(similarity, positives, generator, easy)
    first = slice(0, size)
    negative_image = sample_negatives(
        similarity[:, first].T, positives[:, first].T, generator, easy
    )
    fused = model.text_encoder.fusion(
        torch.cat([text_hidden[first], text_hidden[first], text_hidden[negative_text]]),
        torch.cat([mask[first], mask[first], mask[negative_text]]),
        torch.cat([image_tokens, image_tokens[negative_image], image_tokens]),
    )
    itm_labels = torch.cat([torch.ones(size), torch.zeros(2 * size)]).long()
    losses["itm"] = F.cross_entropy(model.itm_head(fused[:, 0]), itm_labels)

    if head is not None:
        # ALBEF's MLM: a masked copy of each first caption, read by the fusion encoder
        # against its own image, predicts the masked words.
        masked_ids, labels = mask_tokens(
            input_ids[first], mask[first], victim.tokenizer, generator,
            mask_probability=recipe.mlm_probability,
        )  # fmt: skip
        masked_hidden = model.text_encoder.text(masked_ids, mask[first])
        fused_masked = model.text_encoder.fusion(masked_hidden, mask[first], image_tokens)
        word_embeddings = model.text_encoder.embeddings.word_embeddings.weight
        logits = head(fused_masked, word_embeddings)
        losses["mlm"] = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)

    if recipe.intra_modal:
        if batch.images_2 is None or batch.input_ids.shape[0] < 2 * size:
            raise ValueError("TCL's intra-modal terms need a second image view and caption")
        image_feat_2 = model.image_features(model.visual_encoder(victim.normalize(batch.images_2)))
        # The second view is aligned with the captions too, as TCL aligns both views.
        losses["itc"] = (
            losses["itc"] + symmetric_info_nce(image_feat_2, text_feat, positives, temp)
        ) / 2
        eye = torch.eye(size, dtype=torch.bool)
        losses["image_image"] = symmetric_info_nce(image_feat, image_feat_2, eye, temp)
        second = slice(size, 2 * size)
        text_positives = (batch.keys[first, None] == batch.keys[None, second]) | eye
        losses["text_text"] = symmetric_info_nce(
            text_feat[first], text_feat[second], text_positives, temp
        )

    weights = {
        "itc": recipe.itc_weight,
        "itm": recipe.itm_weight,
        "image_image": recipe.image_image_weight,
        "text_text": recipe.text_text_weight,
        "mlm": recipe.mlm_weight,
        "attribute": recipe.attribute_weight,
    }
    losses["loss"] = sum(weights[name] * value for name, value in losses.items())
    return losses


# ------------------------------------------------------------------------------- training


def train_albef(
    recipe: AlbefRecipe,
    output_dir: Path,
    *,
    dataset: CaptionDataset | None = None,
    vocab_file: Path | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train a toy ALBEF/TCL on world train and save it as an official-layout checkpoint.

    The vocabulary saved beside it is the text warm start's (toy-mlm's world WordPiece
    vocab); without a text warm start it is `vocab_file`, or one built from world train.
    """
    from robust.data.world import generate_world

    if recipe.epochs <= 0:
        raise RobustError(f"epochs must be positive, got {recipe.epochs}")
    progress = ensure_progress(progress)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    vocab_target = output_dir / "vocab.txt"
    if recipe.text_init is not None:
        _, tokens = masked_lm_state(recipe.text_init)
        vocab_target.write_text("".join(f"{token}\n" for token in tokens))
    elif vocab_file is None:
        build_world_vocab(vocab_target, version=recipe.world)
    elif not vocab_target.exists() or not vocab_target.samefile(vocab_file):
        shutil.copyfile(vocab_file, vocab_target)

    model, warm_started = init_albef_model(recipe)
    victim = AlbefVictim(recipe.name, model, vocab_target, family=recipe.family)
    model.train()
    head = new_masked_lm_head(model.config, recipe) if recipe.mlm_weight > 0 else None
    temperature = nn.Parameter(torch.tensor(float(recipe.initial_temperature)))
    generator = torch.Generator().manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)

    if dataset is None:
        dataset = generate_world("train", count=recipe.train_images, version=recipe.world)
    elif recipe.train_images is not None:
        dataset = dataset.subset(recipe.train_images)
    pixels = _dataset_pixels(dataset, model.config.image_size)
    all_ids, all_masks = tokenize_all(victim, dataset.captions)
    all_keys = caption_keys(all_ids)
    table, counts = _caption_table(dataset)

    num_images = pixels.shape[0]
    batch_size = min(recipe.batch_size, num_images)
    steps_per_epoch = num_images // batch_size
    total_steps = steps_per_epoch * recipe.epochs
    attribute_head, attributes = None, None
    if recipe.attribute_weight > 0:
        attributes = scene_attribute_targets(dataset.labels, recipe.world, recipe.attribute_kinds)
        torch.manual_seed(recipe.seed + 2)
        attribute_head = nn.Linear(model.config.embed_dim, attributes.shape[1])
    optimizer = _optimizer(model, temperature, recipe, set(warm_started), head, attribute_head)
    learning_rate = cosine_learning_rate(recipe.learning_rate, total_steps, recipe.warmup_fraction)
    parameters = [*model.parameters(), temperature]
    for extra in (head, attribute_head):
        if extra is not None:
            parameters += list(extra.parameters())

    start = time.perf_counter()
    step = 0
    last: dict[str, float] = {}
    with progress.task(f"train {recipe.name}", total_steps) as task:
        for _ in range(recipe.epochs):
            order = rng.permutation(num_images)
            for batch_start in range(0, steps_per_epoch * batch_size, batch_size):
                indices = order[batch_start : batch_start + batch_size]
                batch = _make_batch(
                    recipe, pixels, indices, table, counts, all_ids, all_masks, all_keys, rng,
                    generator,
                )  # fmt: skip
                if attributes is not None:
                    batch.attributes = attributes[torch.from_numpy(indices)]
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step) * group["lr_scale"]
                easy = easy_share(recipe.itm_easy_schedule, step, total_steps)
                losses = training_losses(
                    victim, temperature, batch, recipe, generator, head, easy, attribute_head
                )
                clipped_step(optimizer, losses["loss"], parameters)
                with torch.no_grad():
                    temperature.clamp_(*TEMPERATURE_RANGE)
                last = {name: float(value.detach()) for name, value in losses.items()}
                step += 1
                task.advance()
    seconds = time.perf_counter() - start

    model.eval()
    save_albef_checkpoint(victim, output_dir / CHECKPOINT_FILE)
    report = TrainReport(recipe.name, output_dir, seconds, step, last["loss"], recipe.config())
    record_path = write_training_record(report, dataset)
    record = json.loads(record_path.read_text())
    record["final_loss_terms"] = {k: v for k, v in last.items() if k != "loss"}
    record["final_temperature"] = float(temperature.detach())
    record["warm_started_weights"] = len(warm_started)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return report


def _make_batch(
    recipe: AlbefRecipe,
    pixels: torch.Tensor,
    indices: np.ndarray,
    table: np.ndarray,
    counts: np.ndarray,
    all_ids: torch.Tensor,
    all_masks: torch.Tensor,
    all_keys: torch.Tensor,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> Batch:
    """Pixels (augmented where the recipe says) and sampled captions of the given images."""
    captions = torch.from_numpy(
        sample_captions(table, counts, indices, rng, recipe.captions_per_image).T.reshape(-1)
    )
    images = pixels[torch.from_numpy(indices)].float() / 255.0
    views = {"max_shift": recipe.max_shift, "brightness": recipe.brightness}
    view_1 = augment_images(images, **views, generator=generator) if recipe.augment else images
    view_2 = augment_images(images, **views, generator=generator) if recipe.intra_modal else None
    if recipe.erase_probability > 0:
        erase = {"probability": recipe.erase_probability, "area_range": tuple(recipe.erase_area)}
        view_1 = random_erasing(view_1, **erase, generator=generator)
        if view_2 is not None:
            view_2 = random_erasing(view_2, **erase, generator=generator)
    return Batch(view_1, all_ids[captions], all_masks[captions], all_keys[captions], view_2)


def albef_recipe_for(name: str, **overrides: object) -> AlbefRecipe:
    """A toy fusion recipe by name with optional field overrides (None values are ignored)."""
    if name not in ALBEF_RECIPES:
        raise RobustError(
            f"no ALBEF/TCL zoo recipe named {name!r}; choose one of {', '.join(ALBEF_RECIPES)}"
        )
    changes = {key: value for key, value in overrides.items() if value is not None}
    return replace(ALBEF_RECIPES[name], **changes)  # type: ignore[arg-type]
