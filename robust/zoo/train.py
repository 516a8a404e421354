"""The project's own training code for the toy zoo (`robust zoo train NAME`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robust.data.dataset import CaptionDataset
from robust.data.world import MAX_TRAIN_IMAGES, ZOO_WORLD
from robust.errors import RobustError
from robust.progress import Progress, ensure_progress
from robust.resources import ZOO_DIR
from robust.zoo.augment import noisy_caption, random_erasing
from robust.zoo.recipes import RECIPES, ClipRecipe
from robust.zoo.record import TrainReport, write_training_record
from robust.zoo.scene_attributes import (
    attribute_loss,
    prior_loss,
    scene_attribute_names,
    scene_attribute_targets,
    top_k_precision,
    top_k_precision_by_kind,
)
from robust.zoo.schedule import clipped_step, cosine_learning_rate
from robust.zoo.train_albef import ALBEF_RECIPES, train_albef
from robust.zoo.train_blip import (
    BLIP_RECIPES,
    BlipCaptionRecipe,
    BlipRetrievalRecipe,
    train_blip_captioner,
    train_blip_retrieval,
    train_mlm,
)
from robust.zoo.warm_start import check_trained_world, clip_state, training_record


def zoo_recipes() -> dict[str, tuple[Any, Callable[..., TrainReport]]]:
    """Every zoo member's recipe and the trainer that runs it, by name."""

    def blip_trainer(recipe: Any) -> Callable[..., TrainReport]:
        if isinstance(recipe, BlipRetrievalRecipe):
            return train_blip_retrieval
        if isinstance(recipe, BlipCaptionRecipe):
            return train_blip_captioner
        return train_mlm

    recipes: dict[str, tuple[Any, Callable[..., TrainReport]]] = {
        name: (recipe, train_clip) for name, recipe in RECIPES.items()
    }
    recipes.update({name: (r, blip_trainer(r)) for name, r in BLIP_RECIPES.items()})
    recipes.update({name: (r, train_albef) for name, r in ALBEF_RECIPES.items()})
    return recipes


