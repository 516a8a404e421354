"""Warm starts for the toy fusion victims from the toy zoo's unimodal members.

Real ALBEF, TCL and BLIP start their ViT from a pre-trained DeiT/ViT and their BERT from
bert-base; the toys start the same way from the zoo's own pre-trained towers: the vision
encoder from `toy-clip-vit`'s visual tower and the text encoder from `toy-mlm`. Weights are
copied through explicit name maps, and any shape that does not match stops the copy with
the key named: a warm start never silently leaves a tensor at its random initialisation.

Differences the copy cannot remove: open_clip's ViT has a `ln_pre` LayerNorm after the
patch embedding that DeiT/BLIP lack (dropped), and QuickGELU where they use GELU;
open_clip's patch convolution has no bias (the target bias is zeroed). The activation
barely matters, but without `ln_pre` the copied ViT's embedding has mean cosine 0.24 to
toy-clip-vit's on world-v3 (0.999 with it put back), and fine-tuning on the world relearns
colours rather than the shapes toy-clip-vit read (robust/zoo/README.md, "The fusion toys'
text side on world-v3").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from robust.errors import RobustError
from robust.resources import ZOO_DIR

VISION_SOURCE = "toy-clip-vit"
TEXT_SOURCE = "toy-mlm"
CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"


def _member_folder(name_or_path: str, needed: str) -> Path:
    folder = Path(name_or_path)
    if not folder.is_dir():
        folder = ZOO_DIR / name_or_path
    if not (folder / needed).is_file():
        raise RobustError(
            f"no {needed} in {folder} to warm-start from; train it first "
            f"(robust zoo train {Path(name_or_path).name})"
        )
    return folder


def clip_state(name_or_path: str = VISION_SOURCE) -> dict[str, torch.Tensor]:
    """Every tensor of an open_clip local-dir model (a zoo name or a folder), in fp32."""
    from safetensors.torch import load_file

    folder = _member_folder(name_or_path, CLIP_WEIGHTS_FILE)
    return {key: value.float() for key, value in load_file(str(folder / CLIP_WEIGHTS_FILE)).items()}


def clip_visual_state(name_or_path: str = VISION_SOURCE) -> dict[str, torch.Tensor]:
    """The fp32 visual-tower tensors of an open_clip local-dir model, `visual.` stripped."""
    return {
        key.removeprefix("visual."): value
        for key, value in clip_state(name_or_path).items()
        if key.startswith("visual.")
    }


def training_record(name_or_path: str) -> dict | None:
    """The `training.json` beside a zoo member (None when it has none)."""
    folder = Path(name_or_path) if Path(name_or_path).is_dir() else ZOO_DIR / name_or_path
    path = folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else None


def trained_world(name_or_path: str) -> str | None:
    """The world version a member was trained on, by its training.json (None: no record,
    or not trained on a world)."""
    from robust.data.world import WORLD_VERSIONS

    record = training_record(name_or_path)
    world = record.get("train_dataset", "").partition(":")[0] if record else None
    return world if world in WORLD_VERSIONS else None


def check_trained_world(name_or_path: str, world: str, fix: str) -> None:
    """Refuse to start from a member trained on another world than `world`: its image and
    vocabulary sizes would not fit, or would fit and mean other things. `fix` says what to
    pass instead."""
    trained = trained_world(name_or_path)
    if trained is not None and trained != world:
        raise RobustError(f"{name_or_path} was trained on {trained}, not {world}; {fix}")


def masked_lm_state(name_or_path: str = TEXT_SOURCE) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(BERT tensors of a `save_pretrained` BertForMaskedLM with `bert.` stripped, its
    vocabulary in id order), so a model warm-started from it tokenises the same way."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = _member_folder(name_or_path, "model.safetensors")
    state = load_file(str(folder / "model.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    if [index for _, index in vocabulary] != list(range(len(vocabulary))):
        raise RobustError(f"{folder}: the tokenizer's ids have gaps; not a plain BERT vocabulary")
    bert = {
        key.removeprefix("bert."): value.float()
        for key, value in state.items()
        if key.startswith("bert.")
    }
    return bert, [token for token, _ in vocabulary]


def masked_lm_head_state(name_or_path: str = TEXT_SOURCE) -> dict[str, torch.Tensor]:
    """The `cls.predictions.*` (MLM head) tensors of a `save_pretrained` BertForMaskedLM."""
    from safetensors.torch import load_file

    folder = _member_folder(name_or_path, "model.safetensors")
    state = load_file(str(folder / "model.safetensors"))
    return {key: value.float() for key, value in state.items() if key.startswith("cls.")}


_CLIP_BLOCK_PARTS = {
    # open_clip name: (ALBEF/DeiT name, HF BLIP name); each gets .weight and .bias
    "ln_1": ("norm1", "layer_norm1"),
    "attn.in_proj": ("attn.qkv", "self_attn.qkv"),
    "attn.out_proj": ("attn.proj", "self_attn.projection"),
    "ln_2": ("norm2", "layer_norm2"),
    "mlp.c_fc": ("mlp.fc1", "mlp.fc1"),
    "mlp.c_proj": ("mlp.fc2", "mlp.fc2"),
}
LAYOUTS = ("albef", "blip")


def _clip_key(part: str, kind: str) -> str:
    # nn.MultiheadAttention names its fused projection in_proj_weight / in_proj_bias
    return f"{part}_{kind}" if part == "attn.in_proj" else f"{part}.{kind}"


def _clip_block_map(index: int, target: str, layout: str) -> dict[str, str]:
    """open_clip resblock `index` -> ALBEF (`albef`) or HF BLIP (`blip`) block `target`."""
    column = LAYOUTS.index(layout)
    return {
        f"transformer.resblocks.{index}.{_clip_key(part, kind)}": f"{target}.{names[column]}.{kind}"
        for part, names in _CLIP_BLOCK_PARTS.items()
        for kind in ("weight", "bias")
    }


def vit_from_clip(
    clip_visual: Mapping[str, torch.Tensor], layout: str, prefix: str
) -> dict[str, torch.Tensor]:
    """Target-named tensors for an ALBEF (`layout="albef"`) or HF BLIP (`"blip"`) ViT under
    `prefix`, taken from an open_clip visual state; includes the zeroed patch bias."""
    depth = len({key.split(".")[2] for key in clip_visual if key.startswith("transformer.")})
    patch = clip_visual["conv1.weight"]
    if layout == "albef":
        out = {
            "cls_token": clip_visual["class_embedding"].view(1, 1, -1),
            "pos_embed": clip_visual["positional_embedding"].unsqueeze(0),
            "patch_embed.proj.weight": patch,
            "patch_embed.proj.bias": torch.zeros(patch.shape[0]),
            "norm.weight": clip_visual["ln_post.weight"],
            "norm.bias": clip_visual["ln_post.bias"],
        }
        blocks = "blocks"
    elif layout == "blip":
        out = {
            "embeddings.class_embedding": clip_visual["class_embedding"].view(1, 1, -1),
            "embeddings.position_embedding": clip_visual["positional_embedding"].unsqueeze(0),
            "embeddings.patch_embedding.weight": patch,
            "embeddings.patch_embedding.bias": torch.zeros(patch.shape[0]),
            "post_layernorm.weight": clip_visual["ln_post.weight"],
            "post_layernorm.bias": clip_visual["ln_post.bias"],
        }
        blocks = "encoder.layers"
    else:
        raise ValueError(f"unknown ViT layout {layout!r}")
    for index in range(depth):
        for clip_key, own in _clip_block_map(index, f"{blocks}.{index}", layout).items():
            out[own] = clip_visual[clip_key]
    return {f"{prefix}{key}": value for key, value in out.items()}


def image_projection_from_clip(clip_visual: Mapping[str, torch.Tensor], prefix: str) -> dict:
    """CLIP's `visual.proj` (`x @ proj`) as an `nn.Linear` weight (bias zero) under `prefix`."""
    proj = clip_visual["proj"]
    return {f"{prefix}.weight": proj.T.contiguous(), f"{prefix}.bias": torch.zeros(proj.shape[1])}


