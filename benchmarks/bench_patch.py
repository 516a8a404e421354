"""AdvCLIP patch training throughput, against the bare encoder passes a step needs.

Clean image and caption embeddings are computed once (the feature bank), so a training
step needs one forward+backward pass of the source's image encoder over the patched batch;
the generator, the discriminator (one step on clean + patched images, then a pass for the
generator's GAN term), the k-NN topology terms and image loading are overhead. The per-step
time is the difference between two fits of different lengths divided by the extra steps,
so the one-off feature bank is left out.
"""

from __future__ import annotations

import time

import torch

from benchmarks.bench_sga import bare_passes
from benchmarks.common import write_result
from robust.attacks.advclip import AdvCLIP
from robust.data.images import load_images
from robust.data.world import ZOO_WORLD, generate_world
from robust.victims.registry import TOY_RETRIEVAL_VICTIMS, load_victim

BATCH = 32
FIT_IMAGES = 256
SHORT, LONG = 5, 25


def fit_seconds(victim, data, steps: int) -> float:
    attack = AdvCLIP(victim, seed=0, steps=steps, batch_size=BATCH, bank_size=FIT_IMAGES)
    start = time.perf_counter()
    attack.fit(data)
    return time.perf_counter() - start


def run() -> dict:
    torch.manual_seed(0)
    data = generate_world("train", count=FIT_IMAGES, version=ZOO_WORLD)
    results = {}
    for source in TOY_RETRIEVAL_VICTIMS:
        victim = load_victim(source)
        fit_seconds(victim, data, 2)  # warm-up
        step = (fit_seconds(victim, data, LONG) - fit_seconds(victim, data, SHORT)) / (LONG - SHORT)
        images = load_images(data.images, range(BATCH), victim.image_size, victim.resize_mode)
        bare = bare_passes(victim, images, LONG, 1) / LONG
        results[source] = {
            "batch_images": BATCH,
            "step_seconds": step,
            "images_per_second": BATCH / step,
            "bare_forward_backward_seconds": bare,
            "step_over_bare": step / bare,
        }
    return {"threads": torch.get_num_threads(), "steps": [SHORT, LONG], "sources": results}


def main() -> None:
    print(write_result("patch", run()))


if __name__ == "__main__":
    main()
