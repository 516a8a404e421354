"""DRA and SA-AET throughput beside SGA on the same sources, each against the bare
image-encoder passes its own image half needs.

Per source and batch (B images, S scales, K look-ahead samples, T steps), the image halves
need these passes of the source's image encoder, everything else being overhead:

- SGA: T forward+backward passes on (1 + S) B, then one forward on B (the final guide);
- DRA and SA-AET: the first step as SGA's; each later step K B forward+backward (the
  look-ahead gradients), K B forward (scoring the candidates) and (1 + S) B
  forward+backward (the multi-scale step); then two forwards on B (final and previous).

All three run with their defaults (SGA's budget; the cost does not depend on eps). We time
the whole attack, its image half (`attack_images`) and its text half, and the bare pass
schedule alone in the same process; the issue's target is an image half within 1.25x of
its bare passes, as SGA's is.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.bench_sga import BATCH, REPEATS, SOURCES, Timed, bare_schedule
from benchmarks.common import TOY_ALBEF, toy_albef_or_stand_in, write_result
from robust.attacks import AttackBatch, build_attack
from robust.data.images import load_images
from robust.data.world import ZOO_WORLD, generate_world
from robust.resources import ZOO_DIR
from robust.victims.registry import load_victim

ATTACKS = ("sga", "dra", "sa_aet")


def image_passes(attack: Any) -> list[tuple[int, bool]]:
    """The (copies, backward) encoder passes the attack's image half needs on one batch."""
    params = attack.image_attack.params()
    scale_set = (1 + len(params.scales), True)
    if attack.name == "sga":
        return [scale_set] * params.steps + [(1, False)]
    samples = attack.trajectory_params.samples
    look_ahead = [(samples, True), (samples, False), scale_set]
    return [scale_set] + look_ahead * (params.steps - 1) + [(1, False), (1, False)]


def timed_attack(
    name: str, victim, images: torch.Tensor, groups, warm_groups
) -> tuple[float, float, float, Any]:
    """(total, image-half, text-half seconds, attack) of one call by a fresh attack, warmed
    up on other captions (BERT-Attack reuses its work while the same captions return)."""
    attack = build_attack(name, victim, {}, mlm=ZOO_DIR / "toy-mlm", seed=0)
    attack.attack_images = Timed(attack.attack_images)
    attack.text_attack = Timed(attack.text_attack)
    attack.craft(AttackBatch(images, warm_groups))
    attack.attack_images.seconds = attack.text_attack.seconds = 0.0
    start = time.perf_counter()
    attack.craft(AttackBatch(images, groups), torch.Generator().manual_seed(1))
    total = time.perf_counter() - start
    return total, attack.attack_images.seconds, attack.text_attack.seconds, attack


def run(batch: int = BATCH, sources: tuple[str, ...] = SOURCES, repeats: int = REPEATS) -> dict:
    """Each attack's speed and ratios per source; `batch`, `sources` and `repeats` shrink it
    for a quick check."""
    torch.manual_seed(0)
    dataset = generate_world("test-1k", count=2 * batch, version=ZOO_WORLD)
    groups = tuple(tuple(g) for g in dataset.captions_of(range(batch)))
    warm_groups = tuple(tuple(g) for g in dataset.captions_of(range(batch, 2 * batch)))
    results: dict[str, Any] = {}
    for source in sources:
        victim = toy_albef_or_stand_in() if source == TOY_ALBEF else load_victim(source)
        images = load_images(dataset.images, range(batch), victim.image_size, victim.resize_mode)
        per_attack = {}
        for name in ATTACKS:
            runs = [timed_attack(name, victim, images, groups, warm_groups) for _ in range(repeats)]
            total, image_seconds, text_seconds, attack = min(runs, key=lambda run: run[0])
            passes = image_passes(attack)
            bare = bare_schedule(victim, images, passes, repeats=repeats)
            per_attack[name] = {
                "seconds": total,
                "images_per_second": batch / total,
                "image_attack_seconds": image_seconds,
                "text_attack_seconds": text_seconds,
                "bare_passes_seconds": bare,
                "bare_image_encodes": sum(copies for copies, _ in passes) * batch,
                "image_attack_over_bare": image_seconds / bare,
                "attack_over_bare": total / bare,
                "text_share": text_seconds / total,
            }
        sga_speed = per_attack["sga"]["images_per_second"]
        for name in ATTACKS:
            per_attack[name]["speed_vs_sga"] = per_attack[name]["images_per_second"] / sga_speed
        results[source] = {
            "victim": victim.name,
            "batch_images": batch,
            "captions": sum(len(g) for g in groups),
            "repeats_best_of": repeats,
            "attacks": per_attack,
        }
    return {"threads": torch.get_num_threads(), "sources": results}


def main() -> None:
    print(write_result("dra", run()))


if __name__ == "__main__":
    main()
