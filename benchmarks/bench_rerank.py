"""ITM re-ranked retrieval on the world with the shipped toy-albef: overhead and memory.

Until toy-albef ships, a seeded random ALBEF with toy-albef's recipe architecture and the
zoo's vocab stands in: speed and memory do not depend on the weights.

Time: the whole re-ranked evaluation of test-1k at k_test=128 against the bare ITM
forwards it needs ((images + captions) x k_test fusion passes, timed alone in the same
process on the same cached inputs); target <= 1.3x. Memory: peak resident growth for
test-1k vs test-5k, which must grow about linearly (5x gallery -> about 5x memory).
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import (
    peak_memory_in_fresh_process,
    toy_albef_or_stand_in,
    write_result,
)
from robust.data.world import ZOO_WORLD, generate_world
from robust.eval.rerank import ItmReranker
from robust.eval.retrieval import encode_dataset, rank_from_features

K_TEST = 128
MEMORY_K_TEST = 16
PAIR_BATCH = 256


def bare_itm_seconds(reranker: ItmReranker, pairs: int) -> float:
    """`pairs` fusion passes on cached inputs in pair batches, with no ranking around them."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, reranker.image_inputs.shape[0], (pairs,), generator=generator)
    texts = torch.randint(0, reranker.text_inputs.shape[0], (pairs,), generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        for offset in range(0, pairs, PAIR_BATCH):
            i = images[offset : offset + PAIR_BATCH]
            t = texts[offset : offset + PAIR_BATCH]
            reranker.scorer.match_logits(
                reranker.image_inputs[i], reranker.text_inputs[t], reranker.text_mask[t]
            )
    return time.perf_counter() - start


def reranked_evaluation(victim, dataset, k_test: int):
    image_features, text_features = encode_dataset(victim, dataset)
    reranker = ItmReranker.build(
        victim, dataset, image_features, text_features, pair_batch_size=PAIR_BATCH
    )
    result = rank_from_features(
        image_features, text_features, dataset.caption_image, k_test=k_test, reranker=reranker
    )
    return result, reranker


def reranked_call(split: str, k_test: str):
    """Set-up for the memory probe: the whole re-ranked evaluation of `split` as one call."""
    victim = toy_albef_or_stand_in()
    dataset = generate_world(split, version=ZOO_WORLD)
    return lambda: reranked_evaluation(victim, dataset, int(k_test))


def run() -> dict:
    victim = toy_albef_or_stand_in()
    test_1k = generate_world("test-1k", version=ZOO_WORLD)
    start = time.perf_counter()
    result, reranker = reranked_evaluation(victim, test_1k, K_TEST)
    total = time.perf_counter() - start
    pairs = (test_1k.num_images + test_1k.num_captions) * K_TEST
    bare = bare_itm_seconds(reranker, pairs)

    memory = {}
    for split in ("test-1k", "test-5k"):
        dataset = test_1k if split == "test-1k" else generate_world(split, version=ZOO_WORLD)
        memory[split] = {
            "images": dataset.num_images,
            "captions": dataset.num_captions,
            "peak_memory_mb": peak_memory_in_fresh_process(
                "benchmarks.bench_rerank:reranked_call", split, str(MEMORY_K_TEST)
            ),
        }
    return {
        "victim": victim.name,
        "k_test": K_TEST,
        "pair_batch_size": PAIR_BATCH,
        "threads": torch.get_num_threads(),
        "reranked_seconds": total,
        "itm_pairs": pairs,
        "bare_itm_seconds": bare,
        "overhead_ratio": total / bare,
        "test_1k_metrics": result.metrics(),
        "memory_k_test": MEMORY_K_TEST,
        "memory": memory,
        "memory_ratio_5k_over_1k": memory["test-5k"]["peak_memory_mb"]
        / max(memory["test-1k"]["peak_memory_mb"], 1e-9),
    }


def main() -> None:
    print(write_result("rerank", run()))


if __name__ == "__main__":
    main()
