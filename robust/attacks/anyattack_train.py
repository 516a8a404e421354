"""Training AnyAttack decoders: self-supervised pre-training and fine-tuning with auxiliaries.

Pre-training (the released `main_ddp.py` recipe, with its defects fixed): for a batch of
images, each image's embedding is a target; its noise is added to K shuffled copies of the
same batch, and a one-directional InfoNCE pulls the mean adversarial embedding towards its
target's. The temperature decays exponentially from `tau_start` to `tau_end` over
`tau_decay_steps` *global* steps (the reference restarts it every epoch).

Fine-tuning: targets from one image set, clean images from another, re-paired at every
step (the reference fixes the pairs once); the loss is a weighted sum over auxiliary
victims, each embedding the adversarial and the target image with its own normalisation,
compared by a symmetric InfoNCE ("contrastive") or by negative cosine ("cosine").

Checkpoints hold the decoder (under the released key), the optimiser, the learning-rate
schedule, the step, the data generator's state and the full config, so a resumed run
draws the same batches and reaches the same weights as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robust.attacks.anyattack import (
    DEFAULT_EPS,
    STATE_KEY,
    DecoderConfig,
    DecoderLoadError,
    NoiseDecoder,
    add_noise,
    bound_noise,
    check_compatible,
    check_eps,
    decoder_from_state,
    read_checkpoint,
    save_decoder,
)
from robust.attacks.base import AttackConfigError
from robust.data.dataset import ArrayImages, FileImages, ImageSource
from robust.data.images import load_images, resize_tensor
from robust.data.world import ZOO_WORLD
from robust.errors import RobustError
from robust.progress import Progress, ensure_progress
from robust.seeding import global_generator_seeded
from robust.victims.base import Victim

CRITERIA: tuple[str, ...] = ("contrastive", "cosine")
FINETUNE_TAU = 0.07
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CHECKPOINT_FORMAT = "robust-anyattack/1"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """What both stages share: the encoder, data, budget, optimiser and run length."""

    encoder: str = "toy-clip-vit"
    data: str = f"{ZOO_WORLD}:train"
    limit: int | None = None
    eps: float = DEFAULT_EPS
    batch_size: int = 64
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    restart_steps: int = 5000
    seed: int = 0
    checkpoint_every: int = 100
    decoder: dict[str, int | str] = field(
        default_factory=lambda: DecoderConfig(bound="tanh").to_dict()
    )

    def __post_init__(self) -> None:
        check_eps(self.eps)
        for name in ("batch_size", "steps", "restart_steps", "checkpoint_every"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise AttackConfigError(f"{name} must be a positive integer, got {value}")
        if self.limit is not None and self.limit < 1:
            raise AttackConfigError(f"limit must be a positive number of images, got {self.limit}")
        if self.lr <= 0:
            raise AttackConfigError(f"lr must be positive, got {self.lr}")
        DecoderConfig(**self.decoder)

    @property
    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(**self.decoder)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **asdict(self)}

    stage = "train"


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainConfig):
    """Self-supervised pre-training: K shuffled clean copies, InfoNCE with a decaying tau."""

    chunks: int = 5
    tau_start: float = 1.0
    tau_end: float = 0.07
    tau_decay_steps: int = 10_000

    stage = "pretrain"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunks < 1:
            raise AttackConfigError(f"chunks (K) must be at least 1, got {self.chunks}")
        if not 0 < self.tau_end <= self.tau_start:
            raise AttackConfigError(
                f"need 0 < tau_end <= tau_start, got {self.tau_end} and {self.tau_start}"
            )
        if self.tau_decay_steps < 1:
            raise AttackConfigError(f"tau_decay_steps must be positive, got {self.tau_decay_steps}")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainConfig):
    """Fine-tuning: `data` holds the targets, `clean` the images that carry the noise."""

    clean: str = f"{ZOO_WORLD}:train"
    auxiliaries: dict[str, float] = field(default_factory=lambda: {"toy-clip-vit": 1.0})
    criterion: str = "cosine"
    init: str | None = None

    stage = "finetune"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.criterion not in CRITERIA:
            raise AttackConfigError(
                f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}"
            )
        if not self.auxiliaries:
            raise AttackConfigError("fine-tuning needs at least one auxiliary victim")
        for name, weight in self.auxiliaries.items():
            if not weight > 0:
                raise AttackConfigError(f"auxiliary {name} has weight {weight}; use > 0")


CONFIG_TYPES: dict[str, type[TrainConfig]] = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
}


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a stage config from a checkpoint's record of it."""
    values = dict(values)
    stage = values.pop("stage", None)
    if stage not in CONFIG_TYPES:
        raise DecoderLoadError(f"checkpoint config has unknown stage {stage!r}")
    cls = CONFIG_TYPES[stage]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DecoderLoadError(f"checkpoint config has unknown fields: {', '.join(unknown)}")
    return cls(**values)


