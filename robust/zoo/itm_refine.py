"""ITM refinement of a trained fusion toy on the hard negatives that re-ranking faces.

Re-ranked retrieval asks ITM to order the k_test candidates ITC ranks highest. The main
recipes train ITM on in-batch negatives (one image in 128, mostly easy ones early on), and
on world test-1k re-ranking then lost 2-5 IR R@1 points against ITC alone. This stage
mines, across all of world train, the `negatives_from_top` images ITC ranks highest for
every caption (its own image and any image with an identical caption left out) and the
captions ranked highest for every image, then trains the two-class ITM loss ALBEF and BLIP
use: each caption with its image, with a mined negative image, and the image with a mined
negative caption (one positive in three, as in the papers). On world data a drawn negative
that the scene labels say the caption truly describes (world captions leave sizes,
positions and backgrounds out) is drawn again, so no correct pair is trained as a mismatch.

Only weights that ITM alone reads are trained: ALBEF/TCL's fusion layers (and their
cross-attention), BLIP's cross-attention, and `itm_head`. The ViT, the unimodal text
layers and the ITC projections stay frozen, so ITC scores are unchanged bit for bit: the
ITC rows of every table, and attacks that read ITC only, do not move.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robust.data.dataset import CaptionDataset
from robust.data.world import MAX_TRAIN_IMAGES, ZOO_WORLD
from robust.errors import RobustError
from robust.progress import Progress, ensure_progress
from robust.resources import ZOO_DIR
from robust.victims.base import Victim
from robust.zoo.recipes import known_world
from robust.zoo.record import TrainReport, write_training_record
from robust.zoo.schedule import clipped_step, cosine_learning_rate
from robust.zoo.warm_start import check_trained_world

ITM_REFINE_COMMAND = "robust zoo refine-itm"
IMAGE_CHUNK = 512
CAPTION_CHUNK = 2048


@dataclass(frozen=True)
class ItmRefineRecipe:
    """How ITM is refined: `epochs` passes over every world-train caption, `batch_size`
    captions per step (3x as many ITM pairs), negatives drawn uniformly from each query's
    `negatives_from_top` ITC-nearest non-matches, AdamW with warmup and cosine decay."""

    epochs: int = 2
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.02
    warmup_fraction: float = 0.05
    negatives_from_top: int = 128
    seed: int = 0
    train_images: int | None = None
    # the world version trained on (robust.data.world.WORLD_VERSIONS)
    world: str = ZOO_WORLD

    def __post_init__(self) -> None:
        known_world(self.world)
        checks = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "negatives_from_top": self.negatives_from_top >= 1,
            "train_images": self.train_images is None or 2 <= self.train_images <= MAX_TRAIN_IMAGES,
        }
        for field_name, ok in checks.items():
            if not ok:
                raise RobustError(
                    f"ITM refinement: {field_name} = {getattr(self, field_name)} is out of "
                    f"range; --{field_name.replace('_', '-')} takes a positive value "
                    f"(train images 2..{MAX_TRAIN_IMAGES:,})"
                )


@dataclass(frozen=True)
class RefineMember:
    """A fusion toy that can be refined: how to load a folder of it, and save one."""

    name: str
    family: str  # "albef", "tcl" or "hf-blip": the spec prefix that loads its folder

    def spec(self, folder: Path) -> str:
        if self.family == "hf-blip":
            return f"hf-blip:{folder}"
        from robust.zoo.train_albef import CHECKPOINT_FILE

        return f"{self.family}:{folder / CHECKPOINT_FILE}"


REFINABLE = {
    "toy-albef": RefineMember("toy-albef", "albef"),
    "toy-tcl": RefineMember("toy-tcl", "tcl"),
    "toy-blip": RefineMember("toy-blip", "hf-blip"),
}


def itm_parameters(victim: Victim) -> list[tuple[str, nn.Parameter]]:
    """The weights ITM reads and ITC does not, by family: ALBEF/TCL's fusion layers,
    BLIP's cross-attention (its self-attention is shared with ITC), and `itm_head`."""
    from robust.victims.albef import AlbefVictim
    from robust.victims.blip import BlipRetrievalVictim

    if isinstance(victim, AlbefVictim):
        encoder = victim.model.text_encoder
        prefix = "text_encoder.encoder.layer."
        fusion = tuple(
            f"{prefix}{index}." for index in range(encoder.fusion_layer, len(encoder.encoder.layer))
        )
        chosen = [
            (name, parameter)
            for name, parameter in victim.model.named_parameters()
            if name.startswith(fusion) or name.startswith("itm_head.")
        ]
    elif isinstance(victim, BlipRetrievalVictim):
        chosen = [
            (name, parameter)
            for name, parameter in victim.model.named_parameters()
            if (name.startswith("text_encoder.") and ".crossattention." in name)
            or name.startswith("itm_head.")
        ]
    else:
        raise RobustError(
            f"{victim.name}: ITM refinement needs an ALBEF, TCL or BLIP retrieval victim"
        )
    return chosen


