"""Score the clean-independent noise oracle beside an AnyAttack evaluation's floor and ceiling.

Uses the same seeded clean/target pairing and the same target-caption gallery as
`robust.harness.anyattack_eval`, so its TR R@1 reads directly against a decoder's
`adv_tr_r1` there. The oracle is optimised for the first `optimised` pairs only (it costs
`steps x cleans_per_step` encoder passes per target); their image queries are ranked
against the captions of all `pairs` targets. Rows go into the run's store with
`attack="anyattack-oracle"` and `seed` = the pairing seed: `{oracle,floor,ceiling}_tr_r1`
over the optimised pairs, and the oracle's step record `oracle_tr_r1_at_step_{n}` for each
count of `step_checkpoints(steps)` (the last one is `oracle_tr_r1`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robust.attacks.anyattack import DEFAULT_EPS
from robust.attacks.anyattack_oracle import step_checkpoints, target_noise_oracle
from robust.data.dataset import CaptionDataset
from robust.data.images import load_images
from robust.errors import RobustError
from robust.eval.targeted import TargetPairs, pair_images, target_captions
from robust.harness.anyattack_eval import PairImages, victim_galleries
from robust.harness.evaluate import dataset_key
from robust.harness.results import ANYATTACK_ORACLE as ORACLE_ATTACK
from robust.harness.results import ORACLE_STEP_METRIC as STEP_METRIC
from robust.harness.store import MetricRow, ResultStore
from robust.progress import Progress
from robust.victims.registry import load_victim


@dataclass(frozen=True)
class OracleResult:
    """Targeted TR R@1 (fractions) of the oracle's images, the cleans and the targets, the
    oracle's TR R@1 after each checkpoint of its steps, and the seeded pairs it used."""

    run_id: int
    optimised: int
    pairs: int
    tr_r1: dict[str, float]
    by_step: dict[int, float]
    target_pairs: TargetPairs


def top1_owned(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    owner: np.ndarray,
    pair_of_query: np.ndarray,
) -> np.ndarray:
    """Whether each image query's best caption belongs to its pair; ties count against it."""
    scores = image_features @ text_features.t()
    own = torch.from_numpy(owner[None, :] == pair_of_query[:, None])
    best_own = scores.masked_fill(~own, -torch.inf).amax(dim=1)
    best_other = scores.masked_fill(own, -torch.inf).amax(dim=1)
    return (best_own > best_other).numpy()


def evaluate_noise_oracle(
    encoder: str,
    dataset: CaptionDataset,
    clean_pool: CaptionDataset,
    run_dir: Path | str,
    *,
    pairs: int = 500,
    optimised: int = 100,
    steps: int = 200,
    cleans_per_step: int = 8,
    eps: float = DEFAULT_EPS,
    seed: int = 0,
    device: str = "cpu",
    progress: Progress | None = None,
) -> OracleResult:
    """Optimise the oracle for `optimised` of `pairs` seeded pairs and record its TR R@1.

    `clean_pool` supplies the cleans the noise is optimised over; pass a split other than
    `dataset`'s (e.g. world:val) so the pairs' own cleans stay unseen.
    """
    if not 1 <= optimised <= pairs:
        raise RobustError(f"--optimise must be between 1 and --pairs ({pairs}), got {optimised}")
    try:
        chosen = pair_images(dataset, pairs, seed)
    except ValueError as exc:
        raise RobustError(f"--pairs: {exc}") from None
    victim = load_victim(encoder, device=device)
    if "itc" not in victim.capabilities:
        raise RobustError(
            f"{encoder} has no image-text embedding (itc) to score targeted retrieval with; "
            "use a retrieval victim such as toy-clip-vit"
        )
    size, mode = victim.image_size, victim.resize_mode
    subset = np.arange(optimised)
    clean = load_images(dataset.images, chosen.clean[subset], size, mode)
    target = load_images(dataset.images, chosen.target[subset], size, mode)
    pool = load_images(clean_pool.images, range(clean_pool.num_images), size, mode)
    generator = torch.Generator().manual_seed(seed)
    checkpoints = step_checkpoints(steps)
    noises = target_noise_oracle(
        victim,
        target,
        pool,
        eps=eps,
        steps=steps,
        cleans_per_step=cleans_per_step,
        generator=generator,
        checkpoints=checkpoints,
        progress=progress,
    )
    texts, owner = target_captions(dataset, chosen)
    with torch.no_grad():
        text_features = torch.cat(
            [victim.encode_text(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        )

        def top1(pixels: torch.Tensor) -> float:
            features = victim.encode_image(pixels.to(victim.device))
            return float(top1_owned(features, text_features, owner, subset).mean())

        def galleries(noise: torch.Tensor) -> dict[str, torch.Tensor]:
            images = PairImages(clean, target, noise, (clean + noise).clamp(0.0, 1.0))
            return victim_galleries(images, victim)

        final = galleries(noises[steps])
        tr_r1 = {("oracle" if g == "adv" else g): top1(pixels) for g, pixels in final.items()}
        by_step = {count: top1(galleries(noises[count])["adv"]) for count in checkpoints}
    spec = {
        "command": "anyattack bound",
        "encoder": encoder,
        "dataset": dataset.name,
        "clean_pool": clean_pool.name,
        "pairs": pairs,
        "optimised": optimised,
        "steps": steps,
        "step_checkpoints": list(checkpoints),
        "cleans_per_step": cleans_per_step,
        "eps": eps,
    }
    dataset_name, split = dataset_key(dataset)
    keys = {"victim": encoder, "dataset": dataset_name, "split": split, "seed": seed}
    metrics = {f"{g}_tr_r1": v for g, v in tr_r1.items()}
    metrics |= {STEP_METRIC.format(count): v for count, v in by_step.items()}
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(spec, seeds={"pairs": seed, "oracle": seed})
        store.write_metrics(
            run_id,
            [
                MetricRow(
                    metric=metric,
                    value=value,
                    attack=ORACLE_ATTACK,
                    source=encoder,
                    target=encoder,
                    **keys,
                )
                for metric, value in metrics.items()
            ],
        )
    return OracleResult(run_id, optimised, pairs, tr_r1, by_step, chosen)
