"""SGA throughput on the toy zoo, against the bare forward/backward passes it needs.

SGA's image attack needs `steps x (1 + |scales|)` forward+backward passes of the source's
image encoder per image; everything else (noise, resizing, projection, the text attack)
is overhead. We time the full attack, its image and text halves separately, and the bare
passes alone in the same process, then report the ratios the issue sets targets for
(image part <= 1.25x the bare passes at batch >= 16; text attack <= 25% of SGA's time).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.common import TOY_ALBEF, best_time, toy_albef_or_stand_in, write_result
from robust.attacks import AttackBatch, build_attack
from robust.data.images import load_images
from robust.data.world import ZOO_WORLD, generate_world
from robust.resources import ZOO_DIR
from robust.victims.registry import TOY_RETRIEVAL_VICTIMS, load_victim

BATCH = 16
REPEATS = 3  # best of: the machine may be shared
# The shipped toy retrieval victims, plus toy-albef (its architecture with random weights
# until it ships: throughput does not depend on the weights).
SOURCES = tuple(dict.fromkeys((*TOY_RETRIEVAL_VICTIMS, TOY_ALBEF)))


class Timed:
    """Wraps a callable and accumulates the wall time spent in it."""

    def __init__(self, function) -> None:
        self.function = function
        self.seconds = 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def bare_schedule(
    victim, images: torch.Tensor, passes: Sequence[tuple[int, bool]], repeats: int = REPEATS
) -> float:
    """Seconds for a sequence of image-encoder passes over a batch: each `(copies, backward)`
    encodes `copies` stacked copies of it, forward+backward or forward only."""
    stacks = {copies: images.repeat(copies, 1, 1, 1) for copies, _ in passes}
    with torch.no_grad():
        width = victim.encode_image(images[:1]).shape[-1]
    directions = {
        copies: torch.randn(stack.shape[0], width, device=images.device)
        for copies, stack in stacks.items()
    }

    def passes_once() -> None:
        for copies, backward in passes:
            if not backward:
                with torch.no_grad():
                    victim.encode_image(stacks[copies])
                continue
            pixels = stacks[copies].clone().requires_grad_(True)
            embeddings = victim.encode_image(pixels)
            torch.autograd.grad((embeddings * directions[copies]).sum(), pixels)

    return best_time(passes_once, repeats=repeats)


def bare_passes(victim, images: torch.Tensor, passes: int, copies: int) -> float:
    """Seconds for `passes` forward+backward passes over `copies` stacked copies of a batch."""
    return bare_schedule(victim, images, [(copies, True)] * passes)


def timed_sga(victim, images: torch.Tensor, groups, warm_groups) -> tuple[float, float, float, Any]:
    """(total, image-half, text-half seconds, attack) of one SGA call by a fresh attack.

    A fresh attack per call, warmed up on other captions: BERT-Attack reuses its work while
    the same captions return, which a repeated call on one batch would otherwise measure.
    """
    attack = build_attack("sga", victim, {}, mlm=ZOO_DIR / "toy-mlm", seed=0)
    attack.image_attack = Timed(attack.image_attack)
    attack.text_attack = Timed(attack.text_attack)
    attack.craft(AttackBatch(images, warm_groups))  # warm-up (allocations, MLM load)
    attack.image_attack.seconds = attack.text_attack.seconds = 0.0
    start = time.perf_counter()
    attack.craft(AttackBatch(images, groups), torch.Generator().manual_seed(1))
    total = time.perf_counter() - start
    return total, attack.image_attack.seconds, attack.text_attack.seconds, attack


def run() -> dict:
    torch.manual_seed(0)
    dataset = generate_world("test-1k", count=2 * BATCH, version=ZOO_WORLD)
    groups = tuple(tuple(g) for g in dataset.captions_of(range(BATCH)))
    warm_groups = tuple(tuple(g) for g in dataset.captions_of(range(BATCH, 2 * BATCH)))
    results = {}
    for source in SOURCES:
        victim = toy_albef_or_stand_in() if source == TOY_ALBEF else load_victim(source)
        images = load_images(dataset.images, range(BATCH), victim.image_size, victim.resize_mode)
        runs = [timed_sga(victim, images, groups, warm_groups) for _ in range(REPEATS)]
        total, image_seconds, text_seconds, attack = min(runs, key=lambda run: run[0])
        params = attack.image_attack.function.params()
        copies = 1 + len(params.scales)
        bare = bare_passes(victim, images, params.steps, copies)
        results[source] = {
            "victim": victim.name,
            "batch_images": BATCH,
            "captions": sum(len(g) for g in groups),
            "repeats_best_of": REPEATS,
            "sga_seconds": total,
            "images_per_second": BATCH / total,
            "image_attack_seconds": image_seconds,
            "text_attack_seconds": text_seconds,
            "bare_passes_seconds": bare,
            "bare_passes": params.steps,
            "copies_per_pass": copies,
            "image_attack_over_bare": image_seconds / bare,
            "sga_over_bare": total / bare,
            "text_share_of_sga": text_seconds / total,
        }
    return {"threads": torch.get_num_threads(), "sources": results}


def main() -> None:
    print(write_result("sga", run()))


if __name__ == "__main__":
    main()
