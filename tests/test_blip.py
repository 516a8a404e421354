"""BLIP victims: tiny random HF models saved in the real folder formats and loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robust.errors import CapabilityError, RobustError, WeightsNotFoundError
from robust.victims.blip import (
    BLIP_HUB_IDS,
    BLIP_SPECS,
    CAPTION_PROMPT,
    OPENAI_CLIP_MEAN,
    BlipCaptionVictim,
    BlipRetrievalVictim,
    blip_token_ids,
    clean_blip_caption,
    read_blip_preprocess,
    save_blip,
)

WORDS = (
    "a picture of red blue green yellow circle square triangle star small big large "
    "on the left right top bottom and with next to above below shape"
).split()
TOY_MEAN = (0.5, 0.45, 0.4)
TOY_STD = (0.25, 0.26, 0.27)
IMAGE_SIZE = 32
CAPTIONS = ["a red circle on the left", "a small blue square above a big green star"]


def make_tokenizer(folder: Path):
    """A BERT WordPiece tokenizer with BLIP's additions: [DEC] as bos, then [ENC]."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(specials + WORDS) + "\n")
    # from_pretrained on a vocab.txt folder works on 4.57 and 5.x; in 5.x the constructor
    # ignores `vocab_file=`.
    tokenizer = BertTokenizer.from_pretrained(str(folder))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def tiny_config(tokenizer):
    """The tiny BlipConfig from research/victims.md 5.2, with ids from the tokenizer."""
    from transformers import BlipConfig

    sep = tokenizer.sep_token_id
    return BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "encoder_hidden_size": 48,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 48,
            "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": sep,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": sep,
        },
        vision_config={
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
            "hidden_size": 48,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        image_text_hidden_size=16,
        projection_dim=16,
    )


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("blip-vocab"))


@pytest.fixture(scope="module")
def retrieval_model(tokenizer):
    from transformers import BlipForImageTextRetrieval

    torch.manual_seed(0)
    return BlipForImageTextRetrieval(tiny_config(tokenizer)).eval()


@pytest.fixture(scope="module")
def caption_model(tokenizer):
    from transformers import BlipForConditionalGeneration

    torch.manual_seed(1)
    return BlipForConditionalGeneration(tiny_config(tokenizer)).eval()


