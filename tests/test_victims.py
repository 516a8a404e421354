"""Victim contract, registry and the CLIP loaders on tiny models in their real file formats."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import robust
from robust.data.world import ZOO_WORLD
from robust.errors import RobustError, UnknownVictimError, WeightsNotFoundError
from robust.victims.openclip import OpenClipVictim
from robust.victims.registry import KNOWN_VICTIMS, list_victims, resolve_spec, weights_present
from robust.zoo.recipes import world_image_size

TEXTS = ["a red circle in the center", "two shapes: a blue square and a green star"]


def random_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_open_clip_local_dir_round_trip_reproduces_the_model(tiny_open_clip_dir):
    from open_clip.model import CLIP

    from tests.conftest import TINY_OPEN_CLIP_CFG

    reference = CLIP(**TINY_OPEN_CLIP_CFG).eval()
    reference.load_state_dict(load_file(str(tiny_open_clip_dir / "open_clip_model.safetensors")))
    victim = robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")
    images = random_images(3, 32)
    mean = torch.tensor(victim.mean).view(1, 3, 1, 1)
    std = torch.tensor(victim.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            reference.encode_image((images - mean) / std), dim=-1
        )
        torch.testing.assert_close(victim.encode_image(images), expected, rtol=0, atol=0)
        import open_clip

        tokens = open_clip.get_tokenizer(f"local-dir:{tiny_open_clip_dir}")(TEXTS)
        expected_text = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
        torch.testing.assert_close(victim.encode_text(TEXTS), expected_text, rtol=0, atol=0)
    assert victim.image_size == 32
    assert victim.resize_mode == "crop"
    assert victim.capabilities == frozenset({"itc"})


def test_open_clip_checkpoint_file_spec_loads_same_weights(tiny_open_clip_dir, tmp_path):
    """`open_clip:ARCH@FILE` goes through open_clip's strict checkpoint loader."""
    import open_clip

    from tests.conftest import TINY_OPEN_CLIP_CFG

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "tiny-test-vit.json").write_text(__import__("json").dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(config_dir)
    from_dir = robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")
    checkpoint = tiny_open_clip_dir / "open_clip_model.safetensors"
    from_file = robust.load_victim(f"open_clip:tiny-test-vit@{checkpoint}")
    images = random_images(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(from_file.encode_image(images), from_dir.encode_image(images))


def test_embeddings_are_unit_norm_and_gradients_reach_pixels(tiny_open_clip_dir, tiny_hf_clip_dir):
    for spec in (f"open_clip:local-dir:{tiny_open_clip_dir}", f"hf-clip:{tiny_hf_clip_dir}"):
        victim = robust.load_victim(spec)
        images = random_images(2, 32).requires_grad_(True)
        features = victim.encode_image(images)
        torch.testing.assert_close(features.norm(dim=-1), torch.ones(2))
        torch.testing.assert_close(victim.encode_text(TEXTS).norm(dim=-1), torch.ones(2))
        # weight by noise: a plain .sum() after a LayerNorm has zero gradient
        (features * torch.randn_like(features)).sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0, spec


def test_hf_clip_save_pretrained_round_trip(tiny_hf_clip_dir):
    from transformers import CLIPModel, CLIPTokenizer

    victim = robust.load_victim(f"hf-clip:{tiny_hf_clip_dir}")
    reference = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_hf_clip_dir)
    images = random_images(3, 32)
    mean = torch.tensor(victim.mean).view(1, 3, 1, 1)
    std = torch.tensor(victim.std).view(1, 3, 1, 1)
    with torch.no_grad():
        out = reference(
            pixel_values=(images - mean) / std,
            **tokenizer(TEXTS, padding=True, return_tensors="pt"),
        )
        torch.testing.assert_close(victim.encode_image(images), out.image_embeds)
        torch.testing.assert_close(victim.encode_text(TEXTS), out.text_embeds)
    assert victim.image_size == 32 and victim.family == "clip"


def test_victims_stay_in_eval_mode(tiny_open_clip_dir):
    victim = robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")
    victim.train()
    assert not victim.training and not victim.model.training


def test_off_size_images_are_refused(tiny_open_clip_dir):
    victim = robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")
    with pytest.raises(ValueError, match="expected 32x32"):
        victim.encode_image(random_images(1, 48))


def test_capability_errors_name_the_victim(tiny_open_clip_dir):
    victim = robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")
    with pytest.raises(RobustError, match="image-text matching"):
        victim.itm_logits(random_images(1, 32), ["x"])
    with pytest.raises(RobustError, match="cannot generate captions"):
        victim.generate_captions(random_images(1, 32))


def test_registry_knows_the_paper_victims_and_the_toys():
    for name in ("clip-vit-b16", "clip-rn101", "clip-vit-b32", "clip-vit-l14"):
        assert "quickgelu@openai" in KNOWN_VICTIMS[name].spec
    assert {"toy-clip-vit", "toy-clip-rn"} <= {entry.name for entry in list_victims()}
    assert resolve_spec("hf-clip:openai/clip-vit-base-patch16")[0].startswith("hf-clip:")
    assert resolve_spec({"name": "mine", "spec": "toy-clip-vit"})[1] == "mine"


def test_unknown_victim_is_one_clear_line():
    with pytest.raises(UnknownVictimError) as error:
        robust.load_victim("clip-vit-b17")
    message = str(error.value)
    assert "clip-vit-b17" in message and "robust victims" in message and "\n" not in message


def test_missing_real_weights_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as error:
        robust.load_victim("clip-vit-b16")
    message = str(error.value)
    assert str(tmp_path / "clip-vit-b16") in message
    assert "huggingface.co/timm/vit_base_patch16_clip_224.openai" in message
    assert "\n" not in message
    assert not weights_present(KNOWN_VICTIMS["clip-vit-b16"])


def test_weights_found_under_robust_weights(tiny_open_clip_dir, tmp_path, monkeypatch):
    """A file in $ROBUST_WEIGHTS/<name>/ satisfies a named real victim without any download."""
    import shutil

    import open_clip

    from tests.conftest import TINY_OPEN_CLIP_CFG

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "tiny-env-vit.json").write_text(__import__("json").dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(config_dir)
    from robust.victims.weights import find_open_clip_weights

    target = tmp_path / "weights" / "my-victim"
    target.mkdir(parents=True)
    shutil.copy(tiny_open_clip_dir / "open_clip_model.safetensors", target)
    monkeypatch.setenv("ROBUST_WEIGHTS", str(tmp_path / "weights"))
    found, _, _ = find_open_clip_weights("ViT-B-16-quickgelu", "openai", ("my-victim",))
    assert found == target / "open_clip_model.safetensors"


def test_open_clip_spec_errors_are_clear(tmp_path):
    with pytest.raises(RobustError, match="names no weights"):
        robust.load_victim("open_clip:ViT-B-16-quickgelu")
    with pytest.raises(RobustError, match="no architecture"):
        robust.load_victim("open_clip:ViT-Q-99@openai")
    with pytest.raises(RobustError, match="no pretrained tag"):
        robust.load_victim("open_clip:ViT-B-16-quickgelu@not-a-tag")
    with pytest.raises(RobustError, match="does not exist"):
        robust.load_victim(f"open_clip:local-dir:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobustError, match="open_clip_config.json"):
        robust.load_victim(f"open_clip:local-dir:{tmp_path / 'empty'}")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        robust.load_victim(f"hf-clip:{tmp_path / 'empty'}")


def test_shipped_toy_victims_load_through_the_local_dir_path():
    for name in ("toy-clip-vit", "toy-clip-rn"):
        victim = robust.load_victim(name)
        assert isinstance(victim, OpenClipVictim)
        size = world_image_size(ZOO_WORLD)
        assert victim.image_size == size and weights_present(KNOWN_VICTIMS[name])
        with torch.no_grad():
            assert victim.encode_image(random_images(2, size)).shape[0] == 2


def test_shipped_toy_captioner_describes_world_images(zoo_world_small):
    """toy-blip-cap loads through hf-blip-cap: and names the colours it sees."""
    from robust.data.images import load_images

    victim = robust.load_victim("toy-blip-cap")
    assert weights_present(KNOWN_VICTIMS["toy-blip-cap"])
    images = load_images(zoo_world_small.images, range(8), victim.image_size, victim.resize_mode)
    captions = victim.generate_captions(images)
    assert len(captions) == 8 and all(caption.strip() for caption in captions)
    named = sum(
        any(obj["color"] in caption.split() for obj in label["objects"])
        for caption, label in zip(captions, zoo_world_small.labels[:8], strict=True)
    )
    assert named >= 6, captions