def temperature(config: PretrainConfig, step: int) -> float:
    """tau at a global step: exponential decay from tau_start to tau_end, then constant."""
    progress = min(step / config.tau_decay_steps, 1.0)
    return config.tau_start * (config.tau_end / config.tau_start) ** progress


def open_images(spec: str, limit: int | None = None) -> ImageSource:
    """Images from a folder of image files (searched recursively) or a dataset, maybe cut."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(
            str(p.relative_to(path))
            for p in path.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not files:
            raise RobustError(
                f"image folder {path} holds no {'/'.join(IMAGE_SUFFIXES)} files; "
                f"point --data at a folder of images or a dataset such as {ZOO_WORLD}:train"
            )
        return FileImages(path, tuple(files[:limit]))
    from robust.data import load_dataset

    return load_dataset(spec, limit=limit).images


class ImageBatches:
    """Seeded batches of one image source at a fixed size, preloaded when it is in memory."""

    def __init__(self, source: ImageSource, size: int, mode: str = "squash") -> None:
        self.source = source
        self.size = size
        self.mode = mode
        self._pixels: np.ndarray | None = None
        if isinstance(source, ArrayImages) and source.pixels.shape[1:3] == (size, size):
            self._pixels = source.pixels

    def __len__(self) -> int:
        return len(self.source)

    def draw(self, count: int, generator: torch.Generator) -> torch.Tensor:
        indices = torch.randint(len(self), (count,), generator=generator)
        if self._pixels is not None:
            chosen = torch.from_numpy(self._pixels[indices.numpy()])
            return chosen.permute(0, 3, 1, 2).float().div_(255.0)
        return load_images(self.source, indices.tolist(), self.size, self.mode)


def pretrain_loss(
    decoder: NoiseDecoder,
    encoder: Victim,
    images: torch.Tensor,
    config: PretrainConfig,
    tau: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """One-directional InfoNCE between targets and their mean adversarial embedding."""
    with torch.no_grad():
        targets = encoder.encode_image(_at(images, encoder))
    noise = bound_noise(decoder(targets), config.eps, decoder.config.bound)
    adversarial_sum = torch.zeros_like(targets)
    for _ in range(config.chunks):
        order = torch.randperm(images.shape[0], generator=generator)
        adversarial = add_noise(images[order], noise)
        adversarial_sum = adversarial_sum + encoder.encode_image(_at(adversarial, encoder))
    mean_adversarial = F.normalize(adversarial_sum / config.chunks, dim=-1)
    logits = F.normalize(targets, dim=-1) @ mean_adversarial.T / tau
    return F.cross_entropy(logits, torch.arange(images.shape[0]))


def finetune_loss(
    decoder: NoiseDecoder,
    encoder: Victim,
    auxiliaries: dict[str, tuple[Victim, float]],
    clean: torch.Tensor,
    targets: torch.Tensor,
    config: FinetuneConfig,
) -> torch.Tensor:
    """Weighted auxiliary criteria between adversarial images and their targets."""
    with torch.no_grad():
        target_embeddings = encoder.encode_image(_at(targets, encoder))
    noise = bound_noise(decoder(target_embeddings), config.eps, decoder.config.bound)
    adversarial = add_noise(clean, noise)
    total = torch.zeros(())
    for victim, weight in auxiliaries.values():
        with torch.no_grad():
            wanted = victim.encode_image(_at(targets, victim))
        got = victim.encode_image(_at(adversarial, victim))
        total = total + weight * criterion_loss(config.criterion, got, wanted)
    return total


def criterion_loss(criterion: str, got: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE at tau 0.07, or the negative mean cosine."""
    got, wanted = F.normalize(got, dim=-1), F.normalize(wanted, dim=-1)
    if criterion == "cosine":
        return -(got * wanted).sum(dim=-1).mean()
    logits = got @ wanted.T / FINETUNE_TAU
    labels = torch.arange(got.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _at(images: torch.Tensor, victim: Victim) -> torch.Tensor:
    """Images at a victim's resolution (differentiable resize when sizes differ)."""
    return resize_tensor(images, victim.image_size, victim.resize_mode)


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where it stopped."""

    config: TrainConfig
    decoder: NoiseDecoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    step: int = 0
    losses: list[float] = field(default_factory=list)


def new_state(config: TrainConfig, decoder: NoiseDecoder | None = None) -> TrainState:
    """A fresh run: seeded decoder initialisation, optimiser, schedule and data generator."""
    if decoder is None:
        with global_generator_seeded(config.seed):  # initialisation reads only the global one
            decoder = NoiseDecoder(config.decoder_config)
    decoder.train()
    optimizer = torch.optim.AdamW(
        decoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config.restart_steps
    )
    generator = torch.Generator().manual_seed(config.seed)
    return TrainState(config, decoder, optimizer, scheduler, generator)


def save_checkpoint(state: TrainState, path: Path | str) -> Path:
    """Decoder under the released key, plus optimiser, schedule, step, RNG and config."""
    return save_decoder(
        state.decoder,
        path,
        format=CHECKPOINT_FORMAT,
        optimizer_state_dict=state.optimizer.state_dict(),
        scheduler_state_dict=state.scheduler.state_dict(),
        step=state.step,
        generator_state=state.generator.get_state(),
        losses=list(state.losses),
        config=state.config.to_dict(),
    )


def load_checkpoint(path: Path | str) -> TrainState:
    """A run's full state from a checkpoint written by `save_checkpoint`."""
    payload = read_checkpoint(path)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise DecoderLoadError(
            f"{path} holds a decoder but no training state (it is not a checkpoint of "
            "`robust anyattack pretrain|finetune`); use it with --init or `anyattack load`"
        )
    config = config_from_dict(payload["config"])
    decoder = decoder_from_state(payload[STATE_KEY], config.decoder_config, source=str(path))
    state = new_state(config, decoder)
    state.optimizer.load_state_dict(payload["optimizer_state_dict"])
    state.scheduler.load_state_dict(payload["scheduler_state_dict"])
    state.generator.set_state(payload["generator_state"])
    state.step = int(payload["step"])
    state.losses = [float(x) for x in payload["losses"]]
    return state


StepLoss = Callable[[TrainState], torch.Tensor]


def _run(
    state: TrainState,
    step_loss: StepLoss,
    *,
    until: int | None,
    checkpoint: Path | None,
    progress: Progress | None,
) -> TrainState:
    """Optimise until `until` (default: the config's step count), checkpointing on the way."""
    target = state.config.steps if until is None else min(until, state.config.steps)
    progress = ensure_progress(progress)
    state.decoder.train()
    with progress.task(f"anyattack {state.config.stage}", target - state.step) as task:
        while state.step < target:
            loss = step_loss(state)
            if not torch.isfinite(loss):
                raise RobustError(
                    f"anyattack {state.config.stage}: loss became {loss.item()} at step "
                    f"{state.step}; lower --lr (the last checkpoint is kept)"
                )
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            state.optimizer.step()
            state.scheduler.step()
            state.step += 1
            state.losses.append(float(loss.detach()))
            task.advance()
            if checkpoint is not None and (
                state.step % state.config.checkpoint_every == 0 or state.step == target
            ):
                save_checkpoint(state, checkpoint)
    state.decoder.eval()
    return state


def _load_encoder(name: str, config: TrainConfig) -> Victim:
    from robust.victims.registry import load_victim

    encoder = load_victim(name)
    encoder.requires_grad_(False)
    check_compatible(encoder, config.decoder_config)
    return encoder


def pretrain(
    config: PretrainConfig | TrainState,
    *,
    until: int | None = None,
    checkpoint: Path | str | None = None,
    encoder: Victim | None = None,
    progress: Progress | None = None,
) -> TrainState:
    """Pre-train a decoder (or continue a loaded run) on unlabeled images."""
    state = config if isinstance(config, TrainState) else new_state(config)
    run_config = state.config
    if not isinstance(run_config, PretrainConfig):
        raise AttackConfigError(f"this is a {run_config.stage} run; continue it with finetune")
    encoder = encoder or _load_encoder(run_config.encoder, run_config)
    size = run_config.decoder_config.image_size
    batches = ImageBatches(open_images(run_config.data, run_config.limit), size)

    def step_loss(current: TrainState) -> torch.Tensor:
        images = batches.draw(run_config.batch_size, current.generator)
        tau = temperature(run_config, current.step)
        return pretrain_loss(current.decoder, encoder, images, run_config, tau, current.generator)

    return _run(state, step_loss, until=until, checkpoint=_path(checkpoint), progress=progress)


def finetune(
    config: FinetuneConfig | TrainState,
    *,
    until: int | None = None,
    checkpoint: Path | str | None = None,
    encoder: Victim | None = None,
    auxiliaries: dict[str, Victim] | None = None,
    progress: Progress | None = None,
) -> TrainState:
    """Fine-tune a decoder with auxiliary victims; a new run starts from `config.init`."""
    if isinstance(config, TrainState):
        state = config
    else:
        initial = None
        if config.init is not None:
            from robust.attacks.anyattack import load_decoder

            initial = load_decoder(config.init)
            if initial.config != config.decoder_config:
                raise AttackConfigError(
                    f"--init decoder has sizes {initial.config.to_dict()} but the config "
                    f"asks for {config.decoder}; drop the decoder sizes or match them"
                )
        state = new_state(config, initial)
    run_config = state.config
    if not isinstance(run_config, FinetuneConfig):
        raise AttackConfigError(f"this is a {run_config.stage} run; continue it with pretrain")
    encoder = encoder or _load_encoder(run_config.encoder, run_config)
    given = auxiliaries or {}
    from robust.victims.registry import load_victim

    weighted: dict[str, tuple[Victim, float]] = {}
    for name, weight in run_config.auxiliaries.items():
        victim = given.get(name) or (encoder if name == encoder.name else load_victim(name))
        victim.requires_grad_(False)
        weighted[name] = (victim, weight)
    size = run_config.decoder_config.image_size
    targets = ImageBatches(open_images(run_config.data, run_config.limit), size)
    cleans = ImageBatches(open_images(run_config.clean, run_config.limit), size)

    def step_loss(current: TrainState) -> torch.Tensor:
        target_images = targets.draw(run_config.batch_size, current.generator)
        clean_images = cleans.draw(run_config.batch_size, current.generator)
        return finetune_loss(
            current.decoder, encoder, weighted, clean_images, target_images, run_config
        )

    return _run(state, step_loss, until=until, checkpoint=_path(checkpoint), progress=progress)


def _path(value: Path | str | None) -> Path | None:
    return None if value is None else Path(value)


def loss_summary(losses: list[float], window: int = 20) -> dict[str, float]:
    """Mean loss over the first and last `window` steps, to show training went somewhere."""
    if not losses:
        return {}
    window = max(1, min(window, len(losses) // 2 or 1))
    return {
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "steps": float(len(losses)),
    }


__all__ = [
    "CRITERIA",
    "FinetuneConfig",
    "PretrainConfig",
    "TrainConfig",
    "TrainState",
    "config_from_dict",
    "finetune",
    "load_checkpoint",
    "loss_summary",
    "pretrain",
    "save_checkpoint",
    "temperature",
]