def train_zoo_member(
    name: str,
    output_dir: Path | None = None,
    *,
    seed: int | None = None,
    epochs: int | None = None,
    train_images: int | None = None,
    learning_rate: float | None = None,
    init: str | None = None,
    world: str | None = None,
    vision_init: str | None = None,
    text_init: str | None = None,
    attribute_epochs: int | None = None,
    attribute_weight: float | None = None,
    attribute_text: bool | None = None,
    attribute_kinds: tuple[str, ...] | None = None,
    dataset: CaptionDataset | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Train one toy victim on world train and save it in its family's real format.

    `init` (CLIP toys) starts from an existing member's weights, so the recipe's schedule
    runs as a fine-tune of it; its training record is kept inside the new one. `world`
    (default: the zoo's, ZOO_WORLD) is the world version trained on, the recipe adapted by
    its `for_world`; `vision_init` / `text_init`
    (fusion toys, the captioner) name the members its towers warm-start from, which must
    have been trained on the same world. `attribute_epochs` (CLIP toys) sets the image
    tower's supervised start on scene attributes and `attribute_weight` (CLIP, ALBEF and
    TCL toys) the weight of that loss in the contrastive epochs; `attribute_text` makes the
    captions' embeddings answer to the same head; `attribute_kinds` limits what the head
    learns (`ClipRecipe`, `AlbefRecipe`).
    """
    recipes = zoo_recipes()
    if name not in recipes:
        raise RobustError(f"no zoo recipe named {name!r}; choose one of {', '.join(recipes)}")
    recipe, trainer = recipes[name]
    recipe = recipe.for_world(ZOO_WORLD if world is None else world)
    requested = {
        "seed": seed,
        "epochs": epochs,
        "train_images": train_images,
        "learning_rate": learning_rate,
        "init": init,
        "vision_init": vision_init,
        "text_init": text_init,
        "attribute_epochs": attribute_epochs,
        "attribute_weight": attribute_weight,
        "attribute_text": attribute_text,
        "attribute_kinds": attribute_kinds,
    }
    overrides = {k: v for k, v in requested.items() if v is not None}
    if overrides.get("epochs", 1) <= 0:
        raise RobustError(f"--epochs must be positive, got {epochs}")
    if not 0 < overrides.get("train_images", 1) <= MAX_TRAIN_IMAGES:
        raise RobustError(f"--train-images must be in 1..{MAX_TRAIN_IMAGES:,}, got {train_images}")
    if overrides.get("learning_rate", 1.0) <= 0:
        raise RobustError(f"--learning-rate must be positive, got {learning_rate}")
    if overrides.get("attribute_epochs", 0) < 0:
        raise RobustError(f"--attribute-epochs must be 0 or more, got {attribute_epochs}")
    if overrides.get("attribute_weight", 0.0) < 0:
        raise RobustError(f"--attribute-weight must be 0 or more, got {attribute_weight}")
    accepted = {f.name for f in fields(recipe)}
    for key in overrides:
        if key not in accepted:
            option = "--" + key.replace("_", "-")
            raise RobustError(f"{option} does not apply to {name}'s recipe; leave it out")
    recipe = replace(recipe, **overrides)
    if getattr(recipe, "attribute_text", False) and recipe.attribute_weight <= 0:
        raise RobustError("--attribute-text needs --attribute-weight above 0 to train anything")
    if getattr(recipe, "attribute_kinds", None) is not None:
        try:
            scene_attribute_names(recipe.world, recipe.attribute_kinds)
        except ValueError as error:
            raise RobustError(f"--attribute-kinds: {error}") from None
        if getattr(recipe, "attribute_epochs", 0) <= 0 and recipe.attribute_weight <= 0:
            trains = "--attribute-weight"
            if hasattr(recipe, "attribute_epochs"):
                trains = "--attribute-epochs or --attribute-weight"
            raise RobustError(f"--attribute-kinds needs {trains} above 0 to train anything")
    check_warm_start_worlds(recipe)
    output_dir = Path(output_dir) if output_dir is not None else ZOO_DIR / name
    return trainer(recipe, output_dir, dataset=dataset, progress=progress)


WARM_START_OPTIONS = {"init": "--init", "vision_init": "--vision-init", "text_init": "--text-init"}


def check_warm_start_worlds(recipe: Any) -> None:
    """Refuse, in one line naming the options to pass, a warm start from a member trained
    on another world than the recipe's."""
    options = {field.name: WARM_START_OPTIONS.get(field.name) for field in fields(recipe)}
    own = [option for option in options.values() if option is not None]
    for field_name, option in options.items():
        source = getattr(recipe, field_name)
        if option is None or source is None:
            continue
        fix = (
            f"to train {recipe.name} on {recipe.world}, pass {' and '.join(own)} "
            f"naming members trained with --world {recipe.world}"
        )
        check_trained_world(source, recipe.world, fix)


def train_clip(
    recipe: ClipRecipe,
    output_dir: Path,
    *,
    dataset: CaptionDataset | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Symmetric InfoNCE on (image, one random caption) pairs; saves an open_clip local-dir."""
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from robust.data.world import confusable_words, generate_world
    from robust.victims.openclip import save_local_dir

    progress = ensure_progress(progress)
    torch.manual_seed(recipe.seed)
    generator = np.random.default_rng(recipe.seed)
    erase_generator = torch.Generator().manual_seed(recipe.seed)
    model = CLIP(**recipe.model_cfg)
    init_record = None
    if recipe.init is not None:
        init_record = training_record(recipe.init)
        state = clip_state(recipe.init)
        own = model.state_dict()
        misfit = sorted(
            key for key in own.keys() | state.keys()
            if key not in own or key not in state or own[key].shape != state[key].shape
        )  # fmt: skip
        if misfit:
            raise RobustError(
                f"--init {recipe.init}: its weights do not fit {recipe.name}'s architecture "
                f"(first at {misfit[0]}); start from a member trained with the same recipe"
            )
        model.load_state_dict(state)
    model.train()
    # The world split is generated only once the weights are known to fit: a bad --init
    # fails in a second, not after rendering 20,000 images.
    if dataset is None:
        dataset = generate_world("train", count=recipe.train_images, version=recipe.world)
    # Kept as generated (N, H, W, 3) and laid out channel-first a batch at a time, so a
    # large train split is not held twice.
    pixels = torch.from_numpy(dataset.images.pixels)  # type: ignore[attr-defined]
    tokenizer = SimpleTokenizer(context_length=recipe.model_cfg["text_cfg"]["context_length"])
    tokens = tokenizer(list(dataset.captions))
    caption_generator = np.random.default_rng([recipe.seed, 1])
    vocabulary = sorted({word for caption in dataset.captions for word in caption.split(" ")})
    confusable = confusable_words(recipe.world)
    caption_noise = (
        max(recipe.caption_word_dropout, recipe.caption_word_swap, recipe.caption_attribute_noise)
        > 0
    )
    image_captions = [np.asarray(c) for c in dataset.image_captions]
    mean = torch.tensor(recipe.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(recipe.preprocess_cfg["std"]).view(1, 3, 1, 1)

    def training_images(indices: np.ndarray, *, erase: bool) -> torch.Tensor:
        images = pixels[indices].permute(0, 3, 1, 2).contiguous().float() / 255.0
        if erase and recipe.erase_probability > 0:
            images = random_erasing(
                images,
                probability=recipe.erase_probability,
                area_range=tuple(recipe.erase_area),
                generator=erase_generator,
            )
        return (images - mean) / std

    head, attribute_targets, details = None, None, {}
    if recipe.attribute_epochs > 0 or recipe.attribute_weight > 0:
        attribute_targets = scene_attribute_targets(
            dataset.labels, recipe.world, recipe.attribute_kinds
        )
        head = torch.nn.Linear(recipe.model_cfg["embed_dim"], attribute_targets.shape[1])
    if recipe.attribute_epochs > 0:
        details["attribute_start"] = train_attribute_start(
            model, head, attribute_targets, training_images, recipe, generator, progress
        )
    trained = torch.nn.ModuleList([model] if head is None else [model, head])
    optimizer = adamw(trained, recipe.learning_rate, recipe.weight_decay)
    num_images = pixels.shape[0]
    steps_per_epoch = num_images // recipe.batch_size
    total_steps = steps_per_epoch * recipe.epochs
    learning_rate = cosine_learning_rate(recipe.learning_rate, total_steps, recipe.warmup_fraction)

    start = time.perf_counter()
    step = 0
    loss_value = float("nan")
    with progress.task(f"train {recipe.name}", total_steps) as task:
        for _ in range(recipe.epochs):
            order = generator.permutation(num_images)
            for batch_start in range(0, steps_per_epoch * recipe.batch_size, recipe.batch_size):
                indices = order[batch_start : batch_start + recipe.batch_size]
                chosen = [int(generator.choice(image_captions[i])) for i in indices]
                images = training_images(indices, erase=True)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step)
                image_embeddings = model.encode_image(images)
                image_features = F.normalize(image_embeddings, dim=-1)
                if caption_noise:
                    texts = [
                        noisy_caption(
                            dataset.captions[i],
                            caption_generator,
                            drop=recipe.caption_word_dropout,
                            swap=recipe.caption_word_swap,
                            vocabulary=vocabulary,
                            confuse=recipe.caption_attribute_noise,
                            confusable=confusable,
                        )
                        for i in chosen
                    ]
                    text_tokens = tokenizer(texts)
                else:
                    text_tokens = tokens[chosen]
                text_embeddings = model.encode_text(text_tokens)
                text_features = F.normalize(text_embeddings, dim=-1)
                logits = model.logit_scale.exp().clamp(max=100) * image_features @ text_features.T
                targets = torch.arange(len(indices))
                loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
                if recipe.attribute_weight > 0:
                    text_side = text_embeddings if recipe.attribute_text else None
                    loss = loss + recipe.attribute_weight * attribute_loss(
                        head, attribute_targets[indices], image_embeddings, text_side
                    )
                loss_value = clipped_step(optimizer, loss, trained.parameters())
                step += 1
                task.advance()
    seconds = time.perf_counter() - start

    model.eval()
    if head is not None:
        details["attribute_scores"] = attribute_scores(model, head, recipe, mean, std)
    dtype = getattr(torch, recipe.save_dtype)
    saved = model.to(dtype)
    save_local_dir(saved, recipe.model_cfg, recipe.preprocess_cfg, output_dir)
    report = TrainReport(
        recipe.name, output_dir, seconds, step, loss_value, recipe.config(), details
    )
    record_path = write_training_record(report, dataset)
    if recipe.init is not None:
        record = json.loads(record_path.read_text())
        record["command"] += f" --init {recipe.init}"
        record["init_record"] = init_record
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return report


def adamw(module: torch.nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW as every CLIP recipe runs it: weight decay on matrices but not on embeddings,
    biases or gains; betas 0.9/0.98."""
    decay, rest = [], []
    for name, parameter in module.named_parameters():
        decayed = parameter.ndim >= 2 and "embedding" not in name
        (decay if decayed else rest).append(parameter)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(0.9, 0.98))


def train_attribute_start(
    model: torch.nn.Module,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    training_images: Callable[..., torch.Tensor],
    recipe: ClipRecipe,
    generator: np.random.Generator,
    progress: Progress,
) -> dict:
    """The image tower's supervised start: `recipe.attribute_epochs` epochs of multi-label
    binary cross-entropy on what each scene holds, through `head`; the text tower waits.
    Images are not erased here (a rectangle can hide an object its label still names)."""
    trained = torch.nn.ModuleList([model.visual, head])
    optimizer = adamw(trained, recipe.attribute_learning_rate, recipe.weight_decay)
    num_images = targets.shape[0]
    steps_per_epoch = num_images // recipe.batch_size
    total_steps = steps_per_epoch * recipe.attribute_epochs
    learning_rate = cosine_learning_rate(
        recipe.attribute_learning_rate, total_steps, recipe.warmup_fraction
    )
    step, loss_value = 0, float("nan")
    start = time.perf_counter()
    with progress.task(f"attribute start {recipe.name}", total_steps) as task:
        for _ in range(recipe.attribute_epochs):
            order = generator.permutation(num_images)
            for batch_start in range(0, steps_per_epoch * recipe.batch_size, recipe.batch_size):
                indices = order[batch_start : batch_start + recipe.batch_size]
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step)
                embeddings = model.encode_image(training_images(indices, erase=False))
                loss = attribute_loss(head, targets[indices], embeddings)
                loss_value = clipped_step(optimizer, loss, trained.parameters())
                step += 1
                task.advance()
    return {
        "steps": step,
        "seconds": round(time.perf_counter() - start, 1),
        "final_loss": loss_value,
        "prior_loss": prior_loss(targets),
    }


