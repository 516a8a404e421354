"""L-inf PGD on embedding objectives: the image half of every multimodal attack.

One sign-gradient loop (`linf_pgd`) serves the baselines, SGA, and DRA and SA-AET (which move
where each step takes its gradient):

- objective ``"kl"``: the PGD baseline of Co-Attack/SGA, maximising
  KL(softmax(clean image embedding) || softmax(adversarial image embedding));
- objective ``"text_cosine"``: SGA's text-guided image attack, minimising the cosine
  similarity between each adversarial image and the set of its (clean or adversarial)
  captions, summed over the set.

Transfer tricks stack on top, each off by default: MI-FGSM momentum, DI input diversity,
TI gradient smoothing, SI scale copies and SGA's scale set (Gaussian noise plus a bicubic
round trip through each scale). Every copy of the current image is encoded in one batched
forward; their losses are summed, and the gradient is taken w.r.t. the pixels only.

Facts and reference defaults are in ``shared/research/sga.md``: eps 2/255, step 0.5/255,
10 steps, scale set (0.5, 0.75, 1.25, 1.5) with N(0, 0.05^2) noise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from robust.attacks.base import AttackConfigError, ImageAttack, check_budget, project_linf
from robust.attacks.registry import register_attack
from robust.data.images import gaussian_kernel, input_diversity
from robust.victims.base import Victim

__all__ = [
    "OBJECTIVES",
    "PGD",
    "EmbeddingObjective",
    "GradientPoint",
    "PGDParams",
    "caption_set_similarity",
    "embedding_kl",
    "linf_pgd",
    "scale_set_copies",
    "set_similarity",
    "stack_caption_sets",
]

Objective = Literal["kl", "text_cosine"]
OBJECTIVES: tuple[str, ...] = ("kl", "text_cosine")

# Maps the embeddings of every input copy, `[C, B, D]`, to one scalar to *maximise*.
EmbeddingObjective = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PGDParams:
    """PGD hyper-parameters; the defaults are SGA's budget with every transfer trick off.

    `random_start` draws a *two-sided* uniform U(-eps, eps) start (as SGA does); Co-Attack's
    code starts one-sided, U(0, eps). With `random_start=False` the ``"kl"`` objective starts
    at its minimum (KL 0 at the clean image), where its gradient is float round-off (about
    1e-10, non-zero almost everywhere), not zero: `sign()` turns that noise into a full
    step, so the first step goes in a direction of rounding errors. Keep the random start on
    for that objective (as the baselines do).

    - `momentum`: MI-FGSM decay mu (0 = off); the gradient is L1-normalised per image
      before it is accumulated.
    - `di_prob`, `di_resize_ratio`: DI input diversity; with probability `di_prob` a copy is
      resized to a random size in [H, ratio*H), zero-padded at a random offset to ratio*H,
      and resized back to H (the victims only accept their native size).
    - `ti_kernel`: TI smoothing of the gradient with a Gaussian kernel of this odd size
      (0 = off), applied depthwise.
    - `si_copies`: SI; the loss is summed over x / 2^i for i < `si_copies` (1 = off).
    - `scales`, `noise_std`: SGA's scale set; each step adds, per scale s, a copy with
      N(0, noise_std^2) noise, bicubic-resized to s*H, clamped to [0, 1] and resized back.
    """

    eps: float = 2 / 255
    step_size: float = 0.5 / 255
    steps: int = 10
    random_start: bool = True
    objective: Objective = "kl"
    momentum: float = 0.0
    di_prob: float = 0.0
    di_resize_ratio: float = 1.1
    ti_kernel: int = 0
    si_copies: int = 1
    scales: tuple[float, ...] = ()
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        for name in ("eps", "step_size"):
            _check_number(name, getattr(self, name))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int):
            raise AttackConfigError(f"steps must be a positive integer, got {self.steps!r}")
        check_budget(self.eps, self.step_size, self.steps)
        if not isinstance(self.random_start, bool):
            raise AttackConfigError(
                f"random_start must be true or false, got {self.random_start!r}"
            )
        if self.objective not in OBJECTIVES:
            raise AttackConfigError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        _check_number("momentum", self.momentum)
        if self.momentum < 0:
            raise AttackConfigError(f"momentum must be >= 0 (0 = off), got {self.momentum}")
        _check_number("di_prob", self.di_prob)
        if not 0 <= self.di_prob <= 1:
            raise AttackConfigError(
                f"di_prob is a probability and must be in [0, 1], got {self.di_prob}"
            )
        _check_number("di_resize_ratio", self.di_resize_ratio)
        if self.di_resize_ratio <= 1:
            raise AttackConfigError(
                f"di_resize_ratio must be > 1 (e.g. 1.1), got {self.di_resize_ratio}"
            )
        if (
            isinstance(self.ti_kernel, bool)
            or not isinstance(self.ti_kernel, int)
            or self.ti_kernel < 0
            or (self.ti_kernel > 0 and self.ti_kernel % 2 == 0)
        ):
            raise AttackConfigError(
                f"ti_kernel must be 0 (off) or an odd positive kernel size, got {self.ti_kernel!r}"
            )
        if isinstance(self.si_copies, bool) or not isinstance(self.si_copies, int):
            raise AttackConfigError(
                f"si_copies must be a positive integer (1 = off), got {self.si_copies!r}"
            )
        if self.si_copies < 1:
            raise AttackConfigError(
                f"si_copies must be a positive integer (1 = off), got {self.si_copies}"
            )
        if isinstance(self.scales, str | bytes) or not isinstance(self.scales, Sequence):
            raise AttackConfigError(
                f"scales must be a list of positive numbers, got {self.scales!r}"
            )
        for scale in self.scales:
            _check_number("scales", scale)
            if scale <= 0:
                raise AttackConfigError(f"scales must all be positive, got {list(self.scales)}")
        object.__setattr__(self, "scales", tuple(float(scale) for scale in self.scales))
        _check_number("noise_std", self.noise_std)
        if self.noise_std < 0:
            raise AttackConfigError(f"noise_std must be >= 0, got {self.noise_std}")


def _check_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AttackConfigError(f"{name} must be a finite number, got {value!r}")


def embedding_kl(clean_embeddings: torch.Tensor, adv_embeddings: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(softmax(clean) || softmax(adv)) over the embedding dimensions.

    The baselines' PGD (Co-Attack's `run_trades`) maximises this; it broadcasts, so clean
    `[B, D]` against adversarial copies `[C, B, D]` gives `[C, B]`.
    """
    clean_log = F.log_softmax(clean_embeddings.float(), dim=-1)
    adv_log = F.log_softmax(adv_embeddings.float(), dim=-1)
    return (clean_log.exp() * (clean_log - adv_log)).sum(dim=-1)


