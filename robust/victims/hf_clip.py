"""CLIP victims from Hugging Face `CLIPModel` folders or hub ids (transformers 4.57 and 5.x).

Features go through the submodules (`vision_model` + `visual_projection`, `text_model` +
`text_projection`) because `get_image_features` changed its return type in transformers 5.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from robust.errors import RobustError
from robust.victims.base import Victim
from robust.victims.registry import register_victim_family
from robust.victims.weights import hf_vision_image_size, locate_hf_model_dir

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class HFClipVictim(Victim):
    """A transformers CLIPModel behind the Victim contract; ITC only."""

    family = "clip"
    capabilities = frozenset({"itc"})
    retrieval_score_fusion = "itc"

    def __init__(self, name: str, model, tokenizer, preprocess: dict) -> None:
        super().__init__(name, preprocess["size"], preprocess["mean"], preprocess["std"])
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.resize_mode = preprocess["resize_mode"]
        self.max_length = int(model.config.text_config.max_position_embeddings)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model(pixel_values=self.normalize(images))
        return F.normalize(self.model.visual_projection(vision.pooler_output), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        text = self.model.text_model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        return F.normalize(self.model.text_projection(text.pooler_output), dim=-1)

    @classmethod
    def from_spec(cls, spec: str, name: str | None = None) -> HFClipVictim:
        """Load a `save_pretrained` folder or a hub id already in the local cache."""
        from transformers import AutoTokenizer, CLIPModel

        display = name or f"hf-clip:{spec}"
        folder = locate_hf_model_dir(spec, display)
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0]
            raise RobustError(f"cannot load CLIPModel from {folder}: {first_line}") from None
        return cls(display, model, tokenizer, read_clip_preprocess(folder, model.config))


def read_clip_preprocess(folder: Path, config) -> dict:
    """Resolution, mean/std and resize policy from preprocessor_config.json (CLIP defaults)."""
    size = int(config.vision_config.image_size)
    preprocess = {
        "size": size,
        "mean": OPENAI_CLIP_MEAN,
        "std": OPENAI_CLIP_STD,
        "resize_mode": "crop",
    }
    path = Path(folder) / "preprocessor_config.json"
    if path.is_file():
        values = json.loads(path.read_text())
        preprocess["mean"] = tuple(values.get("image_mean", OPENAI_CLIP_MEAN))
        preprocess["std"] = tuple(values.get("image_std", OPENAI_CLIP_STD))
        if values.get("do_center_crop") is False:
            preprocess["resize_mode"] = "squash"
    return preprocess


# transformers' CLIPVisionConfig default, used where a folder's config.json states none
HF_CLIP_IMAGE_SIZE = 224
SPEC_PREFIX = "hf-clip"


def check_hf_clip_spec(arg: str, name: str | None = None) -> None:
    """The `save_pretrained` folder is here (its weights are read only when loading)."""
    locate_hf_model_dir(arg, name or f"{SPEC_PREFIX}:{arg}")


def hf_clip_image_size(arg: str, name: str | None = None) -> int:
    """The resolution its config.json states, read without loading weights."""
    return hf_vision_image_size(arg, name or f"{SPEC_PREFIX}:{arg}", HF_CLIP_IMAGE_SIZE)


register_victim_family(
    SPEC_PREFIX,
    HFClipVictim,
    load=HFClipVictim.from_spec,
    check=check_hf_clip_spec,
    image_size=hf_clip_image_size,
)
