"""PGD: budget and [0, 1] kept exactly, objectives improve, determinism, config and errors."""

from __future__ import annotations

import pytest
import torch

import robust
from robust.attacks.base import AttackConfigError
from robust.attacks.pgd import (
    PGD,
    PGDParams,
    bicubic_resize,
    caption_set_similarity,
    embedding_kl,
    scale_set_copies,
)
from robust.data.images import load_images

BATCH = 4
EPS = 4 / 255


@pytest.fixture(scope="module")
def victim(tiny_open_clip_dir):
    return robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")


@pytest.fixture(scope="module")
def batch(world_small) -> tuple[torch.Tensor, list[list[str]]]:
    images = load_images(world_small.images, range(BATCH), 32, "squash")
    captions = [
        [world_small.captions[t] for t in world_small.image_captions[i]] for i in range(BATCH)
    ]
    return images, captions


def _caption_embeddings(victim, captions: list[list[str]]) -> list[torch.Tensor]:
    with torch.no_grad():
        encoded = victim.encode_text([text for group in captions for text in group])
    return list(torch.split(encoded, [len(group) for group in captions]))


def _mean_caption_similarity(victim, images, captions) -> float:
    with torch.no_grad():
        embeddings = victim.encode_image(images)
    sets = _caption_embeddings(victim, captions)
    counts = torch.tensor([len(group) for group in captions], dtype=torch.float32)
    return float((caption_set_similarity(embeddings, sets) / counts).mean())


def _mean_kl(victim, clean, adversarial) -> float:
    with torch.no_grad():
        return float(
            embedding_kl(victim.encode_image(clean), victim.encode_image(adversarial)).mean()
        )


OPTIONS = {
    "plain": {},
    "momentum": {"momentum": 1.0},
    "di": {"di_prob": 1.0},
    "ti": {"ti_kernel": 3},
    "si": {"si_copies": 2},
    "scales": {"scales": (0.5, 1.5)},
    "all": {"momentum": 1.0, "di_prob": 0.5, "ti_kernel": 5, "si_copies": 2, "scales": (0.75,)},
}


@pytest.mark.parametrize("objective", ["kl", "text_cosine"])
@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_option_keeps_the_budget_and_pixel_range_exactly(victim, batch, objective, option):
    images, captions = batch
    attack = PGD(victim, eps=EPS, step_size=EPS, steps=2, objective=objective, **OPTIONS[option])
    adversarial = attack(images, captions)
    assert adversarial.shape == images.shape and adversarial.dtype == torch.float32
    assert float((adversarial - images).abs().max()) <= EPS + 1e-7
    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
    assert not torch.equal(adversarial, images)


def test_kl_objective_is_positive_and_grows_with_steps(victim, batch):
    images, captions = batch
    short = PGD(victim, eps=EPS, step_size=0.5 / 255, steps=1)(images, captions)
    long = PGD(victim, eps=EPS, step_size=0.5 / 255, steps=10)(images, captions)
    kl_short, kl_long = _mean_kl(victim, images, short), _mean_kl(victim, images, long)
    assert kl_short > 0
    assert kl_long > 2 * kl_short


def test_kl_gradient_at_the_clean_image_is_round_off_that_sign_turns_into_full_steps(victim, batch):
    images, captions = batch
    pixels = images.clone().requires_grad_(True)
    with torch.no_grad():
        clean = victim.encode_image(images)
    (gradient,) = torch.autograd.grad(
        embedding_kl(clean, victim.encode_image(pixels)).sum(), pixels
    )
    assert 0 < gradient.abs().max() < 1e-6
    step = 1 / 255
    moved = PGD(victim, eps=EPS, step_size=step, steps=1, random_start=False)(images, captions)
    assert (moved - images).abs().amax(dim=(1, 2, 3)).min() >= step - 1e-6


def test_text_cosine_pushes_images_away_from_their_captions(victim, batch):
    images, captions = batch
    adversarial = PGD(victim, eps=EPS, objective="text_cosine")(images, captions)
    clean_similarity = _mean_caption_similarity(victim, images, captions)
    adversarial_similarity = _mean_caption_similarity(victim, adversarial, captions)
    assert adversarial_similarity < clean_similarity - 0.01


def test_precomputed_text_embeddings_replace_captions(victim, batch):
    images, captions = batch
    attack = PGD(victim, eps=EPS, objective="text_cosine", steps=3)
    sets = _caption_embeddings(victim, captions)
    from_texts = attack(images, captions)
    assert torch.equal(attack(images, captions, text_embeddings=sets), from_texts)
    # Guided by the opposite directions, the attack moves elsewhere.
    flipped = attack(images, captions, text_embeddings=[-s for s in sets])
    assert not torch.equal(flipped, from_texts)
    with pytest.raises(ValueError, match="text_embeddings"):
        attack(images, captions, text_embeddings=sets[:-1])


