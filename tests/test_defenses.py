"""Defenses: exact transforms, DefendedVictim in evaluation and adaptive (BPDA, EOT) modes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from robust.data.world import ZOO_WORLD
from robust.defenses import (
    BitDepthReduction,
    DefendedVictim,
    DefenseError,
    GaussianSmoothing,
    JpegCompression,
    MedianSmoothing,
    RandomResizePad,
    bpda,
    defended_spec,
    parse_defense,
)
from robust.errors import WeightsNotFoundError
from robust.victims.registry import KNOWN_VICTIMS, load_victim, weights_present
from robust.zoo.recipes import world_image_size


@pytest.fixture(scope="module")
def toy_clip():
    return load_victim("toy-clip-vit")


@pytest.fixture(scope="module")
def world_pixels(zoo_world_small, toy_clip):
    from robust.data.images import load_images

    return load_images(zoo_world_small.images, range(6), toy_clip.image_size, "crop")


def test_jpeg_is_pillows_codec(world_pixels):
    out = JpegCompression(50)(world_pixels)
    first = (world_pixels[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(first).save(buffer, format="JPEG", quality=50)
    expected = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    got = (out[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(got, expected)
    assert out.shape == world_pixels.shape
    # lower quality loses more
    error_q20 = (JpegCompression(20)(world_pixels) - world_pixels).abs().mean()
    error_q90 = (JpegCompression(90)(world_pixels) - world_pixels).abs().mean()
    assert error_q20 > error_q90 > 0


def test_bit_depth_rounds_to_levels():
    images = torch.tensor([0.0, 0.2, 0.49, 0.51, 1.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert BitDepthReduction(1)(images)[0, 0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    levels = BitDepthReduction(2)(images)[0, 0, 0] * 3
    assert levels.tolist() == pytest.approx([0.0, 1.0, 1.0, 2.0, 3.0])


def test_smoothing_known_answers():
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(GaussianSmoothing(5)(flat), flat, atol=1e-6)
    salted = flat.clone()
    salted[0, :, 4, 4] = 1.0
    assert torch.allclose(MedianSmoothing(3)(salted), flat)
    blurred = GaussianSmoothing(3)(salted)
    assert 0.3 < float(blurred[0, 0, 4, 4]) < 1.0
    assert float(blurred[0, 0, 4, 5]) > 0.3


def test_resize_pad_repeats_with_its_seed(world_pixels):
    defense = RandomResizePad(1.2)
    first = defense(world_pixels, torch.Generator().manual_seed(3))
    again = defense(world_pixels, torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    draws = {defense(world_pixels, torch.Generator().manual_seed(s)).sum().item() for s in range(6)}
    assert len(draws) > 1
    with pytest.raises(DefenseError, match="seeded torch.Generator"):
        defense(world_pixels)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("jpeg-q75", JpegCompression),
        ("bits-4", BitDepthReduction),
        ("gauss-5", GaussianSmoothing),
        ("median-3", MedianSmoothing),
        ("resize-pad-1.15", RandomResizePad),
    ],
)
def test_names_round_trip(name, cls):
    defense = parse_defense(name)
    assert isinstance(defense, cls) and defense.name == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("jpeg", "unknown defense"),
        ("jpeg-q0", "quality"),
        ("gauss-4", "odd"),
        ("bits-9", "bit depth"),
        ("resize-pad-3", "ratio"),
        ("resize-pad-1.10", "write defense"),
    ],
)
def test_bad_names_fail_clearly(name, message):
    with pytest.raises(DefenseError, match=message):
        parse_defense(name)


def test_defended_victim_applies_the_defense(toy_clip, world_pixels):
    defended = DefendedVictim(toy_clip, JpegCompression(30))
    with torch.no_grad():
        got = defended.encode_image(world_pixels)
        expected = toy_clip.encode_image(JpegCompression(30)(world_pixels))
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(got.norm(dim=-1), torch.ones(len(got)), atol=1e-5)
        text = defended.encode_text(["a red circle"])
        assert torch.equal(text, toy_clip.encode_text(["a red circle"]))
    assert defended.name == "toy-clip-vit+jpeg-q30"
    assert defended.image_size == toy_clip.image_size
    assert defended.describe()["defense"]["quality"] == 30


@pytest.mark.parametrize("name", ["gauss-5", "median-3", "resize-pad-1.15"])
def test_gradients_pass_through_differentiable_defenses(toy_clip, world_pixels, name):
    defended = DefendedVictim(toy_clip, parse_defense(name), adaptive=True, eot_samples=2)
    images = world_pixels.clone().requires_grad_(True)
    defended.encode_image(images).sum().backward()
    assert images.grad is not None and float(images.grad.abs().sum()) > 0


def test_adaptive_mode_refuses_non_differentiable_defense_without_bpda(toy_clip):
    for defense in (JpegCompression(75), BitDepthReduction(4)):
        with pytest.raises(DefenseError, match="needs BPDA; set bpda=True"):
            DefendedVictim(toy_clip, defense, adaptive=True)


def test_evaluation_mode_refuses_meaningless_gradients(toy_clip, world_pixels):
    defended = DefendedVictim(toy_clip, BitDepthReduction(3))
    with pytest.raises(DefenseError, match="adaptive=True, bpda=True"):
        defended.encode_image(world_pixels.clone().requires_grad_(True))


def test_bpda_forward_is_exact_backward_is_identity(toy_clip, world_pixels):
    images = world_pixels.clone().requires_grad_(True)
    jpeg = JpegCompression(40)
    out = bpda(images, jpeg(images))
    assert torch.allclose(out.detach(), jpeg(world_pixels), atol=1e-6)
    (out * 3).sum().backward()
    assert torch.allclose(images.grad, torch.full_like(images, 3.0))

    defended = DefendedVictim(toy_clip, jpeg, adaptive=True, bpda=True)
    images = world_pixels.clone().requires_grad_(True)
    embeddings = defended.encode_image(images)
    with torch.no_grad():
        assert torch.allclose(embeddings, toy_clip.encode_image(jpeg(world_pixels)), atol=1e-6)
    embeddings[:, 0].sum().backward()
    assert float(images.grad.abs().sum()) > 0


def test_eot_averages_embeddings_over_seeded_draws(toy_clip, world_pixels):
    defense = RandomResizePad(1.2)
    defended = DefendedVictim(toy_clip, defense, adaptive=True, eot_samples=4, seed=7)
    generator = defended.draw_generator(world_pixels)
    with torch.no_grad():
        got = defended.encode_image(world_pixels)
        # the same input gets the same draws whatever ran before; another input new ones
        defended.encode_image(world_pixels.flip(-1))
        assert torch.equal(defended.encode_image(world_pixels), got)
        draws = [toy_clip.encode_image(defense(world_pixels, generator)) for _ in range(4)]
        expected = torch.nn.functional.normalize(torch.stack(draws).mean(dim=0), dim=-1)
        single = torch.nn.functional.normalize(draws[0], dim=-1)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, single, atol=1e-4)
    # deterministic defenses need one draw only
    assert (
        DefendedVictim(toy_clip, GaussianSmoothing(3), adaptive=True, eot_samples=8).eot_samples
        == 1
    )


def test_defended_spec_loads_through_the_registry():
    spec = defended_spec("resize-pad-1.15", "toy-clip-rn", adaptive=True, eot_samples=3, seed=5)
    victim = load_victim({"name": "rn+pad", "spec": spec})
    assert isinstance(victim, DefendedVictim)
    assert (victim.name, victim.adaptive, victim.eot_samples, victim.seed) == ("rn+pad", True, 3, 5)
    with pytest.raises(DefenseError, match="unknown defended-victim option"):
        load_victim("defended:jpeg-q75,fast:toy-clip-vit")


@pytest.mark.parametrize(
    "name",
    ["tecoa2-clip-vit-l14", "tecoa4-clip-vit-l14", "fare2-clip-vit-l14", "fare4-clip-vit-l14"],
)
def test_robust_clip_checkpoints_are_registered_but_missing(name, monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUST_WEIGHTS", str(tmp_path))
    entry = KNOWN_VICTIMS[name]
    assert entry.spec.startswith("open_clip:hf-hub:chs20/")
    assert not weights_present(entry)
    with pytest.raises(WeightsNotFoundError, match="huggingface.co/chs20/"):
        load_victim(name)


def test_robust_clip_checkpoint_loads_from_the_weights_folder(monkeypatch, tmp_path):
    import shutil

    from robust.resources import ZOO_DIR

    # any open_clip hf-hub folder layout works; the toy ViT stands in for FARE's files
    shutil.copytree(ZOO_DIR / "toy-clip-vit", tmp_path / "fare2-clip-vit-l14")
    monkeypatch.setenv("ROBUST_WEIGHTS", str(tmp_path))
    assert weights_present(KNOWN_VICTIMS["fare2-clip-vit-l14"])
    victim = load_victim("fare2-clip-vit-l14")
    assert victim.name == "fare2-clip-vit-l14"
    assert victim.image_size == world_image_size(ZOO_WORLD)
