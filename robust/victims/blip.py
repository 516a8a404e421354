"""BLIP victims from Hugging Face folders or hub ids (transformers 4.57 and 5.x).

Retrieval (`BlipForImageTextRetrieval`) and captioning (`BlipForConditionalGeneration`) are
driven through their submodules rather than their `forward`, so that the suite reproduces
the original BLIP code (salesforce/BLIP) where the HF port differs from it:

- ITM puts the `[ENC]` token at position 0 of the text, as BLIP's retrieval evaluation does;
  the HF `forward` keeps `[CLS]` there (transformers issues #22732 and #25629).
- Re-ranked retrieval scores are ITM logit + ITC cosine (`retrieval_score_fusion`).
- The caption decoder reads `[DEC]` (the decoder's bos token) at position 0 and the prompt
  "a picture of "; the HF `forward` substitutes neither.

Token-id layout (bert-base-uncased + two added tokens): `[PAD]`=0, `[CLS]`=101, `[SEP]`=102,
`[DEC]`=30522 (text config `bos_token_id`), `[ENC]`=30523, text vocab 30524. The ids are read
from the tokenizer and config, never assumed, so toy models with a small vocabulary work too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from robust.errors import CapabilityError, RobustError
from robust.victims.base import ITM_MATCH_CLASS, ItmScorer, Victim
from robust.victims.hf_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from robust.victims.registry import register_victim_family
from robust.victims.weights import hf_vision_image_size, locate_hf_model_dir

ENC_TOKEN = "[ENC]"
DEC_TOKEN = "[DEC]"
# BLIP's retrieval text length (train_retrieval.py) and caption cleaning word limit.
TEXT_MAX_TOKENS = 35
CAPTION_MAX_WORDS = 30
# BLIP_Decoder.forward truncates prompt + caption to 40 tokens.
DECODER_MAX_TOKENS = 40
CAPTION_PROMPT = "a picture of "
# configs/caption_coco.yaml: beam search with 3 beams, 5 to 20 tokens (prompt included).
CAPTION_NUM_BEAMS = 3
CAPTION_MAX_LENGTH = 20
CAPTION_MIN_LENGTH = 5

RETRIEVAL_PREFIX = "hf-blip"
CAPTION_PREFIX = "hf-blip-cap"

BLIP_HUB_IDS: dict[str, str] = {
    "blip-itm-base-coco": "Salesforce/blip-itm-base-coco",
    "blip-itm-base-flickr": "Salesforce/blip-itm-base-flickr",
    "blip-itm-large-coco": "Salesforce/blip-itm-large-coco",
    "blip-itm-large-flickr": "Salesforce/blip-itm-large-flickr",
    "blip-cap-base": "Salesforce/blip-image-captioning-base",
    "blip-cap-large": "Salesforce/blip-image-captioning-large",
}
"""Registered BLIP names and the hub repositories their weights come from."""

BLIP_SPECS: dict[str, str] = {
    name: f"{CAPTION_PREFIX if name.startswith('blip-cap') else RETRIEVAL_PREFIX}:{hub_id}"
    for name, hub_id in BLIP_HUB_IDS.items()
}
"""Registered BLIP names and the spec strings that load them."""

_CAPTION_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")
_REPEATED_SPACE = re.compile(r"\s{2,}")


def clean_blip_caption(caption: str, max_words: int = CAPTION_MAX_WORDS) -> str:
    """BLIP's `pre_caption`: the text the model was trained and evaluated on.

    Lower-case, turn `.!"()*#:;~` into spaces (unlike ALBEF, commas, apostrophes, `?`, `-`
    and `/` stay), collapse runs of whitespace, strip, keep the first `max_words` words.
    """
    text = _CAPTION_PUNCTUATION.sub(" ", caption.lower())
    text = _REPEATED_SPACE.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    return text


@dataclass(frozen=True)
class BlipTokenIds:
    """The special token ids BLIP's text models rely on."""

    cls: int
    sep: int
    pad: int
    dec: int
    enc: int