def test_same_seed_is_bit_identical_and_another_seed_differs(victim, batch):
    images, captions = batch
    options = {"eps": EPS, "steps": 3, "di_prob": 0.5, "scales": (0.5,)}
    first = PGD(victim, seed=7, **options)(images, captions)
    again = PGD(victim, seed=7, **options)(images, captions)
    other = PGD(victim, seed=8, **options)(images, captions)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(PGD(victim, seed=0, **options)(images, captions, generator), first)


def test_larger_budget_moves_embeddings_further(victim, batch):
    images, captions = batch

    def mean_shift(eps: float) -> float:
        adversarial = PGD(victim, eps=eps, step_size=eps / 4, steps=8)(images, captions)
        with torch.no_grad():
            clean, moved = victim.encode_image(images), victim.encode_image(adversarial)
        return float((1 - (clean * moved).sum(-1)).mean())

    assert mean_shift(8 / 255) > mean_shift(1 / 255)


def test_works_under_no_grad_and_leaves_no_parameter_grads(victim, batch):
    images, captions = batch
    with torch.no_grad():
        adversarial = PGD(victim, eps=EPS, steps=2, momentum=1.0)(images, captions)
    assert not torch.equal(adversarial, images)
    assert all(parameter.grad is None for parameter in victim.parameters())
    assert not adversarial.requires_grad


def test_config_holds_every_param(victim):
    attack = PGD(victim, seed=3, eps=EPS, scales=[0.5, 0.75], objective="text_cosine")
    config = attack.config()
    for field_name in PGDParams.__dataclass_fields__:
        assert field_name in config
    assert config["attack"] == "pgd" and config["kind"] == "image" and config["seed"] == 3
    assert config["eps"] == EPS and config["scales"] == (0.5, 0.75)
    assert config["source"] == victim.name


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"eps": 0}, "eps"),
        ({"eps": 2}, "eps"),
        ({"steps": 0}, "steps"),
        ({"di_prob": 1.5}, "di_prob"),
        ({"objective": "hinge"}, "objective"),
        ({"ti_kernel": -1}, "ti_kernel"),
        ({"ti_kernel": 4}, "ti_kernel"),
        ({"si_copies": 0}, "si_copies"),
        ({"scales": (0.5, 0.0)}, "scales"),
        ({"momentum": -0.1}, "momentum"),
        ({"noise_std": float("nan")}, "noise_std"),
        ({"eps_typo": 0.1}, "eps_typo"),
    ],
)
def test_bad_params_raise_one_line_config_errors(victim, params, fragment):
    with pytest.raises(AttackConfigError, match=fragment) as caught:
        PGD(victim, **params)
    assert "\n" not in str(caught.value)


def test_bad_inputs_raise_clear_errors(victim, batch):
    images, captions = batch
    attack = PGD(victim, objective="text_cosine", steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(images * 2 - 0.5, captions)
    with pytest.raises(ValueError, match="caption groups"):
        attack(images, captions[:2])
    with pytest.raises(ValueError, match="32x32"):
        attack(torch.zeros(1, 3, 16, 16), [["a red circle"]])


def test_scale_set_copies_shapes_and_gradients():
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    generator = torch.Generator().manual_seed(0)
    copies = scale_set_copies(images, (0.5, 0.75, 1.25, 1.5), 0.05, generator)
    assert len(copies) == 5
    assert copies[0] is images
    assert all(copy.shape == images.shape for copy in copies)
    (gradient,) = torch.autograd.grad(sum(copy.sum() for copy in copies[1:]), images)
    assert gradient.abs().sum() > 0
    # Noise comes only from the generator: same seed, same copies.
    repeat = scale_set_copies(images, (0.5,), 0.05, torch.Generator().manual_seed(0))
    assert torch.equal(repeat[1], copies[1])


@pytest.mark.parametrize("size", [(8, 8), (12, 20), (16, 16), (24, 19)])
def test_bicubic_resize_matches_interpolate_forward_and_backward(size):
    images = torch.rand(2, 3, 16, 15, generator=torch.Generator().manual_seed(1))
    images.requires_grad_(True)
    expected = torch.nn.functional.interpolate(
        images, size=size, mode="bicubic", align_corners=False
    )
    actual = bicubic_resize(images, size)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), images)
    (grad_actual,) = torch.autograd.grad((actual * weights).sum(), images)
    torch.testing.assert_close(grad_actual, grad_expected, atol=1e-5, rtol=0)


def test_loss_pieces():
    clean = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator()), dim=-1)
    assert torch.allclose(embedding_kl(clean, clean), torch.zeros(3), atol=1e-7)
    assert bool((embedding_kl(clean, clean.flip(0)) >= 0).all())
    assert embedding_kl(clean, clean.expand(2, 3, 8)).shape == (2, 3)
    sets = [clean[:1], torch.cat([clean[1:2], -clean[1:2]]), clean[2:3].repeat(3, 1)]
    similarity = caption_set_similarity(clean, sets)
    assert torch.allclose(similarity, torch.tensor([1.0, 0.0, 3.0]), atol=1e-6)
