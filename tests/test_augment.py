"""Training augmentations: Random Erasing (one noise rectangle of the requested size) and caption
noise (word dropout and swaps), all seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robust.zoo.augment import noisy_caption, random_erasing


def _erased(images: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    out = random_erasing(images, generator=torch.Generator().manual_seed(0), **kwargs)
    return out, (out != images).any(dim=1)  # [B, H, W] where a pixel changed


def test_every_image_gets_one_rectangle_of_the_requested_area():
    images = torch.full((64, 3, 32, 32), 0.5)
    out, changed = _erased(images, probability=1.0, area_range=(0.04, 0.1))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    for mask in changed:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        # everything changed lies in one rectangle, whose area is within the range (+rounding)
        assert int(mask.sum()) == height * width
        assert 0.04 * 1024 * 0.75 <= height * width <= 0.1 * 1024 * 1.3


def test_probability_zero_is_the_identity_and_the_draws_are_seeded():
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out, _ = _erased(images, probability=0.0, area_range=(0.01, 0.08))
    assert torch.equal(out, images)
    first, changed = _erased(images, probability=0.5, area_range=(0.01, 0.08))
    second, _ = _erased(images, probability=0.5, area_range=(0.01, 0.08))
    assert torch.equal(first, second)
    assert 0 < int(changed.any(dim=(1, 2)).sum()) < 16


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"probability": 1.5, "area_range": (0.01, 0.08)}, "probability"),
        ({"probability": 0.5, "area_range": (0.2, 0.1)}, "area range"),
        ({"probability": 0.5, "area_range": (0.0, 0.1)}, "area range"),
    ],
)
def test_bad_settings_are_refused(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        random_erasing(torch.zeros(1, 3, 8, 8), generator=torch.Generator(), **kwargs)


def test_noisy_caption_is_seeded_and_drops_and_swaps_about_their_shares():
    caption = " ".join(f"w{i}" for i in range(400))
    dropped = noisy_caption(caption, np.random.default_rng(3), drop=0.25)
    assert dropped == noisy_caption(caption, np.random.default_rng(3), drop=0.25)
    kept = dropped.split(" ")
    assert 0.65 < len(kept) / 400 < 0.85
    assert kept == [word for word in caption.split(" ") if word in set(kept)]  # order kept
    swapped = noisy_caption(caption, np.random.default_rng(3), swap=0.2, vocabulary=("x",))
    words = swapped.split(" ")
    assert len(words) == 400 and 0.1 < words.count("x") / 400 < 0.3
    assert [w for w in words if w != "x"] == [w for w in caption.split(" ") if w in set(words)]
    assert len(noisy_caption("a red star", np.random.default_rng(0), drop=1.0).split(" ")) == 1
    assert noisy_caption("a red star", np.random.default_rng(0)) == "a red star"
    with pytest.raises(ValueError, match="needs a vocabulary"):
        noisy_caption("a red star", np.random.default_rng(0), swap=0.5)


def test_attribute_noise_makes_exactly_one_claim_of_a_caption_wrong():
    from robust.data.world import confusable_words, parse_caption

    confusable = confusable_words()
    assert "red" not in confusable["red"] and "blue" in confusable["red"]
    assert set(confusable["small"]) == {"large", "big"}  # synonyms are not confusions
    caption = "a big red striped circle at the top and a small blue box"
    generator = np.random.default_rng(0)
    for _ in range(50):
        noisy = noisy_caption(caption, generator, confuse=1.0, confusable=confusable)
        before, after = parse_caption(caption), parse_caption(noisy)
        fields = [
            (x, y)
            for old, new in zip(before.objects, after.objects, strict=True)
            for x, y in zip(old, new, strict=True)
        ] + list(zip(before.textures, after.textures, strict=True))
        assert sum(x != y for x, y in fields) == 1, noisy
    assert noisy_caption(caption, generator, confuse=0.0, confusable=confusable) == caption
    with pytest.raises(ValueError, match="needs their confusable words"):
        noisy_caption(caption, generator, confuse=0.5)
