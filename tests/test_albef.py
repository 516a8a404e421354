"""ALBEF/TCL victim: tiny models written in every real checkpoint format, reloaded exactly."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from robust.errors import RobustError, WeightsNotFoundError
from robust.victims import albef
from robust.victims.albef import (
    AlbefConfig,
    AlbefModel,
    AlbefVictim,
    interpolate_pos_embed,
    load_albef_checkpoint,
    pre_caption,
    save_albef_checkpoint,
)

WORDS = (
    "a an the two three red blue green yellow circle square triangle star shape shapes "
    "on left right of above below small large big and with is in center next to ##s"
).split()
TEXTS = ["A red circle, left of a blue square!", "two green triangles above a star"]
TINY = AlbefConfig(
    image_size=32,
    patch_size=16,
    vision_width=48,
    vision_depth=2,
    vision_heads=2,
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    fusion_layer=2,
    encoder_width=48,
    embed_dim=16,
)


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bert-vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return path


def tiny_model(config: AlbefConfig = TINY, seed: int = 0) -> AlbefModel:
    """A random tiny model; every tensor perturbed so swapped keys would change outputs."""
    torch.manual_seed(seed)
    model = AlbefModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.fixture(scope="module")
def source(vocab_file) -> AlbefVictim:
    return AlbefVictim("source", tiny_model(), vocab_file)


def images(count: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def outputs(victim: AlbefVictim) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {
            "image": victim.encode_image(images()),
            "text": victim.encode_text(TEXTS),
            "itm": victim.itm_logits(images(), TEXTS),
        }


def assert_same_outputs(loaded: AlbefVictim, source: AlbefVictim) -> None:
    got, expected = outputs(loaded), outputs(source)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def training_extras(state: dict[str, torch.Tensor], prefix_bert: bool) -> dict:
    """What official checkpoints carry besides the model: momentum copies, queues, temp."""
    extras: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        top, rest = key.split(".", 1)
        if prefix_bert and top == "text_encoder":
            rest = "bert." + rest
        extras[f"{top}_m.{rest}"] = value.clone()
    dim = TINY.embed_dim
    extras.update(
        image_queue=torch.randn(dim, 8),
        text_queue=torch.randn(dim, 8),
        idx_queue=torch.zeros(1, 8, dtype=torch.long),
        queue_ptr=torch.zeros(1, dtype=torch.long),
        temp=torch.tensor(0.07),
    )
    return extras


def pretrain_style(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as in ALBEF.pth: BertForMaskedLM (`text_encoder.bert.*`) plus its MLM head."""
    hidden, vocab = TINY.hidden_size, TINY.vocab_size
    renamed = {
        key.replace("text_encoder.", "text_encoder.bert.", 1): value for key, value in state.items()
    }
    renamed["text_encoder.bert.embeddings.position_ids"] = torch.arange(64)[None]
    renamed.update(
        {
            "text_encoder.cls.predictions.bias": torch.zeros(vocab),
            "text_encoder.cls.predictions.transform.dense.weight": torch.randn(hidden, hidden),
            "text_encoder.cls.predictions.transform.dense.bias": torch.zeros(hidden),
            "text_encoder.cls.predictions.transform.LayerNorm.weight": torch.ones(hidden),
            "text_encoder.cls.predictions.transform.LayerNorm.bias": torch.zeros(hidden),
            "text_encoder.cls.predictions.decoder.weight": torch.randn(vocab, hidden),
        }
    )
    return {**renamed, **training_extras(state, prefix_bert=True)}


def write_beside(folder: Path, vocab_file: Path, config: AlbefConfig = TINY) -> None:
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    shutil.copyfile(vocab_file, folder / "vocab.txt")


def test_saved_checkpoint_reloads_with_identical_outputs(source, tmp_path):
    path = save_albef_checkpoint(source, tmp_path / "albef" / "flickr30k.pth")
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model", "config"}
    assert (path.parent / "config.json").is_file() and (path.parent / "vocab.txt").is_file()
    loaded = AlbefVictim.from_spec(str(path), family="tcl")
    assert loaded.family == "tcl" and loaded.name == f"tcl:{path}"
    assert loaded.config == TINY
    assert_same_outputs(loaded, source)