def positive_pairs(dataset: CaptionDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(caption, image) index pairs that match: each caption with its own image, and with
    every other image that has a caption of identical text (so mining never calls a
    correct description a negative)."""
    images_of_text: dict[str, set[int]] = {}
    for caption, text in enumerate(dataset.captions):
        images_of_text.setdefault(text, set()).add(int(dataset.caption_image[caption]))
    captions, images = [], []
    for caption, text in enumerate(dataset.captions):
        for image in sorted(images_of_text[text]):
            captions.append(caption)
            images.append(image)
    return torch.tensor(captions), torch.tensor(images)


def mine_hard_negatives(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    positives: tuple[torch.Tensor, torch.Tensor],
    top: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top` ITC-nearest non-matching images of every caption `[T, top]` and captions
    of every image `[I, top]`, from `positives` = (caption, image) matching pairs."""
    pair_captions, pair_images = positives
    image_negatives = _top_non_matches(
        text_features, image_features, pair_captions, pair_images, top, CAPTION_CHUNK
    )
    text_negatives = _top_non_matches(
        image_features, text_features, pair_images, pair_captions, top, IMAGE_CHUNK
    )
    return image_negatives, text_negatives


def _top_non_matches(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    pair_queries: torch.Tensor,
    pair_gallery: torch.Tensor,
    top: int,
    chunk: int,
) -> torch.Tensor:
    """Per query, the `top` most similar gallery rows that are not among its matches."""
    rows = []
    for start in range(0, queries.shape[0], chunk):
        stop = min(start + chunk, queries.shape[0])
        similarity = queries[start:stop] @ gallery.T
        inside = (pair_queries >= start) & (pair_queries < stop)
        similarity[pair_queries[inside] - start, pair_gallery[inside]] = -math.inf
        if top > similarity.shape[1]:
            raise _too_few_non_matches(top)
        values, indices = similarity.topk(top, dim=1)
        if not torch.isfinite(values).all():
            raise _too_few_non_matches(top)
        rows.append(indices)
    return torch.cat(rows)


def _too_few_non_matches(top: int) -> RobustError:
    return RobustError(
        f"ITM refinement: negatives_from_top {top} exceeds the non-matching images or "
        "captions some query has; lower --negatives-from-top or train on more images"
    )


def world_matches(dataset: CaptionDataset) -> Callable[[int, int], bool] | None:
    """For world data, whether caption t is true of image i by the scene labels (a short
    caption fits every scene that differs only in what it leaves out); None elsewhere."""
    from robust.data.world import caption_fits_scene, parse_caption

    labels = getattr(dataset, "labels", None)
    if not labels or not all(isinstance(label, dict) and "objects" in label for label in labels):
        return None
    try:
        claims = [parse_caption(caption) for caption in dataset.captions]
    except ValueError:
        return None
    return lambda caption, image: caption_fits_scene(claims[caption], labels[image])


def draw_negatives(
    candidates: torch.Tensor,
    queries: torch.Tensor,
    generator: torch.Generator,
    is_match: Callable[[int, int], bool] | None,
    *,
    query_is_caption: bool,
    attempts: int = 8,
) -> torch.Tensor:
    """One negative per query, uniform over its mined `candidates` row; a draw that
    `is_match` says is a true description is drawn again (`attempts` times, then from the
    whole gallery), so no correct pair is trained as a mismatch."""
    rows = candidates[queries]
    drawn = rows[
        torch.arange(len(queries)),
        torch.randint(rows.shape[1], (len(queries),), generator=generator),
    ]
    if is_match is None:
        return drawn
    gallery = int(candidates.max()) + 1
    for row, query in enumerate(queries.tolist()):
        for attempt in range(attempts + 1):
            pair = (query, int(drawn[row])) if query_is_caption else (int(drawn[row]), query)
            if not is_match(*pair):
                break
            pool = rows[row] if attempt < attempts else torch.arange(gallery)
            drawn[row] = pool[torch.randint(len(pool), (1,), generator=generator)]
    return drawn


def cached_image_tokens(
    victim: Victim, dataset: CaptionDataset, progress: Progress, batch_size: int = 256
) -> torch.Tensor:
    """The frozen ViT's output tokens of every training image, computed once."""
    from robust.data.images import load_images

    scorer = victim.itm_scorer()
    batches = []
    with torch.no_grad(), progress.task("ViT tokens of world train", dataset.num_images) as task:
        for start in range(0, dataset.num_images, batch_size):
            indices = list(range(start, min(start + batch_size, dataset.num_images)))
            images = load_images(dataset.images, indices, victim.image_size, victim.resize_mode)
            batches.append(scorer.image_tokens(images.to(victim.device)).float())
            task.advance(len(indices))
    return torch.cat(batches)


def refine_itm(
    victim: Victim,
    recipe: ItmRefineRecipe,
    dataset: CaptionDataset,
    *,
    progress: Progress | None = None,
) -> tuple[int, float, float]:
    """Refine `victim`'s ITM in place on mined hard negatives from `dataset`.

    Returns (steps, final loss, seconds). Only the ITM weights require gradients during
    the run; every flag is restored after it and the victim is left in eval mode.
    """
    from robust.eval.retrieval import encode_dataset

    progress = ensure_progress(progress)
    trainable = itm_parameters(victim)
    trainable_ids = {id(parameter) for _, parameter in trainable}
    flags = [(p, p.requires_grad) for p in victim.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(id(parameter) in trainable_ids)
    try:
        start_time = time.perf_counter()
        victim.eval()
        image_features, text_features = encode_dataset(victim, dataset, batch_size=256)
        image_negatives, text_negatives = mine_hard_negatives(
            image_features, text_features, positive_pairs(dataset), recipe.negatives_from_top
        )
        tokens = cached_image_tokens(victim, dataset, progress)
        is_match = world_matches(dataset)
        caption_image = torch.as_tensor(dataset.caption_image, dtype=torch.long)
        captions = list(dataset.captions)
        optimizer = _optimizer(trainable, recipe)
        generator = torch.Generator().manual_seed(recipe.seed)
        steps_per_epoch = max(1, dataset.num_captions // recipe.batch_size)
        total_steps = steps_per_epoch * recipe.epochs
        learning_rate = cosine_learning_rate(
            recipe.learning_rate, total_steps, recipe.warmup_fraction
        )
        victim.train()
        step, loss_value = 0, float("nan")
        with progress.task(f"refine ITM of {victim.name}", total_steps) as task:
            for _ in range(recipe.epochs):
                order = torch.randperm(dataset.num_captions, generator=generator)
                for batch in order[: steps_per_epoch * recipe.batch_size].split(recipe.batch_size):
                    images = caption_image[batch]
                    negative_images = draw_negatives(
                        image_negatives, batch, generator, is_match, query_is_caption=True
                    )
                    negative_captions = draw_negatives(
                        text_negatives, images, generator, is_match, query_is_caption=False
                    )
                    loss = itm_pair_loss(
                        victim, tokens, captions, batch, images, negative_images, negative_captions
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate(step)
                    loss_value = clipped_step(optimizer, loss, [p for _, p in trainable])
                    step += 1
                    task.advance()
        return step, loss_value, time.perf_counter() - start_time
    finally:
        victim.eval()
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def itm_pair_loss(
    victim: Victim,
    image_tokens: torch.Tensor,
    captions: Sequence[str],
    batch: torch.Tensor,
    images: torch.Tensor,
    negative_images: torch.Tensor,
    negative_captions: torch.Tensor,
) -> torch.Tensor:
    """ALBEF's two-class ITM loss over (image, caption) = positive, (negative image,
    caption) and (image, negative caption) for every caption of `batch`. Each caption's
    ITM text inputs are computed once, without gradient (those layers are frozen)."""
    from robust.victims.albef import trim_padding

    scorer = victim.itm_scorer()
    count = len(batch)
    with torch.no_grad():
        text_inputs, text_mask = scorer.text_inputs(
            [captions[int(i)] for i in torch.cat([batch, negative_captions])]
        )
    text_inputs, text_mask = trim_padding(text_inputs, text_mask)
    pair_texts = torch.cat([torch.arange(count), torch.arange(count), count + torch.arange(count)])
    pair_images = torch.cat([images, negative_images, images])
    image_inputs = scorer.image_inputs(image_tokens[pair_images].to(victim.device))
    logits = scorer.head(image_inputs, text_inputs[pair_texts], text_mask[pair_texts]).float()
    labels = torch.zeros(3 * count, dtype=torch.long, device=logits.device)
    labels[:count] = 1
    return F.cross_entropy(logits, labels)


def _optimizer(
    trainable: Sequence[tuple[str, nn.Parameter]], recipe: ItmRefineRecipe
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, as the main recipes use it."""
    decay = [p for _, p in trainable if p.ndim >= 2]
    no_decay = [p for _, p in trainable if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.learning_rate,
        betas=(0.9, 0.98),
    )


def refine_zoo_member(
    name: str,
    output_dir: Path | None = None,
    *,
    init: Path | None = None,
    recipe: ItmRefineRecipe | None = None,
    dataset: CaptionDataset | None = None,
    progress: Progress | None = None,
) -> TrainReport:
    """Refine the ITM of fusion toy `name` (read from `init`, default its zoo folder) and
    save it in the same format to `output_dir` (default: in place), with a training record
    that keeps the record of the weights it started from."""
    from robust.data.world import generate_world

    if name not in REFINABLE:
        raise RobustError(f"no ITM to refine in {name!r}; choose one of {', '.join(REFINABLE)}")
    member = REFINABLE[name]
    recipe = recipe or ItmRefineRecipe()
    source = Path(init) if init is not None else ZOO_DIR / name
    output_dir = Path(output_dir) if output_dir is not None else ZOO_DIR / name
    record_file = source / "training.json"
    if not record_file.is_file():
        raise RobustError(
            f"{source} has no training.json; pass --init a folder written by "
            f"`robust zoo train {name}`"
        )
    init_record = json.loads(record_file.read_text())
    check_trained_world(
        str(source),
        recipe.world,
        f"pass --init a {name} folder trained with --world {recipe.world}",
    )
    victim = _load_member(member, source)
    if dataset is None:
        dataset = generate_world("train", count=recipe.train_images, version=recipe.world)
    steps, final_loss, seconds = refine_itm(victim, recipe, dataset, progress=progress)
    _save_member(member, victim, source, output_dir)
    report = TrainReport(name, output_dir, seconds, steps, final_loss, asdict(recipe))
    record_path = write_training_record(report, dataset)
    record = json.loads(record_path.read_text())
    record["command"] = f"{ITM_REFINE_COMMAND} {name}"
    record["init_record"] = init_record
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return report


def _load_member(member: RefineMember, folder: Path) -> Victim:
    from robust.victims.registry import load_victim

    weights = Path(member.spec(folder).split(":", 1)[1])
    weights = weights / "config.json" if member.family == "hf-blip" else weights
    if not weights.is_file():
        raise RobustError(
            f"--init {folder}: not a {member.name} folder (no {weights.name}); pass a folder "
            f"written by `robust zoo train {member.name}`"
        )
    try:
        return load_victim(member.spec(folder))
    except RobustError as error:
        raise RobustError(f"--init {folder}: not a {member.name} folder ({error})") from None


def _save_member(member: RefineMember, victim, source: Path, output_dir: Path) -> None:
    """Write the refined weights in the member's own format. Only weights change, so a BLIP
    folder keeps its source's tokenizer and processor files byte for byte."""
    output_dir.mkdir(parents=True, exist_ok=True)
    if member.family == "hf-blip":
        victim.model.save_pretrained(output_dir)
        if source.resolve() != output_dir.resolve():
            for kept in source.iterdir():
                if kept.name.startswith(("tokenizer", "special_tokens", "preprocessor")):
                    shutil.copyfile(kept, output_dir / kept.name)
    else:
        from robust.victims.albef import save_albef_checkpoint
        from robust.zoo.train_albef import CHECKPOINT_FILE

        save_albef_checkpoint(victim, output_dir / CHECKPOINT_FILE)