def blip_token_ids(tokenizer, text_config) -> BlipTokenIds:
    """Special ids from the tokenizer and text config, checked against the vocabulary.

    `[DEC]` is the text config's `bos_token_id` (what HF `generate` uses). `[ENC]` is the
    tokenizer's `[ENC]` token when it knows one, otherwise `[DEC] + 1`: BLIP's
    `init_tokenizer` adds `[DEC]` then `[ENC]` to bert-base-uncased (30522, 30523).
    """
    vocab_size = int(text_config.vocab_size)
    dec = text_config.bos_token_id
    if dec is None:
        raise RobustError("BLIP text config has no bos_token_id ([DEC]); set it in config.json")
    enc = tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    if enc is None or enc == tokenizer.unk_token_id:
        enc = int(dec) + 1
    ids = BlipTokenIds(
        cls=int(tokenizer.cls_token_id),
        sep=int(tokenizer.sep_token_id),
        pad=int(tokenizer.pad_token_id),
        dec=int(dec),
        enc=int(enc),
    )
    too_big = {k: v for k, v in vars(ids).items() if not 0 <= v < vocab_size}
    if too_big:
        raise RobustError(
            f"BLIP token ids {too_big} fall outside the text vocabulary of {vocab_size}; the "
            "tokenizer and config.json do not belong together"
        )
    return ids


def read_blip_preprocess(folder: Path | None, config) -> dict:
    """Resolution (vision config), mean/std (preprocessor_config.json, CLIP's by default).

    BLIP squash-resizes to a square and never crops.
    """
    preprocess = {
        "size": int(config.vision_config.image_size),
        "mean": OPENAI_CLIP_MEAN,
        "std": OPENAI_CLIP_STD,
        "resize_mode": "squash",
    }
    path = Path(folder) / "preprocessor_config.json" if folder is not None else None
    if path is not None and path.is_file():
        values = json.loads(path.read_text())
        preprocess["mean"] = tuple(values.get("image_mean", OPENAI_CLIP_MEAN))
        preprocess["std"] = tuple(values.get("image_std", OPENAI_CLIP_STD))
    return preprocess


class _BlipVictim(Victim):
    """What BLIP's retrieval and captioning victims share: ViT, tokenizer, special ids."""

    family = "blip"
    resize_mode = "squash"

    def __init__(self, name: str, model, tokenizer, preprocess: dict) -> None:
        super().__init__(name, preprocess["size"], preprocess["mean"], preprocess["std"])
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.resize_mode = preprocess.get("resize_mode", "squash")
        self.token_ids = blip_token_ids(tokenizer, model.config.text_config)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """ViT output `[B, 1+P, D]` (CLS first) for pixel images; compute once, reuse often."""
        vision = self.model.vision_model(pixel_values=self.normalize(images))
        return vision.last_hidden_state

    def _tokenize(self, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise TypeError(f"{self.name}: expected a list of texts, got a single string")
        if len(texts) == 0:
            raise ValueError(f"{self.name}: no texts given")
        tokens = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        return tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)

    @staticmethod
    def _image_attention(image_tokens: torch.Tensor) -> torch.Tensor:
        return torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=image_tokens.device)