@pytest.mark.parametrize("layout", ["retrieval", "raw", "pretrain", "safetensors"])
def test_every_official_layout_loads_exactly(source, vocab_file, tmp_path, layout):
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    if layout == "retrieval":  # Retrieval.py: {'model', 'optimizer', 'config', 'epoch'}
        payload = {
            "model": {**state, **training_extras(state, prefix_bert=False)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]},
            "config": {"image_res": 32, "k_test": 128},
            "epoch": 5,
        }
    elif layout == "raw":
        payload = {**state, **training_extras(state, prefix_bert=False)}
    else:
        payload = pretrain_style(state)
    path = tmp_path / ("model.safetensors" if layout == "safetensors" else "model.pth")
    if layout == "safetensors":
        save_file(payload, str(path))
    else:
        torch.save(payload, path)
    write_beside(tmp_path, vocab_file)
    loaded = load_albef_checkpoint(path)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert_same_outputs(loaded, source)


def test_pos_embed_on_another_grid_is_interpolated(vocab_file, tmp_path):
    wide = tiny_model(AlbefConfig(**{**TINY.to_dict(), "image_size": 48}))  # 3x3 grid
    state = wide.state_dict()
    torch.save({"model": state}, tmp_path / "pretrain256.pth")
    write_beside(tmp_path, vocab_file)  # declares the 32-px (2x2) model
    loaded = load_albef_checkpoint(tmp_path / "pretrain256.pth")
    pos = loaded.model.visual_encoder.pos_embed
    assert pos.shape == (1, 1 + 2 * 2, TINY.vision_width)
    torch.testing.assert_close(pos, interpolate_pos_embed(state["visual_encoder.pos_embed"], 2))
    assert torch.equal(pos[:, 0], state["visual_encoder.pos_embed"][:, 0])  # CLS kept
    same = interpolate_pos_embed(state["visual_encoder.pos_embed"], 3)
    assert torch.equal(same, state["visual_encoder.pos_embed"])
    assert loaded.encode_image(images()).shape == (2, TINY.embed_dim)


def test_missing_weight_is_named(source, vocab_file, tmp_path):
    state = dict(source.model.state_dict())
    del state["text_encoder.encoder.layer.3.crossattention.self.key.weight"]
    torch.save({"model": state}, tmp_path / "model.pth")
    write_beside(tmp_path, vocab_file)
    with pytest.raises(RobustError, match=r"layer\.3\.crossattention\.self\.key\.weight"):
        load_albef_checkpoint(tmp_path / "model.pth")


def test_unknown_weight_is_an_error(source, vocab_file, tmp_path):
    state = {**source.model.state_dict(), "visual_encoder.head.weight": torch.zeros(2, 48)}
    torch.save(state, tmp_path / "model.pth")
    write_beside(tmp_path, vocab_file)
    with pytest.raises(RobustError, match=r"does not know: visual_encoder\.head\.weight"):
        load_albef_checkpoint(tmp_path / "model.pth")


def test_tiny_weights_without_config_json_fail_with_a_hint(source, vocab_file, tmp_path):
    torch.save(source.model.state_dict(), tmp_path / "model.pth")
    shutil.copyfile(vocab_file, tmp_path / "vocab.txt")
    with pytest.raises(RobustError, match="config.json") as error:
        load_albef_checkpoint(tmp_path / "model.pth")  # default real-size config
    assert "\n" not in str(error.value)


def test_pickle_checkpoint_needs_the_trust_flag(source, vocab_file, tmp_path):
    path = tmp_path / "model.pth"
    torch.save({"model": source.model.state_dict(), "args": argparse.Namespace(lr=1)}, path)
    write_beside(tmp_path, vocab_file)
    with pytest.raises(RobustError, match="trust_pickle=True"):
        load_albef_checkpoint(path)
    assert_same_outputs(load_albef_checkpoint(path, trust_pickle=True), source)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RobustError, match="is not a PyTorch checkpoint"):
        load_albef_checkpoint(path)


