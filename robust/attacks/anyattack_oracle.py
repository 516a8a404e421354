"""The best noise a target can get when the noise may not look at the clean image.

An AnyAttack decoder maps a target's embedding to one noise that is added to *any* clean
image, so on a given target no decoder can beat the best single clean-independent noise
for it. `target_noise_oracle` searches for that noise directly: white-box sign-gradient
ascent on the cosine between the noised images' embeddings and the target's, averaged
over clean images drawn afresh each step from a pool (expectation over cleans), inside the
same L-inf ball. Its targeted R@1 on unseen cleans is the reference a decoder's own score
is read against: a decoder far below it is undertrained; an oracle below a quality bar
means the victim and budget allow no better, whatever the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from robust.attacks.base import AttackConfigError
from robust.progress import Progress, ensure_progress
from robust.victims.base import Victim


def step_checkpoints(steps: int) -> tuple[int, ...]:
    """The step counts an oracle run is scored at: an eighth, a quarter, half and all of
    `steps` (those of at least one step), so its growth shows per doubling."""
    return tuple(sorted({count for count in (steps // 8, steps // 4, steps // 2, steps) if count}))


def target_noise_oracle(
    encoder: Victim,
    targets: torch.Tensor,
    clean_pool: torch.Tensor,
    *,
    eps: float,
    steps: int,
    cleans_per_step: int,
    generator: torch.Generator,
    checkpoints: Sequence[int] = (),
    step_size: float | None = None,
    batch_size: int = 25,
    progress: Progress | None = None,
) -> dict[int, torch.Tensor]:
    """One noise `[T,3,H,W]` in [-eps, eps] per target image, independent of any clean image,
    after all `steps` and after each of `checkpoints` steps of the same run, by step count.

    `targets` are at the encoder's size; `clean_pool` `[P,3,H,W]` at the same size holds the
    cleans drawn (with replacement, from `generator`) each step. `step_size` defaults to
    eps / 10. Targets are optimised `batch_size` at a time (memory grows with
    `batch_size x cleans_per_step` images). Checkpoints draw nothing, so the final noise is
    the one a run without them gives.
    """
    if not 0 < eps <= 1:
        raise AttackConfigError(f"eps must be in (0, 1], got {eps}")
    for name, value in (
        ("steps", steps),
        ("cleans_per_step", cleans_per_step),
        ("batch_size", batch_size),
    ):
        if value < 1:
            raise AttackConfigError(f"{name} must be a positive integer, got {value}")
    if clean_pool.shape[1:] != targets.shape[1:]:
        raise AttackConfigError(
            f"clean pool images are {tuple(clean_pool.shape[1:])} but targets are "
            f"{tuple(targets.shape[1:])}; load both at the encoder's size"
        )
    if any(not 1 <= count <= steps for count in checkpoints):
        raise AttackConfigError(
            f"checkpoints must lie between 1 and steps ({steps}), got {sorted(checkpoints)}"
        )
    recorded = {*checkpoints, steps}
    step_length = eps / 10 if step_size is None else step_size
    device = encoder.device
    pool = clean_pool.to(device)
    noises: dict[int, list[torch.Tensor]] = {count: [] for count in sorted(recorded)}
    progress = ensure_progress(progress)
    with progress.task("noise oracle: targets", targets.shape[0]) as task:
        for start in range(0, targets.shape[0], batch_size):
            chunk = targets[start : start + batch_size].to(device)
            with torch.no_grad():
                goal = encoder.encode_image(chunk)
            noise = torch.zeros_like(chunk)
            count = chunk.shape[0]
            for step in range(1, steps + 1):
                picks = torch.randint(
                    0, pool.shape[0], (count * cleans_per_step,), generator=generator
                )
                cleans = pool[picks.to(device)].view(count, cleans_per_step, *chunk.shape[1:])
                noise.requires_grad_(True)
                noised = (cleans + noise[:, None]).clamp(0.0, 1.0).flatten(0, 1)
                embeddings = encoder.encode_image(noised).view(count, cleans_per_step, -1)
                (gradient,) = torch.autograd.grad((embeddings * goal[:, None]).sum(), noise)
                noise = (noise.detach() + step_length * gradient.sign()).clamp(-eps, eps)
                if step in noises:
                    noises[step].append(noise.detach().cpu())
            task.advance(count)
    return {count: torch.cat(parts) for count, parts in noises.items()}
