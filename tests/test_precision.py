"""Precision: fp32 is the default and exact; bf16 autocast stays close to it on CPU too."""

from __future__ import annotations

import pytest
import torch

from robust.attacks import build_attack
from robust.data.images import load_images
from robust.errors import RobustError
from robust.harness.cells import craft_request
from robust.harness.executors import CraftCell
from robust.harness.spec import parse_spec
from robust.precision import check_precision, precision_scope, prepare_model
from robust.victims.registry import TOY_RETRIEVAL_VICTIMS, load_victim

COUNT = 16


def spec_data(**changes):
    data = {
        "name": "precision",
        "dataset": "world:test-1k",
        "sources": ["toy-clip-vit"],
        "targets": ["toy-clip-vit"],
        "attacks": [{"name": "pgd"}],
    }
    return {**data, **changes}


@pytest.fixture(scope="module", params=TOY_RETRIEVAL_VICTIMS)
def victim_and_batch(request, world_small):
    victim = load_victim(request.param)
    images = load_images(world_small.images, range(COUNT), victim.image_size, victim.resize_mode)
    texts = [group[0] for group in world_small.captions_of(range(COUNT))]
    return victim, images, texts


def embeddings(victim, images, texts):
    with torch.no_grad():
        return victim.encode_image(images).float(), victim.encode_text(texts).float()


def test_fp32_scope_is_exactly_the_default(victim_and_batch):
    victim, images, texts = victim_and_batch
    reference = embeddings(victim, images, texts)
    with precision_scope("fp32", victim.device):
        scoped = embeddings(victim, images, texts)
    assert all(torch.equal(a, b) for a, b in zip(reference, scoped, strict=True))
    assert prepare_model(victim, "fp32") is victim  # layout untouched on CPU


def test_bf16_embeddings_stay_close_to_fp32(victim_and_batch):
    victim, images, texts = victim_and_batch
    reference = embeddings(victim, images, texts)
    with precision_scope("bf16", victim.device):
        low = embeddings(victim, images, texts)
    for fp32, bf16 in zip(reference, low, strict=True):
        assert not torch.equal(fp32, bf16)  # autocast really ran
        cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=-1)
        assert cosine.min() > 0.99
    # the scope is left as found: fp32 again afterwards
    assert torch.equal(embeddings(victim, images, texts)[0], reference[0])


def test_bf16_pgd_respects_the_budget_and_lowers_similarity(victim_and_batch):
    victim, images, texts = victim_and_batch
    eps = 2 / 255
    attack = build_attack("pgd", victim, {"eps": eps, "steps": 5, "step_size": 0.5 / 255})
    with precision_scope("bf16", victim.device):
        adversarial = attack(images, [[t] for t in texts], torch.Generator().manual_seed(0))
    assert adversarial.dtype == torch.float32
    assert (adversarial - images).abs().max() <= eps + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    clean_image, _ = embeddings(victim, images, texts)
    adv_image, _ = embeddings(victim, adversarial, texts)
    assert (clean_image * adv_image).sum(-1).mean() < 0.999


def test_precision_names_spec_field_and_fingerprint():
    assert check_precision("tf32") == "tf32"
    with pytest.raises(RobustError, match="unknown precision 'fp16'; choose one of fp32, bf16"):
        check_precision("fp16")
    reference = parse_spec(spec_data())
    assert reference.precision == "fp32"
    # fp32 is what every run computed before the field existed: same fingerprint, same cache
    assert "precision" not in reference.canonical()
    assert parse_spec(spec_data(precision="fp32")).fingerprint() == reference.fingerprint()
    low = parse_spec(spec_data(precision="bf16"))
    assert low.fingerprint() != reference.fingerprint()
    cell = CraftCell("pgd", "toy-clip-vit", 0)
    assert "precision" not in craft_request(reference, cell)
    assert craft_request(low, cell)["precision"] == "bf16"


def test_tf32_is_set_inside_the_scope_and_restored():
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    cuda_built = torch.backends.cuda.is_built()  # a CPU-only build has nothing to switch
    with precision_scope("tf32", "cpu"):
        assert matmul.fp32_precision == ("tf32" if cuda_built else before)
    with precision_scope("fp32", "cpu"):
        assert matmul.fp32_precision == ("ieee" if cuda_built else before)
    assert matmul.fp32_precision == before
