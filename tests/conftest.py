"""Shared fixtures: tiny models written in the real checkpoint formats, small world splits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_PREPROCESS = {
    "size": 32,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP threads contending on a busy 2-core
    machine make them orders of magnitude slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def world_small():
    """The first 40 images of world test-1k."""
    from robust.data.world import generate_world

    return generate_world("test-1k", count=40)


@pytest.fixture(scope="session")
def zoo_world_small():
    """The first 40 images of test-1k of the world the shipped zoo was trained on."""
    from robust.data.world import ZOO_WORLD, generate_world

    return generate_world("test-1k", count=40, version=ZOO_WORLD)


@pytest.fixture(scope="session")
def tiny_open_clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny open_clip ViT saved as an open_clip local-dir."""
    from open_clip.model import CLIP

    from robust.victims.openclip import save_local_dir

    torch.manual_seed(0)
    model = CLIP(**TINY_OPEN_CLIP_CFG).eval()
    folder = tmp_path_factory.mktemp("tiny-open-clip")
    return save_local_dir(model, TINY_OPEN_CLIP_CFG, TINY_PREPROCESS, folder)


def write_clip_bpe_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json + merges.txt for HF CLIPTokenizer from open_clip's bundled BPE (offline)."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    vocab = folder / "vocab.json"
    merges = folder / "merges.txt"
    vocab.write_text(json.dumps(bpe.encoder))
    ranked = sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])
    merges.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in ranked) + "\n")
    return vocab, merges


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """A tiny transformers CLIPModel + tokenizer + processor config saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-hf-clip")
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    vocab, merges = write_clip_bpe_tokenizer_files(folder)
    CLIPTokenizer(vocab_file=str(vocab), merges_file=str(merges)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "image_mean": TINY_PREPROCESS["mean"],
                "image_std": TINY_PREPROCESS["std"],
                "crop_size": {"height": 32, "width": 32},
                "size": {"shortest_edge": 32},
                "do_center_crop": True,
            }
        )
    )
    return folder


MLM_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# "hexagon" is deliberately absent: it tokenizes to "hex ##agon" (a two-sub-word word).
MLM_WORDS = [
    "red", "green", "blue", "purple", "yellow", "orange", "pink", "white",
    "circle", "square", "triangle", "star", "hex", "##agon", "##ish", "##y",
    "left", "right", "top", "bottom", "middle", "big", "small", "large",
    "shape", "picture", "corner", "a", "an", "the", "of", "on", "in", "is",
    "and", "with", "at", "to", "above", "below", ".", ",",
]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_mlm_dir(tmp_path_factory) -> Path:
    """A tiny random BertForMaskedLM and its WordPiece vocab, saved with save_pretrained."""
    from transformers import BertConfig, BertForMaskedLM
    from transformers.utils import logging as hf_logging

    folder = tmp_path_factory.mktemp("tiny-mlm")
    (folder / "vocab.txt").write_text(
        "".join(f"{token}\n" for token in MLM_SPECIAL_TOKENS + MLM_WORDS)
    )
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(MLM_SPECIAL_TOKENS) + len(MLM_WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    hf_logging.disable_progress_bar()
    try:
        BertForMaskedLM(config).eval().save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()
    return folder


PROTOCOL_2024_ATTACKS = ("dra", "sa_aet")


@pytest.fixture
def protocol_attacks(monkeypatch):
    """DRA and SA-AET as the protocol presets name them: the registered classes where they
    exist, else stand-ins for this test only that take SGA's parameters (what the presets give
    them), so the presets validate against a registry that knows every name they use."""
    from robust.attacks import AttackConfigError, registry
    from robust.attacks.sga import SGA

    for name in PROTOCOL_2024_ATTACKS:
        try:
            registry.attack_class(name)
        except AttackConfigError:
            stand_in = type(f"StandIn_{name}", (SGA,), {"name": name})
            monkeypatch.setitem(registry._REGISTERED, name, stand_in)