@pytest.fixture(scope="module")
def retrieval_dir(retrieval_model, tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blip-itm")
    return save_blip(
        retrieval_model, tokenizer, folder, mean=TOY_MEAN, std=TOY_STD, image_size=IMAGE_SIZE
    )


@pytest.fixture(scope="module")
def caption_dir(caption_model, tokenizer, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("blip-cap")
    return save_blip(
        caption_model, tokenizer, folder, mean=TOY_MEAN, std=TOY_STD, image_size=IMAGE_SIZE
    )


def bin_only_folder(model, tokenizer, folder: Path) -> Path:
    """Like Salesforce/blip-itm-base-flickr: config + pytorch_model.bin, no safetensors."""
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    assert not list(folder.glob("*.safetensors"))
    return folder


@pytest.fixture(scope="module")
def retrieval(retrieval_dir) -> BlipRetrievalVictim:
    return BlipRetrievalVictim.from_spec(str(retrieval_dir), "toy-blip")


@pytest.fixture(scope="module")
def captioner(caption_dir) -> BlipCaptionVictim:
    return BlipCaptionVictim.from_spec(str(caption_dir), "toy-blip-cap")


def word_ids(*words: str) -> list[int]:
    """Ids of vocabulary words (after the five BERT specials)."""
    return [5 + WORDS.index(word) for word in words]


def pixels(count: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def in_memory(victim_class, model, tokenizer):
    preprocess = read_blip_preprocess(None, model.config)
    preprocess.update(mean=TOY_MEAN, std=TOY_STD)
    return victim_class("in-memory", model, tokenizer, preprocess)


def test_clean_blip_caption_follows_blip_pre_caption():
    assert clean_blip_caption("A Dog, running!  (fast)") == "a dog, running fast"
    assert clean_blip_caption("well-known 'cats'? on/off") == "well-known 'cats'? on/off"
    long_caption = " ".join(f"w{i}" for i in range(40))
    assert clean_blip_caption(long_caption).split() == [f"w{i}" for i in range(30)]


def test_registered_names_and_specs():
    assert BLIP_HUB_IDS["blip-itm-base-flickr"] == "Salesforce/blip-itm-base-flickr"
    assert BLIP_HUB_IDS["blip-cap-large"] == "Salesforce/blip-image-captioning-large"
    assert BLIP_SPECS["blip-itm-large-coco"] == "hf-blip:Salesforce/blip-itm-large-coco"
    assert BLIP_SPECS["blip-cap-base"] == "hf-blip-cap:Salesforce/blip-image-captioning-base"


def test_token_ids_follow_blip_layout(tokenizer, retrieval_model, tmp_path):
    ids = blip_token_ids(tokenizer, retrieval_model.config.text_config)
    vocab = len(WORDS) + 5
    assert (ids.pad, ids.cls, ids.sep) == (0, 2, 3)
    assert (ids.dec, ids.enc) == (vocab, vocab + 1)  # like 30522, 30523 after bert's 30522
    assert tokenizer.convert_tokens_to_ids("[ENC]") == ids.enc
    # A tokenizer that does not know [ENC] (as a stock bert vocab) falls back to [DEC] + 1.
    from transformers import BertTokenizer

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS))
    plain = BertTokenizer.from_pretrained(str(tmp_path))
    assert blip_token_ids(plain, retrieval_model.config.text_config).enc == vocab + 1


def test_retrieval_victim_facts(retrieval):
    assert retrieval.family == "blip"
    assert retrieval.capabilities == {"itc", "itm"}
    assert retrieval.retrieval_score_fusion == "itm+itc"
    assert retrieval.resize_mode == "squash"
    assert retrieval.image_size == IMAGE_SIZE
    assert retrieval.mean == pytest.approx(TOY_MEAN)
    assert retrieval.std == pytest.approx(TOY_STD)
    input_ids, mask = retrieval.text_tokens(["A red circle.", "blue"])
    assert input_ids[0].tolist() == [2, *word_ids("a", "red", "circle"), 3]
    assert input_ids[1, 2].item() == 3 and mask[1].tolist() == [1, 1, 1, 0, 0]
    long_ids, _ = retrieval.text_tokens([" ".join(["red"] * 29)])
    assert long_ids.shape[1] == 31  # 29 words + [CLS] + [SEP], under the 35-token cap
    capped_ids, _ = retrieval.text_tokens(["red " * 30 + "blue " * 30])
    assert capped_ids.shape[1] == 32  # cleaned to 30 words first


def test_retrieval_round_trips(retrieval, retrieval_model, tokenizer, tmp_path):
    reference = in_memory(BlipRetrievalVictim, retrieval_model, tokenizer)
    from_bin = BlipRetrievalVictim.from_spec(
        str(bin_only_folder(retrieval_model, tokenizer, tmp_path)), "toy-blip-bin"
    )
    images = pixels()
    with torch.no_grad():
        expected = (
            reference.encode_image(images),
            reference.encode_text(CAPTIONS),
            reference.itm_logits(images, CAPTIONS),
        )
        for victim in (retrieval, from_bin):
            got = (
                victim.encode_image(images),
                victim.encode_text(CAPTIONS),
                victim.itm_logits(images, CAPTIONS),
            )
            for a, b in zip(got, expected, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert from_bin.mean == pytest.approx(OPENAI_CLIP_MEAN)  # no preprocessor_config.json


def test_itc_equals_hf_use_itm_head_false(retrieval, retrieval_model):
    images = pixels(3)
    with torch.no_grad():
        similarity = retrieval.encode_image(images) @ retrieval.encode_text(CAPTIONS).T
        input_ids, mask = retrieval.text_tokens(CAPTIONS)
        hf = retrieval_model(
            input_ids=input_ids,
            pixel_values=retrieval.normalize(images),
            attention_mask=mask,
            use_itm_head=False,
        ).itm_score
    assert similarity.shape == (3, 2)
    torch.testing.assert_close(similarity, hf, rtol=0, atol=1e-5)
    norms = retrieval.encode_text(CAPTIONS).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(2))


def test_itm_puts_enc_token_first(retrieval, retrieval_model):
    model = retrieval_model
    images = pixels()
    enc = retrieval.token_ids.enc
    with torch.no_grad():
        input_ids, mask = retrieval.text_tokens(CAPTIONS)
        assert (input_ids[:, 0] == retrieval.token_ids.cls).all()
        enc_ids = input_ids.clone()
        enc_ids[:, 0] = enc
        image_embeds = model.vision_model(pixel_values=retrieval.normalize(images))[0]
        fused = model.text_encoder(
            input_ids=enc_ids,
            attention_mask=mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long),
        )[0]
        manual = model.itm_head(fused[:, 0, :])[:, 1]
        got = retrieval.itm_logits(images, CAPTIONS)
        normalized = retrieval.normalize(images)
        hf_enc = model(input_ids=enc_ids, pixel_values=normalized, attention_mask=mask)
        hf_cls = model(input_ids=input_ids, pixel_values=normalized, attention_mask=mask)
        # Batched re-use: ViT once, rows gathered per candidate pair.
        tokens = retrieval.image_tokens(images)
        pairs = retrieval.itm_from_tokens(tokens[[1, 0, 1]], input_ids[[0, 0, 1]], mask[[0, 0, 1]])
        scorer = retrieval.itm_scorer()  # the re-ranker's cached halves: ViT tokens and ids
        cached_ids, cached_mask = scorer.text_inputs(CAPTIONS)
        cached = scorer.match_logits(
            scorer.image_inputs(scorer.image_tokens(images))[[1, 0, 1]],
            cached_ids[[0, 0, 1]],
            cached_mask[[0, 0, 1]],
        )
        crossed = torch.stack(
            [retrieval.itm_logits(images[[i]], [CAPTIONS[j]])[0] for i, j in ((1, 0), (0, 0))]
        )
    torch.testing.assert_close(got, manual, rtol=0, atol=1e-6)
    torch.testing.assert_close(got, hf_enc.itm_score[:, 1], rtol=0, atol=1e-5)
    assert not torch.allclose(got, hf_cls.itm_score[:, 1], atol=1e-4)  # HF keeps [CLS]
    assert (input_ids[:, 0] == retrieval.token_ids.cls).all()  # callers' ids untouched
    torch.testing.assert_close(pairs[:2], crossed, rtol=0, atol=1e-5)
    torch.testing.assert_close(pairs[2], got[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(cached, pairs, rtol=0, atol=0)


def weighted_sum(output: torch.Tensor) -> torch.Tensor:
    """A scalar with gradient everywhere (a plain sum after LayerNorm has none)."""
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(7))
    return (output * weights).sum()


@pytest.mark.parametrize("path", ["itc", "itm", "caption"])
def test_gradients_reach_pixels(path, retrieval, captioner):
    images = pixels().requires_grad_(True)
    if path == "itc":
        output = retrieval.encode_image(images)
    elif path == "itm":
        output = retrieval.itm_logits(images, CAPTIONS)
    else:
        output = captioner.caption_loss(images, CAPTIONS)
    weighted_sum(output).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_caption_victim_facts(captioner):
    assert captioner.family == "blip"
    assert captioner.capabilities == {"caption"}
    assert captioner.resize_mode == "squash"
    with pytest.raises(CapabilityError, match="no text encoder"):
        captioner.encode_text(["a red circle"])
    with pytest.raises(CapabilityError):
        captioner.itm_logits(pixels(), CAPTIONS)
    embedding = captioner.encode_image(pixels())
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
    assert embedding.shape == (2, 48)


def test_caption_tokens_follow_blip_decoder(captioner):
    ids = captioner.token_ids
    input_ids, mask, labels = captioner.caption_tokens(["A red circle!", "blue"])
    prompt = word_ids("a", "picture", "of")
    assert captioner.prompt_length == 4
    assert input_ids[0].tolist() == [ids.dec, *prompt, *word_ids("a", "red", "circle"), ids.sep]
    assert labels[0, :4].tolist() == [-100] * 4
    assert labels[0, 4:].tolist() == input_ids[0, 4:].tolist()
    assert labels[1].tolist()[4:] == [*word_ids("blue"), ids.sep, -100, -100]
    assert mask[1].tolist() == [1] * 6 + [0] * 2
    assert captioner.prompt_ids(2).tolist() == [[ids.dec, *prompt]] * 2


def test_caption_loss_matches_hf_loss_and_ignores_padding(captioner, caption_model):
    images = pixels()
    with torch.no_grad():
        batch = captioner.caption_loss(images, CAPTIONS)
        alone = captioner.caption_loss(images[:1], CAPTIONS[:1])
        input_ids, mask, labels = captioner.caption_tokens(CAPTIONS[:1])
        hf = caption_model(
            pixel_values=captioner.normalize(images[:1]),
            input_ids=input_ids,
            attention_mask=mask,
            labels=labels,
        ).loss
    assert batch.shape == (2,)
    # The first caption is padded in the batch (the second is longer): same loss alone.
    torch.testing.assert_close(batch[0], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone[0], hf, rtol=0, atol=1e-5)
    assert batch[0] != batch[1]


def test_generate_captions_follows_blip_and_strips_prompt(captioner, caption_model):
    images = pixels(3)
    captions = captioner.generate_captions(images)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    # HF's own generate with BLIP's prompt ids ([CLS] prompt [SEP] -> [DEC] prompt).
    prompt_ids = captioner.tokenizer([CAPTION_PROMPT] * 3, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        outputs = caption_model.generate(
            pixel_values=captioner.normalize(images),
            input_ids=prompt_ids,
            num_beams=3,
            max_length=20,
            min_length=5,
        )
    full = captioner.tokenizer.batch_decode(outputs, skip_special_tokens=True)
    for text, caption in zip(full, captions, strict=True):
        assert text.startswith(CAPTION_PROMPT.strip())
        assert text[len(CAPTION_PROMPT) :].strip() == caption
        assert 1 <= len(outputs[0]) - 4 <= 16


def test_caption_round_trips(captioner, caption_model, tokenizer, tmp_path):
    reference = in_memory(BlipCaptionVictim, caption_model, tokenizer)
    from_bin = BlipCaptionVictim.from_spec(
        str(bin_only_folder(caption_model, tokenizer, tmp_path)), "toy-blip-cap-bin"
    )
    from_bin.pixel_mean.copy_(reference.pixel_mean)  # the .bin folder has CLIP's mean/std
    from_bin.pixel_std.copy_(reference.pixel_std)
    images = pixels()
    with torch.no_grad():
        expected = reference.caption_loss(images, CAPTIONS)
        expected_captions = reference.generate_captions(images)
        for victim in (captioner, from_bin):
            torch.testing.assert_close(
                victim.caption_loss(images, CAPTIONS), expected, rtol=0, atol=1e-6
            )
            assert victim.generate_captions(images) == expected_captions


def test_save_blip_writes_blip_processor_config(retrieval_dir):
    processor = json.loads((retrieval_dir / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "BlipImageProcessor"
    assert processor["size"] == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    assert processor["image_mean"] == pytest.approx(TOY_MEAN)
    assert "do_center_crop" not in processor and "crop_size" not in processor
    assert (retrieval_dir / "config.json").is_file()


def test_saved_tokenizer_loads_on_transformers_4_57(retrieval_dir):
    """5.x writes `extra_special_tokens` as a list, which 4.57 cannot read."""
    config = json.loads((retrieval_dir / "tokenizer_config.json").read_text())
    assert not isinstance(config.get("extra_special_tokens"), list)
    assert "[ENC]" in config["additional_special_tokens"]


def test_loading_prints_nothing(retrieval_dir, capfd):
    capfd.readouterr()
    BlipRetrievalVictim.from_spec(str(retrieval_dir))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_save_blip_refuses_wrong_image_size(retrieval_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        save_blip(retrieval_model, tokenizer, tmp_path, mean=TOY_MEAN, std=TOY_STD, image_size=64)


def test_missing_folder_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ROBUST_WEIGHTS", raising=False)
    for victim_class in (BlipRetrievalVictim, BlipCaptionVictim):
        with pytest.raises(WeightsNotFoundError) as error:
            victim_class.from_spec(str(tmp_path / "nowhere"))
        assert "\n" not in str(error.value) and "nowhere" in str(error.value)
    with pytest.raises(WeightsNotFoundError, match="huggingface.co/Salesforce/blip-itm-base-coco"):
        BlipRetrievalVictim.from_spec("Salesforce/blip-itm-base-coco", "blip-itm-base-coco")


def test_wrong_model_kind_is_an_error_not_random_weights(retrieval_dir, caption_dir):
    with pytest.raises(RobustError, match="hf-blip-cap:") as error:
        BlipRetrievalVictim.from_spec(str(caption_dir))
    assert "\n" not in str(error.value)
    with pytest.raises(RobustError, match="hf-blip:"):
        BlipCaptionVictim.from_spec(str(retrieval_dir))
