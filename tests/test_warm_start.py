"""Warm starts of the fusion toys from the zoo's unimodal towers: every copied tensor lands
on the right weight, only the parts the papers leave fresh stay fresh, and a size mismatch
is one error naming the weight."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robust.errors import RobustError
from robust.victims.albef import AlbefConfig, AlbefModel
from robust.zoo.train_albef import AlbefRecipe, init_albef_model, text_layer_sources
from robust.zoo.warm_start import clip_visual_state, copy_into, masked_lm_state, vit_from_clip

CLIP_64_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def clip_64_dir(tmp_path_factory) -> Path:
    """A random open_clip ViT at the world's 64 px, saved as a local-dir."""
    from open_clip.model import CLIP

    from robust.victims.openclip import save_local_dir
    from tests.conftest import TINY_PREPROCESS

    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("clip-64")
    preprocess = {**TINY_PREPROCESS, "size": 64}
    return save_local_dir(CLIP(**CLIP_64_CFG).eval(), CLIP_64_CFG, preprocess, folder)


def tiny_albef_recipe(clip_dir: Path, mlm_dir: Path, vocab_size: int, **sizes) -> AlbefRecipe:
    model = {
        "image_size": 64,
        "patch_size": 16,
        "vision_width": 32,
        "vision_depth": 2,
        "vision_heads": 2,
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "fusion_layer": 2,
        "encoder_width": 32,
        "embed_dim": 16,
        **sizes,
    }
    return AlbefRecipe(
        name="warm", family="albef", model=model, vision_init=str(clip_dir), text_init=str(mlm_dir)
    )


def test_albef_starts_from_the_clip_vit_and_the_masked_lm(clip_64_dir, tiny_mlm_dir):
    bert, vocab = masked_lm_state(str(tiny_mlm_dir))
    model, copied = init_albef_model(tiny_albef_recipe(clip_64_dir, tiny_mlm_dir, len(vocab)))
    state = model.state_dict()
    clip = clip_visual_state(str(clip_64_dir))

    assert torch.equal(state["visual_encoder.blocks.1.attn.qkv.weight"],
                       clip["transformer.resblocks.1.attn.in_proj_weight"])  # fmt: skip
    assert torch.equal(state["visual_encoder.blocks.0.mlp.fc2.bias"],
                       clip["transformer.resblocks.0.mlp.c_proj.bias"])  # fmt: skip
    assert torch.equal(state["visual_encoder.cls_token"][0, 0], clip["class_embedding"])
    assert torch.equal(state["visual_encoder.norm.weight"], clip["ln_post.weight"])
    assert torch.equal(state["visual_encoder.patch_embed.proj.bias"], torch.zeros(32))
    # CLIP computes x @ proj; the Linear holds its transpose
    assert torch.equal(state["vision_proj.weight"], clip["proj"].T)
    # text layers 0, 1 from the LM's 0, 1; the fusion layer 2 from its top layer 1
    for layer, source in ((0, 0), (1, 1), (2, 1)):
        assert torch.equal(
            state[f"text_encoder.encoder.layer.{layer}.attention.self.query.weight"],
            bert[f"encoder.layer.{source}.attention.self.query.weight"],
        )
    assert torch.equal(state["text_encoder.embeddings.word_embeddings.weight"],
                       bert["embeddings.word_embeddings.weight"])  # fmt: skip

    fresh = {key for key in state if key not in copied}
    assert fresh == {
        key
        for key in state
        if ".crossattention." in key or key.split(".")[0] in ("text_proj", "itm_head")
    }


def test_blip_vision_layout_maps_every_weight(clip_64_dir):
    from transformers import BlipVisionConfig, BlipVisionModel

    config = BlipVisionConfig(
        hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        image_size=64, patch_size=16,
    )  # fmt: skip
    vision = BlipVisionModel(config)
    clip = clip_visual_state(str(clip_64_dir))
    copied = copy_into(vision, vit_from_clip(clip, "blip", ""), "clip-64")
    assert set(copied) == set(vision.state_dict())  # nothing left at random
    state = vision.state_dict()
    assert torch.equal(state["encoder.layers.1.self_attn.projection.weight"],
                       clip["transformer.resblocks.1.attn.out_proj.weight"])  # fmt: skip
    assert torch.equal(state["embeddings.position_embedding"][0], clip["positional_embedding"])


def test_a_size_mismatch_names_the_weight(clip_64_dir, tiny_mlm_dir):
    _, vocab = masked_lm_state(str(tiny_mlm_dir))
    recipe = tiny_albef_recipe(clip_64_dir, tiny_mlm_dir, len(vocab), patch_size=8)
    with pytest.raises(RobustError, match=r"visual_encoder\.pos_embed is \(1, 17, 32\) there"):
        init_albef_model(recipe)
    with pytest.raises(RobustError, match="has no nonsense"):
        copy_into(AlbefModel(recipe.model_config()), {"nonsense": torch.zeros(1)}, "x")


def test_fusion_layers_come_from_the_top_of_the_source():
    config = AlbefConfig(
        image_size=64, patch_size=16, vision_width=32, vision_depth=1, vision_heads=2,
        hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64,
        fusion_layer=4, encoder_width=32,
    )  # fmt: skip
    assert text_layer_sources(config, 4, "lm") == {0: 0, 1: 1, 2: 2, 3: 3, 4: 2, 5: 3}
    with pytest.raises(RobustError, match="it has 3 layers"):
        text_layer_sources(config, 3, "lm")