ATTRIBUTE_SCORE_IMAGES = 500


def attribute_scores(
    model: torch.nn.Module,
    head: torch.nn.Linear,
    recipe: ClipRecipe,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> dict:
    """How well the trained tower tells what unseen scenes hold: the attribute loss against
    guessing each attribute's frequency, and top-k precision, on the first
    `ATTRIBUTE_SCORE_IMAGES` images of world val."""
    from robust.data.world import generate_world

    size = recipe.model_cfg["vision_cfg"]["image_size"]
    val = generate_world("val", count=ATTRIBUTE_SCORE_IMAGES, version=recipe.world, size=size)
    targets = scene_attribute_targets(val.labels, recipe.world, recipe.attribute_kinds)
    pixels = torch.from_numpy(val.images.pixels).permute(0, 3, 1, 2).float() / 255.0  # type: ignore[attr-defined]
    with torch.no_grad():
        logits = torch.cat(
            [head(model.encode_image((chunk - mean) / std)) for chunk in pixels.split(100)]
        )
    return {
        "images": f"{val.name}[:{ATTRIBUTE_SCORE_IMAGES}]",
        "loss": float(F.binary_cross_entropy_with_logits(logits, targets)),
        "prior_loss": prior_loss(targets),
        "top_k_precision": top_k_precision(logits, targets),
        "top_k_precision_by_kind": top_k_precision_by_kind(
            logits, targets, scene_attribute_names(recipe.world, recipe.attribute_kinds)
        ),
    }
