"""The shipped toys cannot hide behind masked gradients.

A toy that looked robust because its gradients were useless would make every attack
comparison on the world meaningless. Two checks per shipped retrieval toy, white-box, on
the first images of the zoo world's test-1k: PGD's loss climbs step by step, and a budget of 32/255
breaks (nearly) every image's text retrieval.
"""

from __future__ import annotations

import pytest
import torch

import robust
from robust.attacks.pgd import PGDParams, caption_set_similarity, linf_pgd
from robust.data.images import load_images
from robust.victims.registry import TOY_RETRIEVAL_VICTIMS

IMAGES = 16
LARGE_EPS = 32 / 255


def _text_retrieval_correct(victim, images, captions, owners) -> torch.Tensor:
    """Per image: is its best-scoring caption (ITC) one of its own?"""
    with torch.no_grad():
        similarity = victim.encode_image(images) @ victim.encode_text(captions).T
    return owners[similarity.argmax(dim=1)] == torch.arange(images.shape[0])


@pytest.fixture(scope="module")
def world_batch(zoo_world_small):
    world = zoo_world_small
    captions = [world.captions[t] for i in range(IMAGES) for t in world.image_captions[i]]
    owners = torch.tensor([i for i in range(IMAGES) for _ in world.image_captions[i]])
    return world, captions, owners


@pytest.mark.parametrize("name", TOY_RETRIEVAL_VICTIMS)
def test_white_box_pgd_loss_climbs_and_32_over_255_breaks_the_toy(name, world_batch):
    dataset, captions, owners = world_batch
    victim = robust.load_victim(name)
    images = load_images(dataset.images, range(IMAGES), victim.image_size)
    with torch.no_grad():
        caption_sets = list(torch.split(victim.encode_text(captions), 5))

    def objective(embeddings: torch.Tensor) -> torch.Tensor:
        return -caption_set_similarity(embeddings[0], caption_sets).sum()

    trace: list[float] = []
    params = PGDParams(
        eps=LARGE_EPS, step_size=2 / 255, steps=30, random_start=False, objective="text_cosine"
    )
    adversarial = linf_pgd(
        victim, images, objective, params, torch.Generator().manual_seed(0),
        on_step=lambda _, loss: trace.append(loss),
    )  # fmt: skip

    rises = sum(later > earlier for earlier, later in zip(trace, trace[1:], strict=False))
    assert rises >= 0.8 * (len(trace) - 1), f"{name}: PGD loss does not climb step by step: {trace}"
    assert trace[-1] > trace[0] + 0.1 * abs(trace[0]), f"{name}: PGD loss barely moved: {trace}"

    clean_correct = _text_retrieval_correct(victim, images, captions, owners)
    adversarial_correct = _text_retrieval_correct(victim, adversarial, captions, owners)
    assert int(clean_correct.sum()) >= IMAGES // 2
    broken = (clean_correct & ~adversarial_correct).sum() / clean_correct.sum()
    assert float(broken) >= 0.9, f"{name}: 32/255 broke only {float(broken):.0%} of its queries"