def test_missing_files_say_where_they_were_looked_for(source, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(albef, "hub_file_in_cache", lambda repo, filename: None)
    with pytest.raises(WeightsNotFoundError, match="nowhere.pth"):
        AlbefVictim.from_spec(str(tmp_path / "nowhere.pth"))
    torch.save(source.model.state_dict(), tmp_path / "model.pth")
    with pytest.raises(WeightsNotFoundError, match="bert-base-uncased/vocab.txt") as error:
        AlbefVictim.from_spec(str(tmp_path / "model.pth"))
    assert str(tmp_path / "vocab.txt") in str(error.value)


def test_relative_spec_path_resolves_under_robust_weights(source, tmp_path, monkeypatch):
    save_albef_checkpoint(source, tmp_path / "albef" / "mscoco.pth")
    monkeypatch.setenv("ROBUST_WEIGHTS", str(tmp_path))
    assert albef.albef_weights_present("albef/mscoco.pth")
    assert_same_outputs(albef.load_albef_spec("albef/mscoco.pth", "albef-coco"), source)


def test_tokens_are_cls_then_words_without_sep(source):
    ids, mask = source.tokenize(["A red circle", " ".join(["red"] * 40)])
    vocab = source.tokenizer
    assert ids.shape == mask.shape == (2, 30)
    assert (ids[:, 0] == vocab.cls_token_id).all()
    assert not (ids == vocab.sep_token_id).any()
    assert vocab.convert_ids_to_tokens(ids[0, :4].tolist()) == ["[CLS]", "a", "red", "circle"]
    assert mask[0].tolist() == [1] * 4 + [0] * 26 and (ids[0, 4:] == vocab.pad_token_id).all()
    assert mask[1].all()


def test_pre_caption_matches_albef_cleaning():
    assert pre_caption('A Dog-runs/fast, "on" the   GRASS!!') == "a dog runs fast on the grass"
    assert pre_caption("  (a) <person> ~walks~ #home:  ") == "a person walks home"
    assert pre_caption(" ".join(f"w{i}" for i in range(40))).split() == [f"w{i}" for i in range(30)]


def test_gradients_reach_pixels_through_itc_and_itm(source):
    for score in (
        lambda x: source.encode_image(x),
        lambda x: source.itm_logits(x, TEXTS),
    ):
        pixels = images().requires_grad_(True)
        out = score(pixels)
        (out * torch.randn_like(out)).sum().backward()
        assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def test_itm_scorer_from_cached_halves_equals_itm_logits(source):
    texts = [*TEXTS, "a small yellow star", "big shapes"]
    pixels = images(2)
    scorer = source.itm_scorer()
    with torch.no_grad():
        tokens = scorer.image_tokens(pixels)
        heads = scorer.image_inputs(tokens)
        hidden, mask = scorer.text_inputs(texts)
        # Re-ranking layout: image 1's cached keys/values against every caption.
        expanded = heads[1:2].expand(len(texts), *heads.shape[1:])
        reranked = scorer.match_logits(expanded, hidden, mask)
        direct = source.itm_logits(pixels[1:2].expand(len(texts), -1, -1, -1), texts)
        torch.testing.assert_close(scorer.head(expanded, hidden, mask)[:, 1], reranked)
        torch.testing.assert_close(reranked, direct)
        torch.testing.assert_close(
            source.image_features_from_tokens(tokens), source.encode_image(pixels)
        )
        torch.testing.assert_close(
            source.text_features_from_hidden(hidden), source.encode_text(texts)
        )
    assert reranked.shape == (len(texts),)
    assert tokens.shape == (2, 1 + 4, TINY.vision_width)


def test_unimodal_text_path_equals_transformers_bert(source):
    """An independent reference: ALBEF's text layers are plain BERT with the same key names."""
    from transformers import BertConfig, BertModel

    config = source.config
    bert = BertModel(
        BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.fusion_layer,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_position_embeddings,
            layer_norm_eps=config.layer_norm_eps,
        ),
        add_pooling_layer=False,
    ).eval()
    prefix = "text_encoder."
    text_layers = {
        key[len(prefix) :]: value
        for key, value in source.model.state_dict().items()
        if key.startswith(prefix) and "crossattention" not in key
    }
    for index in range(config.fusion_layer, config.num_hidden_layers):  # fusion layers
        text_layers = {k: v for k, v in text_layers.items() if f".layer.{index}." not in k}
    bert.load_state_dict(text_layers, strict=True)
    with torch.no_grad():
        hidden, mask = source.text_hidden(TEXTS)
        ids, _ = source.tokenize(TEXTS)
        reference = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(hidden, reference, rtol=1e-5, atol=1e-5)


