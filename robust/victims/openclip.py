"""CLIP victims built with open_clip: OpenAI/LAION checkpoints and local `local-dir:` folders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from robust.checkpoints import check_checkpoint_file
from robust.errors import RobustError
from robust.victims.base import Victim
from robust.victims.registry import register_victim_family
from robust.victims.weights import (
    find_open_clip_hub_dir,
    find_open_clip_weights,
    missing_weights,
)

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
RANDOM_INIT = "random"
# the resolution of CLIP ViTs fine-tuned from OpenAI's (e.g. TeCoA/FARE on the hub), assumed
# for an hf-hub repository whose config is not on this machine
HUB_IMAGE_SIZE = 224


class OpenClipVictim(Victim):
    """A dual-encoder CLIP from open_clip; ITC only."""

    family = "clip"
    capabilities = frozenset({"itc"})
    retrieval_score_fusion = "itc"

    def __init__(self, name: str, model: torch.nn.Module, tokenizer, preprocess_cfg: dict) -> None:
        size = preprocess_cfg["size"]
        size = size if isinstance(size, int) else size[0]
        super().__init__(name, size, preprocess_cfg["mean"], preprocess_cfg["std"])
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.resize_mode = "squash" if preprocess_cfg.get("resize_mode") == "squash" else "crop"

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        features = self.model.encode_image(self.normalize(images))
        return F.normalize(features.float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        features = self.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1)

    @property
    def logit_scale(self) -> float:
        """The learned temperature, for turning similarities into classifier logits."""
        return float(self.model.logit_scale.detach().exp())

    @classmethod
    def from_spec(cls, spec: str, name: str | None = None) -> OpenClipVictim:
        """Load `local-dir:<folder>`, `hf-hub:<repo id>` (found locally, never downloaded) or
        `<arch>@<pretrained tag | checkpoint file | random>`."""
        import open_clip

        display = name or f"open_clip:{spec}"
        model_name, checkpoint = locate_open_clip(spec, display)
        model = open_clip.create_model(
            model_name, pretrained=None if checkpoint is None else str(checkpoint), device="cpu"
        )
        tokenizer = open_clip.get_tokenizer(model_name)
        preprocess_cfg = open_clip.get_model_preprocess_cfg(model)
        return cls(display, model, tokenizer, preprocess_cfg)


def locate_open_clip(spec: str, display: str) -> tuple[str, Path | None]:
    """(open_clip model name, checkpoint file or None) of an `open_clip:` spec, found without
    loading anything; a missing file or an unknown architecture is one error line."""
    import open_clip

    if spec.startswith(HF_HUB):
        repo_id = spec[len(HF_HUB) :]
        folder, looked, source = find_open_clip_hub_dir(repo_id, (display,))
        if folder is None:
            raise missing_weights(f"{display} ({spec})", looked, source)
        spec = LOCAL_DIR + str(folder)
    if spec.startswith(LOCAL_DIR):
        folder = Path(spec[len(LOCAL_DIR) :]).expanduser()
        check_local_dir(folder)
        return LOCAL_DIR + str(folder), None
    arch, _, tag = spec.partition("@")
    if arch not in open_clip.list_models():
        raise RobustError(
            f'open_clip has no architecture {arch!r}; run `python -c "import open_clip; '
            'print(open_clip.list_models())"` for the list'
        )
    if not tag:
        raise RobustError(
            f"open_clip spec {spec!r} names no weights; write {arch}@<tag or file> "
            f"(e.g. {arch}@openai) or {arch}@{RANDOM_INIT} for random initialisation"
        )
    if tag == RANDOM_INIT:
        return arch, None
    checkpoint, looked, source = find_open_clip_weights(arch, tag, (display,))
    if checkpoint is None:
        raise missing_weights(f"{display} ({arch}@{tag})", looked, source)
    return arch, checkpoint


def check_open_clip_spec(spec: str, name: str | None = None) -> None:
    """Everything an `open_clip:` spec will read is here and starts like weights, checked
    without loading them, so a run fails before any work instead of half-way."""
    model_name, checkpoint = locate_open_clip(spec, name or f"open_clip:{spec}")
    if model_name.startswith(LOCAL_DIR):
        files = check_local_dir(Path(model_name[len(LOCAL_DIR) :]))
    else:
        files = [] if checkpoint is None else [checkpoint]
    for file in files:
        check_checkpoint_file(file)


def open_clip_image_size(spec: str, name: str | None = None) -> int | None:
    """The resolution an `open_clip:` spec loads at, read without loading weights: from the
    folder's open_clip_config.json (local-dir, or an hf-hub repository found here), else from
    the architecture's config; an hf-hub repository not here counts as CLIP's 224."""
    if spec.startswith(HF_HUB):
        folder, _, _ = find_open_clip_hub_dir(spec[len(HF_HUB) :], (name or spec,))
        if folder is None:
            return HUB_IMAGE_SIZE
        spec = LOCAL_DIR + str(folder)
    if spec.startswith(LOCAL_DIR):
        path = Path(spec[len(LOCAL_DIR) :]).expanduser() / "open_clip_config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        size = (config.get("preprocess_cfg") or {}).get("size")
        if size is None:
            size = config.get("model_cfg", {}).get("vision_cfg", {}).get("image_size")
    else:
        import open_clip

        model_cfg = open_clip.get_model_config(spec.partition("@")[0])
        size = None if model_cfg is None else model_cfg.get("vision_cfg", {}).get("image_size")
    if size is None:
        return None
    return int(size if isinstance(size, int) else size[0])


def check_local_dir(folder: Path) -> list[Path]:
    """An open_clip local-dir needs its config and one weights file: say which is missing.
    Returns the weights files."""
    config = folder / "open_clip_config.json"
    if not folder.is_dir():
        raise RobustError(f"open_clip folder {folder} does not exist; pass an existing folder")
    if not config.is_file():
        raise RobustError(
            f"{folder} has no open_clip_config.json; an open_clip local-dir holds that file "
            "plus open_clip_model.safetensors"
        )
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as error:
        raise RobustError(
            f"{config} is not valid JSON ({error.msg}); re-export the model"
        ) from None
    weights = [p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".pth"}]
    if not weights:
        raise RobustError(
            f"{folder} has no weights file; expected open_clip_model.safetensors beside "
            "open_clip_config.json"
        )
    return weights


def save_local_dir(
    model: torch.nn.Module, model_cfg: dict, preprocess_cfg: dict, folder: Path
) -> Path:
    """Write an open_clip `local-dir:` folder (config JSON + safetensors) that open_clip reads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


register_victim_family(
    "open_clip",
    OpenClipVictim,
    load=OpenClipVictim.from_spec,
    check=check_open_clip_spec,
    image_size=open_clip_image_size,
)
