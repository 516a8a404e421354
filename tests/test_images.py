"""The explicit resize/quantise step: shapes, centre crops, exactness and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust.data.dataset import ArrayImages
from robust.data.images import (
    cross_resolution,
    from_uint8_array,
    load_images,
    quantize_uint8,
    resize_tensor,
    to_uint8_array,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _thirds(height: int, width: int, horizontal: bool = True) -> np.ndarray:
    """An image split into red | green | blue thirds along its long side."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    length = width if horizontal else height
    for part, colour in enumerate((RED, GREEN, BLUE)):
        span = slice(part * length // 3, (part + 1) * length // 3)
        if horizontal:
            image[:, span] = colour
        else:
            image[span, :] = colour
    return image


def _random_pixels(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["squash", "crop"])
def test_load_images_shape_dtype_and_range(mode: str) -> None:
    source = ArrayImages(_random_pixels(3, 20, 30))
    images = load_images(source, [2, 0], size=16, mode=mode)
    assert images.shape == (2, 3, 16, 16)
    assert images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_load_images_with_no_indices_is_an_empty_batch() -> None:
    images = load_images(ArrayImages(_random_pixels(1, 8, 8)), [], size=5)
    assert images.shape == (0, 3, 5, 5)


@pytest.mark.parametrize("mode", ["squash", "crop"])
def test_load_images_does_not_resample_at_native_size(mode: str) -> None:
    pixels = _random_pixels(2, 16, 16)
    images = load_images(ArrayImages(pixels), [0, 1], size=16, mode=mode)
    expected = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(images, expected)


@pytest.mark.parametrize("horizontal", [True, False])
def test_load_images_crop_keeps_the_centre_and_squash_keeps_everything(horizontal: bool) -> None:
    shape = (32, 96) if horizontal else (96, 32)
    source = ArrayImages(_thirds(*shape, horizontal=horizontal)[None])
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)

    cropped = load_images(source, [0], size=32, mode="crop")[0]  # short side already 32
    assert torch.equal(cropped, green.expand(3, 32, 32))

    cropped_small = load_images(source, [0], size=16, mode="crop")[0]
    assert torch.allclose(cropped_small[:, 4:12, 4:12], green.expand(3, 8, 8), atol=2 / 255)
    assert cropped_small[0].max() < 0.2 and cropped_small[2].max() < 0.2  # no red, no blue

    squashed = load_images(source, [0], size=15, mode="squash")[0]
    first = squashed[:, :, 1] if horizontal else squashed[:, 1, :]
    last = squashed[:, :, -2] if horizontal else squashed[:, -2, :]
    assert first[0].min() > 0.9 and last[2].min() > 0.9  # red survives at one end, blue at other


@pytest.mark.parametrize("mode", ["squash", "crop"])
def test_resize_tensor_shapes(mode: str) -> None:
    images = torch.rand(2, 3, 24, 40)
    out = resize_tensor(images, 16, mode)
    assert out.shape == (2, 3, 16, 16)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_resize_tensor_crop_keeps_the_centre() -> None:
    images = from_uint8_array(_thirds(32, 96)[None])
    green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    assert torch.equal(resize_tensor(images, 32, "crop"), green.expand(1, 3, 32, 32))
    small = resize_tensor(images, 16, "crop")
    assert torch.allclose(small[..., 4:12, 4:12], green.expand(1, 3, 8, 8), atol=2 / 255)
    squashed = resize_tensor(images, 16, "squash")
    assert squashed[0, 0, :, 0].min() > 0.9 and squashed[0, 2, :, -1].min() > 0.9


@pytest.mark.parametrize("mode", ["squash", "crop"])
def test_resize_tensor_is_identity_at_native_size(mode: str) -> None:
    images = torch.rand(2, 3, 12, 12)
    assert torch.equal(resize_tensor(images, 12, mode), images)


@pytest.mark.parametrize("mode", ["squash", "crop"])
@pytest.mark.parametrize("size", [10, 40])
def test_resize_tensor_is_differentiable(mode: str, size: int) -> None:
    images = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    images.requires_grad_(True)
    out = resize_tensor(images, size, mode)
    (out * torch.randn_like(out)).sum().backward()
    assert images.grad is not None
    assert images.grad.abs().sum() > 0


def test_quantize_is_idempotent_and_within_half_a_level() -> None:
    images = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    quantized = quantize_uint8(images)
    assert torch.equal(quantize_uint8(quantized), quantized)
    assert (quantized - images).abs().max() <= 0.5 / 255 + 1e-6
    levels = quantized * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_quantize_clamps_out_of_range_values() -> None:
    quantized = quantize_uint8(torch.tensor([-0.3, 0.0, 1.0, 1.7]))
    assert torch.equal(quantized, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_uint8_round_trip_is_exact() -> None:
    pixels = _random_pixels(3, 7, 5)
    images = from_uint8_array(pixels)
    assert images.shape == (3, 3, 7, 5) and images.dtype == torch.float32
    assert np.array_equal(to_uint8_array(images), pixels)

    quantized = quantize_uint8(torch.rand(2, 3, 6, 6))
    assert torch.equal(from_uint8_array(to_uint8_array(quantized)), quantized)


def test_cross_resolution_is_resize_then_quantise() -> None:
    images = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(2))
    crossed = cross_resolution(images, 16, "crop")
    assert torch.equal(crossed, quantize_uint8(resize_tensor(images, 16, "crop")))
    assert torch.equal(from_uint8_array(to_uint8_array(crossed)), crossed)


@pytest.mark.parametrize(
    ("size", "mode", "needle"),
    [(16, "stretch", "unknown resize mode"), (0, "squash", "positive"), (-3, "crop", "positive")],
)
def test_bad_size_or_mode_is_one_clear_line(size: int, mode: str, needle: str) -> None:
    source = ArrayImages(_random_pixels(1, 8, 8))
    for call in (
        lambda: load_images(source, [0], size, mode),
        lambda: resize_tensor(torch.rand(1, 3, 8, 8), size, mode),
    ):
        with pytest.raises(ValueError) as caught:
            call()
        assert needle in str(caught.value)
        assert "\n" not in str(caught.value)


def test_wrong_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        resize_tensor(torch.rand(3, 8, 8), 4, "squash")
    with pytest.raises(ValueError, match="uint8"):
        from_uint8_array(np.zeros((1, 4, 4, 3), dtype=np.float32))