def test_victim_contract(source):
    assert source.capabilities == {"itc", "itm"}
    assert source.retrieval_score_fusion == "itm" and source.resize_mode == "squash"
    assert source.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert not source.train().training and not source.model.training
    with torch.no_grad():
        embedded = source.encode_text(TEXTS)
    torch.testing.assert_close(embedded.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="32x32"):
        source.encode_image(images(size=48))


def test_config_json_rejects_unknown_keys():
    with pytest.raises(RobustError, match="hidden_dropout_prob"):
        AlbefConfig.from_dict({"hidden_dropout_prob": 0.1})
    with pytest.raises(RobustError, match="fusion_layer"):
        AlbefConfig.from_dict({"fusion_layer": 12})


def test_text_embeddings_skip_shared_padding_exactly(source):
    """encode_text drops the padding columns every caption shares; the 30-token result and
    the trimmed one agree, for short captions and for a batch with one long caption."""
    model = source.model
    for texts in (["a red circle", "two blue squares"], ["a dog", "word " * 40]):
        input_ids, mask = source.tokenize(texts)
        with torch.no_grad():
            full = model.text_features(model.text_encoder.text(input_ids, mask))
            trimmed = source.encode_text(texts)
        torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=1e-5)


def test_sizes_come_from_the_checkpoints_config_entry_without_config_json(source, tmp_path, caplog):
    path = save_albef_checkpoint(source, tmp_path / "albef" / "flickr30k.pth")
    (path.parent / "config.json").unlink()
    with caplog.at_level("INFO", logger="robust.victims.albef"):
        loaded = load_albef_checkpoint(path)
    assert loaded.config == TINY
    assert_same_outputs(loaded, source)
    assert "`config` entry" in loaded.config_source
    assert loaded.describe()["config_source"] == loaded.config_source
    said = [record.getMessage() for record in caplog.records]
    assert said == [f"{path}: model sizes from {loaded.config_source}"]


def test_config_json_beside_wins_and_is_named(source, tmp_path, caplog):
    path = save_albef_checkpoint(source, tmp_path / "albef" / "flickr30k.pth")
    with caplog.at_level("INFO", logger="robust.victims.albef"):
        loaded = load_albef_checkpoint(path)
    assert loaded.config_source == str(path.parent / "config.json")
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: model sizes from {path.parent / 'config.json'}"
    ]


def test_official_config_entry_gives_resolution_and_widths():
    """ALBEF/TCL save their training YAML as `config`; its size keys map onto AlbefConfig and
    BERT's sizes (in config_bert.json, only named there) stay at bert-base's."""
    official = {
        "image_res": 256,
        "vision_width": 768,
        "embed_dim": 256,
        "queue_size": 65536,
        "bert_config": "configs/config_bert.json",
    }
    config, where = albef.config_in_checkpoint({"model": {}, "config": official}, "ckpt.pth")
    assert config == AlbefConfig(image_size=256)
    assert where == "ckpt.pth (its `config` entry)"
    assert albef.config_in_checkpoint({"model": {}}, "ckpt.pth") == (None, "")
    assert albef.config_in_checkpoint({"config": {"epochs": 5}}, "ckpt.pth") == (None, "")
    with pytest.raises(RobustError, match="ckpt.pth"):
        albef.config_in_checkpoint({"config": {"image_res": 250}}, "ckpt.pth")  # not /16