def bert_layers_from_masked_lm(
    bert: Mapping[str, torch.Tensor], layer_sources: Mapping[int, int], prefix: str
) -> dict[str, torch.Tensor]:
    """Embeddings plus self-attention and feed-forward of target layer `t` from masked-LM
    layer `layer_sources[t]`, under `prefix` (ALBEF and HF BERT share these names)."""
    out = {f"{prefix}{key}": value for key, value in bert.items() if key.startswith("embeddings.")}
    out.pop(f"{prefix}embeddings.position_ids", None)
    for target, source in layer_sources.items():
        head = f"encoder.layer.{source}."
        for key, value in bert.items():
            if key.startswith(head):
                out[f"{prefix}encoder.layer.{target}.{key[len(head) :]}"] = value
    return out


def copy_into(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Copy `tensors` into `module`'s parameters by name; every name must exist and every
    shape match, except that a table with more rows than the source (a vocabulary with
    extra tokens) keeps its own initialisation in the extra rows. Returns the copied keys."""
    own = module.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise RobustError(f"warm start from {source}: the model has no {', '.join(unknown[:5])}")
    with torch.no_grad():
        for key, value in tensors.items():
            target = own[key]
            grows_rows = value.ndim == 2 and key.endswith("word_embeddings.weight")
            fits = value.shape == target.shape or (
                grows_rows and value.shape[1] == target.shape[1] and value.shape[0] <= len(target)
            )
            if not fits:
                raise RobustError(
                    f"warm start from {source}: {key} is {tuple(value.shape)} there but "
                    f"{tuple(target.shape)} here; give the model {source}'s sizes"
                )
            target[: value.shape[0]].copy_(value)
    return sorted(tensors)
