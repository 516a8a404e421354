"""Clean retrieval on the world: encode throughput and how ranking memory grows with the gallery.

The DESIGN target is memory linear in gallery size: ranking test-5k (5x the images and
captions of test-1k) should cost about 5x the memory of test-1k, not 25x.
"""

from __future__ import annotations

import torch

from benchmarks.common import best_time, peak_memory_in_fresh_process, write_result
from robust.data.world import ZOO_WORLD, generate_world
from robust.eval.retrieval import encode_dataset, rank_from_features
from robust.victims.registry import load_victim


def ranking_call(split: str):
    """Set-up for the memory probe: encode `split`, return the ranking call to measure."""
    victim = load_victim("toy-clip-vit")
    dataset = generate_world(split, version=ZOO_WORLD)
    image_features, text_features = encode_dataset(victim, dataset)
    return lambda: rank_from_features(image_features, text_features, dataset.caption_image)


def run() -> dict:
    torch.manual_seed(0)
    victim = load_victim("toy-clip-vit")
    test_1k = generate_world("test-1k", version=ZOO_WORLD)
    encode_seconds = best_time(lambda: encode_dataset(victim, test_1k), repeats=2)

    ranking = {}
    for split in ("test-1k", "test-5k"):
        dataset = test_1k if split == "test-1k" else generate_world(split, version=ZOO_WORLD)
        image_features, text_features = encode_dataset(victim, dataset)
        seconds = best_time(
            lambda d=dataset, i=image_features, t=text_features: rank_from_features(
                i, t, d.caption_image
            ),
            repeats=2,
        )
        ranking[split] = {
            "images": dataset.num_images,
            "captions": dataset.num_captions,
            "rank_seconds": seconds,
            "rank_peak_memory_mb": peak_memory_in_fresh_process(
                "benchmarks.bench_retrieval:ranking_call", split
            ),
            "full_similarity_matrix_mb": dataset.num_images * dataset.num_captions * 4 / 2**20,
        }
    return {
        "victim": "toy-clip-vit",
        "encode_test_1k_seconds": encode_seconds,
        "encode_images_per_second": test_1k.num_images / encode_seconds,
        "ranking": ranking,
        "memory_ratio_5k_over_1k": ranking["test-5k"]["rank_peak_memory_mb"]
        / max(ranking["test-1k"]["rank_peak_memory_mb"], 1e-9),
    }


def main() -> None:
    print(write_result("retrieval", run()))


if __name__ == "__main__":
    main()