class BlipRetrievalVictim(_BlipVictim):
    """BLIP image-text retrieval: ITC embeddings, ITM with `[ENC]`, ITM+ITC re-ranking."""

    capabilities = frozenset({"itc", "itm"})
    retrieval_score_fusion = "itm+itc"

    def text_tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) of `[CLS] x [SEP]`, BLIP-cleaned, at most 35 tokens.

        These are the ITC tokens; `itm_from_tokens` swaps `[CLS]` for `[ENC]` itself.
        """
        return self._tokenize([clean_blip_caption(t) for t in texts], TEXT_MAX_TOKENS)

    def image_embedding_from_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """ITC image embedding from ViT tokens: normalize(vision_proj(CLS))."""
        return F.normalize(self.model.vision_proj(image_tokens[:, 0, :]), dim=-1)

    def text_embedding_from_tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """ITC text embedding: the unimodal text encoder (no cross-attention), projected CLS."""
        text = self.model.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(self.model.text_proj(text.last_hidden_state[:, 0, :]), dim=-1)

    def itm_scorer(self) -> BlipItmScorer:
        return BlipItmScorer(self)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_embedding_from_tokens(self.image_tokens(images))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text_embedding_from_tokens(*self.text_tokens(texts))

    def itm_from_tokens(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Match logits `[N]` for N (image tokens, text) pairs, row by row.

        Like BLIP's retrieval evaluation, position 0 of the text becomes `[ENC]` (the HF
        `forward` keeps `[CLS]`), the text encoder cross-attends to all image tokens and
        `itm_head(CLS)[:, 1]` (the "match" class) is returned. A re-ranker runs the ViT once
        per image (`image_tokens`) and gathers rows for each candidate pair.
        """
        return self.itm_head_from_tokens(image_tokens, input_ids, attention_mask)[
            :, ITM_MATCH_CLASS
        ]

    def itm_head_from_tokens(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Both ITM head outputs `[N, 2]` of `itm_from_tokens`' pairs (BLIP trains on both)."""
        if image_tokens.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"{self.name}: itm_from_tokens pairs rows, got {image_tokens.shape[0]} images "
                f"and {input_ids.shape[0]} texts"
            )
        encoder_ids = input_ids.clone()
        encoder_ids[:, 0] = self.token_ids.enc
        fused = self.model.text_encoder(
            input_ids=encoder_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=self._image_attention(image_tokens),
        )
        return self.model.itm_head(fused.last_hidden_state[:, 0, :])

    def itm_logits(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Pairwise match logits `[B]` for image i and text i (BLIP ITM with `[ENC]`)."""
        if len(texts) != images.shape[0]:
            raise ValueError(
                f"{self.name}: itm_logits pairs images and texts, got {images.shape[0]} images "
                f"and {len(texts)} texts"
            )
        return self.itm_from_tokens(self.image_tokens(images), *self.text_tokens(texts))

    @classmethod
    def from_spec(cls, spec: str, name: str | None = None) -> BlipRetrievalVictim:
        """Load a `save_pretrained` folder or a cached hub id (`hf-blip:<id or dir>`)."""
        from transformers import BlipForImageTextRetrieval

        display = name or f"{RETRIEVAL_PREFIX}:{spec}"
        model, tokenizer, folder = _load_hf_blip(BlipForImageTextRetrieval, spec, display)
        return cls(display, model, tokenizer, read_blip_preprocess(folder, model.config))


class BlipItmScorer(ItmScorer):
    """BLIP re-encodes the whole caption with cross-attention to the image, so what it can
    cache is each image's ViT tokens and each caption's token ids."""

    def __init__(self, victim: BlipRetrievalVictim) -> None:
        self.victim = victim

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.victim.image_tokens(images)

    def text_inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.victim.text_tokens(texts)

    def head(
        self, image_inputs: torch.Tensor, text_inputs: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.victim.itm_head_from_tokens(image_inputs, text_inputs, text_mask)


class BlipCaptionVictim(_BlipVictim):
    """BLIP captioning: beam-search captions and a differentiable teacher-forced loss."""

    capabilities = frozenset({"caption"})

    def __init__(
        self, name: str, model, tokenizer, preprocess: dict, prompt: str = CAPTION_PROMPT
    ) -> None:
        super().__init__(name, model, tokenizer, preprocess)
        self.prompt = prompt
        # BLIP's prompt_length: [CLS] (later [DEC]) plus the prompt's tokens, without [SEP].
        self.prompt_length = len(tokenizer(prompt)["input_ids"]) - 1

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """normalize(ViT CLS token): the captioner has no projection head, so image-embedding
        attacks use the raw vision CLS (the token the decoder cross-attends to first)."""
        return F.normalize(self.image_tokens(images)[:, 0, :], dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise CapabilityError(
            f"{self.name} (blip captioner) has no text encoder for ITC; use a BLIP retrieval "
            "model (hf-blip:...) for text embeddings, or caption_loss for captions"
        )

    def prompt_ids(self, batch_size: int) -> torch.Tensor:
        """Decoder start ids `[batch, prompt_length]`: `[DEC]` + prompt tokens, no `[SEP]`."""
        ids = self.tokenizer([self.prompt], return_tensors="pt")["input_ids"]
        ids[:, 0] = self.token_ids.dec
        return ids[:, :-1].repeat(batch_size, 1).to(self.device)

    def caption_tokens(
        self, texts: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, labels) for teacher forcing, as BLIP_Decoder trains.

        Text is prompt + cleaned caption, `[DEC] prompt caption [SEP]`, at most 40 tokens;
        labels are the ids with padding and the `[DEC]` + prompt positions set to -100, so
        only the caption words and the closing `[SEP]` are scored.
        """
        captions = [self.prompt + clean_blip_caption(t) for t in texts]
        input_ids, attention_mask = self._tokenize(captions, DECODER_MAX_TOKENS)
        input_ids[:, 0] = self.token_ids.dec
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        labels[:, : self.prompt_length] = -100
        return input_ids, attention_mask, labels

    def caption_loss_from_tokens(
        self,
        image_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample mean next-token cross-entropy `[B]` over the unmasked labels."""
        decoded = self.model.text_decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=self._image_attention(image_tokens),
        )
        logits = decoded.logits[:, :-1, :]
        targets = labels[:, 1:]
        token_loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="none",
        ).view(targets.shape)
        counted = (targets != -100).sum(dim=1).clamp(min=1)
        return token_loss.sum(dim=1) / counted

    def caption_loss(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Teacher-forced caption loss `[B]`, differentiable w.r.t. pixels.

        `[DEC]` at position 0, padding and the prompt tokens masked (as BLIP's training
        masks them), mean token cross-entropy per sample without label smoothing (BLIP
        trained with 0.1; the attack objective is the plain negative log-likelihood).
        """
        if len(texts) != images.shape[0]:
            raise ValueError(
                f"{self.name}: caption_loss pairs images and texts, got {images.shape[0]} "
                f"images and {len(texts)} texts"
            )
        return self.caption_loss_from_tokens(self.image_tokens(images), *self.caption_tokens(texts))

    @torch.no_grad()
    def generate_captions(
        self,
        images: torch.Tensor,
        *,
        num_beams: int = CAPTION_NUM_BEAMS,
        max_length: int = CAPTION_MAX_LENGTH,
        min_length: int = CAPTION_MIN_LENGTH,
    ) -> list[str]:
        """BLIP's beam-search captions (3 beams, 5..20 tokens with the prompt), prompt removed.

        Lengths count the `[DEC]` + prompt tokens, as in BLIP and HF `generate`.
        """
        image_tokens = self.image_tokens(images)
        prompt = self.prompt_ids(images.shape[0])
        outputs = self.model.text_decoder.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            encoder_hidden_states=image_tokens,
            encoder_attention_mask=self._image_attention(image_tokens),
            eos_token_id=self.token_ids.sep,
            pad_token_id=self.token_ids.pad,
            num_beams=num_beams,
            max_length=max_length,
            min_length=min_length,
            do_sample=False,
            repetition_penalty=1.0,
        )
        generated = outputs[:, prompt.shape[1] :]
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [text.strip() for text in texts]

    @classmethod
    def from_spec(cls, spec: str, name: str | None = None) -> BlipCaptionVictim:
        """Load a `save_pretrained` folder or a cached hub id (`hf-blip-cap:<id or dir>`)."""
        from transformers import BlipForConditionalGeneration

        display = name or f"{CAPTION_PREFIX}:{spec}"
        model, tokenizer, folder = _load_hf_blip(BlipForConditionalGeneration, spec, display)
        return cls(display, model, tokenizer, read_blip_preprocess(folder, model.config))


def _load_hf_blip(model_class, spec: str, display: str):
    """(fp32 model in eval mode, tokenizer, folder); missing weights are an error."""
    from transformers import AutoTokenizer

    folder = locate_hf_model_dir(spec, display)
    kind = model_class.__name__
    try:
        with _no_hf_progress_bars():
            model, info = model_class.from_pretrained(
                folder, local_files_only=True, output_loading_info=True
            )
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RobustError(f"cannot load {kind} from {folder}: {first_line}") from None
    missing = [key for key in info.get("missing_keys", ()) if not key.endswith("position_ids")]
    if missing:
        if model_class.__name__ == "BlipForImageTextRetrieval":
            hint = f"if it is a captioning model, load it with {CAPTION_PREFIX}:"
        else:
            hint = f"if it is a retrieval model, load it with {RETRIEVAL_PREFIX}:"
        raise RobustError(
            f"{folder} lacks {len(missing)} weights of {kind} (e.g. {', '.join(missing[:3])}); "
            f"{hint}"
        )
    return model.float().eval(), tokenizer, folder


@contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """transformers 5 draws loading/saving bars on stderr; library code stays quiet."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_blip_retrieval(arg: str, name: str | None = None) -> Victim:
    """Registry loader for `hf-blip:<hub id or folder>`."""
    return BlipRetrievalVictim.from_spec(arg, name)


def load_blip_captioner(arg: str, name: str | None = None) -> Victim:
    """Registry loader for `hf-blip-cap:<hub id or folder>`."""
    return BlipCaptionVictim.from_spec(arg, name)


# transformers' BlipVisionConfig default (every released BLIP), where config.json states none
BLIP_IMAGE_SIZE = 384


def _check_blip_spec(prefix: str):
    def check(arg: str, name: str | None = None) -> None:
        """The `save_pretrained` folder is here (its weights are read only when loading)."""
        locate_hf_model_dir(arg, name or f"{prefix}:{arg}")

    return check


def _blip_image_size(prefix: str):
    def image_size(arg: str, name: str | None = None) -> int:
        """The resolution its config.json states, read without loading weights."""
        return hf_vision_image_size(arg, name or f"{prefix}:{arg}", BLIP_IMAGE_SIZE)

    return image_size


def save_blip(
    model,
    tokenizer,
    folder: str | Path,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    image_size: int,
) -> Path:
    """Write a folder that `hf-blip:` / `hf-blip-cap:` load: weights, tokenizer, processor.

    The preprocessor config is a `BlipImageProcessor` one (squash-resize, no crop), so the
    folder also works with `BlipProcessor.from_pretrained`.
    """
    folder = Path(folder)
    native = int(model.config.vision_config.image_size)
    if int(image_size) != native:
        raise ValueError(f"image_size {image_size} differs from the vision config's {native}")
    folder.mkdir(parents=True, exist_ok=True)
    with _no_hf_progress_bars():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    _make_tokenizer_config_portable(folder)
    processor = {
        "image_processor_type": "BlipImageProcessor",
        "processor_class": "BlipProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": native, "width": native},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(v) for v in mean],
        "image_std": [float(v) for v in std],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return folder


def _make_tokenizer_config_portable(folder: Path) -> None:
    """Let a tokenizer saved by transformers 5 load on 4.57 as well.

    5.x writes added special tokens such as `[ENC]` as an `extra_special_tokens` list, which
    4.57 misreads as a dict and fails on; both read the older `additional_special_tokens`.
    """
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    values = json.loads(path.read_text())
    extra = values.get("extra_special_tokens")
    if isinstance(extra, list):
        del values["extra_special_tokens"]
        merged = list(values.get("additional_special_tokens") or [])
        merged += [token for token in extra if token not in merged]
        values["additional_special_tokens"] = merged
        path.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n")


for _prefix, _victim_class, _load in (
    (RETRIEVAL_PREFIX, BlipRetrievalVictim, load_blip_retrieval),
    (CAPTION_PREFIX, BlipCaptionVictim, load_blip_captioner),
):
    register_victim_family(
        _prefix,
        _victim_class,
        load=_load,
        check=_check_blip_spec(_prefix),
        image_size=_blip_image_size(_prefix),
    )