def caption_set_similarity(
    image_embeddings: torch.Tensor, text_embeddings: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per image, the sum of cosine similarities to each of its captions `[B]` (SGA's set loss).

    `text_embeddings[i]` holds image i's `n_i` caption embeddings `[n_i, D]`.
    """
    texts, owners = stack_caption_sets(text_embeddings, image_embeddings.device)
    return set_similarity(image_embeddings, texts, owners)


def stack_caption_sets(
    text_embeddings: Sequence[torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """All caption embeddings unit-normalised in one `[T, D]` tensor, plus each one's image."""
    counts = [int(embeddings.shape[0]) for embeddings in text_embeddings]
    texts = torch.cat([embeddings.to(device, torch.float32) for embeddings in text_embeddings])
    owners = torch.repeat_interleave(
        torch.arange(len(counts), device=device), torch.tensor(counts, device=device)
    )
    return F.normalize(texts.detach(), dim=-1), owners


def set_similarity(
    image_embeddings: torch.Tensor, texts: torch.Tensor, owners: torch.Tensor
) -> torch.Tensor:
    """Caption-set similarity for `[..., B, D]` images; the leading dims stay (copies)."""
    images = F.normalize(image_embeddings.float(), dim=-1)
    per_caption = (images[..., owners, :] * texts).sum(dim=-1)  # [..., T]
    totals = per_caption.new_zeros((*per_caption.shape[:-1], images.shape[-2]))
    return totals.index_add(-1, owners, per_caption)


def _draw(
    kind: Literal["rand", "randn"],
    shape: Sequence[int],
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Random numbers from `generator` (on its own device), moved to `device`.

    A CPU draw bound for a GPU goes through pinned memory without blocking, so drawing
    noise inside the attack loop never waits for the GPU to finish its queued work.
    """
    draw = torch.rand if kind == "rand" else torch.randn
    values = draw(tuple(shape), generator=generator, device=generator.device)
    if values.device.type == "cpu" and torch.device(device).type == "cuda":
        values = values.pin_memory().to(device, non_blocking=True)
    return values.to(device, torch.float32)


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(
    in_size: int, out_size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """`[out, in]` weights of PyTorch's 1-D bicubic resize (align_corners=False, a=-0.75).

    Read off `F.interpolate` itself by resizing the identity, so borders and weights are
    PyTorch's exactly.
    """
    identity = torch.eye(in_size, device=device, dtype=dtype).reshape(in_size, 1, in_size, 1)
    columns = F.interpolate(identity, size=(out_size, 1), mode="bicubic", align_corners=False)
    return columns[:, 0, :, 0].T.contiguous()


def bicubic_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(images, size, mode="bicubic", align_corners=False)` as two matmuls.

    Bicubic resizing is separable and linear, so it is one large matrix product per axis;
    forward and backward are then GEMMs, about 2.7x less CPU time than interpolate's
    backward in SGA's scale set. Equal to `F.interpolate` up to float rounding (~1e-7).
    """
    batch, channels, height, width = images.shape
    out_height, out_width = size
    rows = _bicubic_matrix(height, out_height, images.device, images.dtype)
    cols = _bicubic_matrix(width, out_width, images.device, images.dtype)
    resized = images.reshape(-1, width) @ cols.T  # [B*C*H, W']
    resized = resized.reshape(batch * channels, height, out_width).transpose(0, 1)
    resized = rows @ resized.reshape(height, -1)  # [H', B*C*W']
    resized = resized.reshape(out_height, batch * channels, out_width).transpose(0, 1)
    return resized.reshape(batch, channels, out_height, out_width)


def scale_set_copies(
    images: torch.Tensor,
    scales: Sequence[float],
    noise_std: float,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """SGA's scale set: the images, then per scale a noisy bicubic round trip, `1 + |S|` copies.

    Each scaled copy is `images + N(0, noise_std^2)` (fresh noise), bicubic-resized to
    `s*H x s*W`, clamped to [0, 1] and bicubic-resized back to `H x W` (not clamped again,
    as in SGA's code). Everything is differentiable w.r.t. `images`.
    """
    height, width = int(images.shape[-2]), int(images.shape[-1])
    copies = [images]
    for scale in scales:
        noisy = images
        if noise_std > 0:
            noisy = images + noise_std * _draw("randn", images.shape, generator, images.device)
        size = (max(1, int(scale * height)), max(1, int(scale * width)))
        scaled = bicubic_resize(noisy, size).clamp(0.0, 1.0)
        copies.append(bicubic_resize(scaled, (height, width)))
    return copies


def _input_copies(
    adversarial: torch.Tensor, params: PGDParams, generator: torch.Generator
) -> list[torch.Tensor]:
    """The inputs whose losses are summed this step: scale set x SI copies, each maybe DI'd."""
    if params.scales:
        bases = scale_set_copies(adversarial, params.scales, params.noise_std, generator)
    else:
        bases = [adversarial]
    copies = [base / (2**index) for base in bases for index in range(params.si_copies)]
    if params.di_prob > 0:
        diversified = []
        for copy in copies:
            coin = float(torch.rand((1,), generator=generator, device=generator.device))
            if coin < params.di_prob:
                copy = input_diversity(copy, params.di_resize_ratio, generator)
            diversified.append(copy)
        copies = diversified
    return copies


# Where a step takes its gradient: (step, current, clean, previous iterate) -> pixels.
GradientPoint = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def linf_pgd(
    victim: Victim,
    images: torch.Tensor,
    objective: EmbeddingObjective,
    params: PGDParams,
    generator: torch.Generator,
    on_step: Callable[[int, float], None] | None = None,
    gradient_point: GradientPoint | None = None,
) -> torch.Tensor:
    """Sign-gradient ascent on `objective` within the L-inf ball, in [0, 1]; float32.

    `on_step(step, loss)` sees the objective at each step's start, so a caller can check
    that the loss climbs (a flat or falling trace is the sign of masked gradients).
    `objective` receives the image embeddings of every input copy, `[C, B, D]` (copy 0 is
    the current adversarial image itself), and returns one scalar to maximise. Gradients
    are taken only w.r.t. the pixels (the victim's parameters get no `.grad`), even when
    the caller runs under `torch.no_grad()`. Each step: x <- project(x + step * sign(g)).

    `gradient_point(step, current, clean, previous)` moves where each step's gradient is
    taken (DRA's trajectory sampling; `previous` is the iterate before `current`, the start
    itself at step 0); the step is still applied to the current iterate. None: at the
    current iterate.
    """
    device = victim.device
    clean = images.detach().to(device, torch.float32)
    count = clean.shape[0]
    if count == 0:
        return clean.clone()
    adversarial = clean.clone()
    if params.random_start:
        noise = _draw("rand", clean.shape, generator, device) * 2.0 - 1.0
        adversarial = project_linf(clean + params.eps * noise, clean, params.eps)
    kernel = gaussian_kernel(params.ti_kernel).to(device) if params.ti_kernel > 1 else None
    velocity = torch.zeros_like(clean) if params.momentum > 0 else None
    previous = adversarial
    for step in range(params.steps):
        point = adversarial
        if gradient_point is not None:
            point = gradient_point(step, adversarial, clean, previous).detach()
        with torch.enable_grad():
            point.requires_grad_(True)
            copies = _input_copies(point, params, generator)
            embeddings = victim.encode_image(torch.cat(copies)).view(len(copies), count, -1)
            loss = objective(embeddings)
            (gradient,) = torch.autograd.grad(loss, point)
        if on_step is not None:
            on_step(step, float(loss.detach()))
        adversarial = adversarial.detach()
        previous = adversarial
        if kernel is not None:
            gradient = F.conv2d(
                gradient, kernel, padding=params.ti_kernel // 2, groups=gradient.shape[1]
            )
        if velocity is not None:
            l1 = gradient.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
            velocity = params.momentum * velocity + gradient / l1
            gradient = velocity
        adversarial = project_linf(
            adversarial + params.step_size * gradient.sign(), clean, params.eps
        )
    return adversarial


@register_attack
class PGD(ImageAttack):
    """L-inf PGD bound to a source victim: the baselines' KL PGD or SGA's text-guided attack.

    `PGD(victim, eps=2/255, objective="text_cosine", scales=(0.5, 0.75, 1.25, 1.5))` is
    SGA's image step; `PGD(victim)` is the KL baseline. Keyword arguments are `PGDParams`.
    """

    name: ClassVar[str] = "pgd"
    Params: ClassVar[type] = PGDParams

    def __init__(self, victim: Victim, *, seed: int = 0, **params: Any) -> None:
        super().__init__(victim, seed=seed, **params)
        self._params: PGDParams

    def __call__(
        self,
        images: torch.Tensor,
        texts_per_image: Sequence[Sequence[str]],
        generator: torch.Generator | None = None,
        *,
        text_embeddings: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Adversarial images (float32, on the input's device) within eps of `images`.

        `texts_per_image` supplies each image's captions for ``"text_cosine"``;
        `text_embeddings` (one `[n_i, D]` tensor per image) replaces them, e.g. SGA's
        adversarial-caption embeddings. The ``"kl"`` objective ignores both.
        """
        self.check_images(images)
        params = self._params
        generator = self.generator(generator)
        device = self.victim.device
        with torch.no_grad():
            if params.objective == "kl":
                clean_embeddings = self.victim.encode_image(
                    images.detach().to(device, torch.float32)
                ).detach()

                def objective(embeddings: torch.Tensor) -> torch.Tensor:
                    return embedding_kl(clean_embeddings, embeddings).sum()

            else:
                sets = self._caption_sets(images.shape[0], texts_per_image, text_embeddings)
                texts, owners = stack_caption_sets(sets, device)

                def objective(embeddings: torch.Tensor) -> torch.Tensor:
                    return -set_similarity(embeddings, texts, owners).sum()

        adversarial = linf_pgd(self.victim, images, objective, params, generator)
        return adversarial.to(images.device)

    def check_images(self, images: torch.Tensor) -> None:
        """Pixel-space input at the victim's size; outside [0, 1] the budget means nothing."""
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ValueError("PGD expects float images [B,3,H,W] in [0, 1]")
        self.victim.check_images(images)
        if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
            raise ValueError(
                "PGD expects pixels in [0, 1]; got values outside (un-normalise the images "
                "first: normalisation happens inside the victim)"
            )

    def _caption_sets(
        self,
        count: int,
        texts_per_image: Sequence[Sequence[str]] | None,
        text_embeddings: Sequence[torch.Tensor] | None,
    ) -> list[torch.Tensor]:
        """Each image's caption embeddings `[n_i, D]`, given or encoded in one batch."""
        if text_embeddings is not None:
            sets = list(text_embeddings)
            if len(sets) != count:
                raise ValueError(
                    f"text_embeddings has {len(sets)} entries for {count} images; give one "
                    "[n_i, D] tensor per image"
                )
            for index, embeddings in enumerate(sets):
                if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
                    raise ValueError(f"text_embeddings[{index}] must be a [n_i, D] tensor")
                if embeddings.shape[0] == 0:
                    raise ValueError(f"text_embeddings[{index}] is empty; every image needs one")
            return sets
        groups = [list(group) for group in (texts_per_image or ())]
        if len(groups) != count:
            raise ValueError(
                f"objective 'text_cosine' needs the captions of every image: got {len(groups)} "
                f"caption groups for {count} images"
            )
        for index, group in enumerate(groups):
            if not group or any(not isinstance(text, str) or not text.strip() for text in group):
                raise ValueError(
                    f"image {index} has no captions or an empty one; 'text_cosine' needs "
                    "non-empty captions"
                )
        encoded = self.victim.encode_text([text for group in groups for text in group])
        return list(torch.split(encoded.detach(), [len(group) for group in groups]))
