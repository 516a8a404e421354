"""Find checkpoint files on this machine; never download.

Order: an explicit path, then `$ROBUST_WEIGHTS/<folder>/`, then the Hugging Face cache.
When nothing is found the error names every place looked at and where the weights come
from, so the user can fetch them on a machine with network access.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from robust.errors import WeightsNotFoundError

WEIGHTS_ENV = "ROBUST_WEIGHTS"
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def weights_root() -> Path | None:
    """The user's weights folder from `$ROBUST_WEIGHTS`, if set."""
    value = os.environ.get(WEIGHTS_ENV)
    return Path(value).expanduser() if value else None


def hub_file_in_cache(repo_id: str, filename: str) -> Path | None:
    """A file of a hub repository if it is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    return Path(found) if isinstance(found, str) else None


def hub_snapshot_in_cache(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub repository (needs its config.json)."""
    config = hub_file_in_cache(repo_id, "config.json")
    return config.parent if config is not None else None


def _candidate_folders(folder_names: tuple[str, ...]) -> list[Path]:
    root = weights_root()
    return [] if root is None else [root / name for name in folder_names]


def find_open_clip_weights(
    arch: str, tag: str, folder_names: tuple[str, ...]
) -> tuple[Path | None, list[str], str]:
    """Locate open_clip weights for (arch, tag) without downloading.

    Returns (file or None, places looked, where the weights come from).
    """
    import open_clip

    looked: list[str] = []
    explicit = Path(tag).expanduser()
    if explicit.suffix in {".pt", ".pth", ".bin", ".safetensors"} or os.sep in tag:
        looked.append(str(explicit))
        return (explicit if explicit.is_file() else None), looked, "the path you gave"

    pretrained = open_clip.get_pretrained_cfg(arch, tag)
    if not pretrained:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise WeightsNotFoundError(
            f"open_clip has no pretrained tag {tag!r} for {arch!r} (known tags: {known}); "
            "pass a tag it knows or a path to a checkpoint file"
        )
    hub = pretrained.get("hf_hub", "").rstrip("/")
    repo_id = hub if hub.count("/") == 1 else os.path.dirname(hub)
    source = f"huggingface.co/{repo_id}" if repo_id else pretrained.get("url", "open_clip")
    folders = (*folder_names, repo_id.split("/")[-1]) if repo_id else folder_names
    for folder in _candidate_folders(folders):
        for filename in OPEN_CLIP_FILES:
            looked.append(str(folder / filename))
            if (folder / filename).is_file():
                return folder / filename, looked, source
    if repo_id:
        for filename in OPEN_CLIP_FILES:
            looked.append(f"HF cache {repo_id}/{filename}")
            cached = hub_file_in_cache(repo_id, filename)
            if cached is not None:
                return cached, looked, source
    return None, looked, source


def find_open_clip_hub_dir(
    repo_id: str, folder_names: tuple[str, ...] = ()
) -> tuple[Path | None, list[str], str]:
    """Locate an open_clip `hf-hub:` repository (open_clip_config.json plus weights) in
    `$ROBUST_WEIGHTS` or the Hugging Face cache, without downloading."""
    looked: list[str] = []
    source = f"huggingface.co/{repo_id}"

    def complete(folder: Path) -> bool:
        return (folder / "open_clip_config.json").is_file() and any(
            (folder / filename).is_file() for filename in OPEN_CLIP_FILES
        )

    for folder in _candidate_folders((*folder_names, repo_id.split("/")[-1])):
        looked.append(str(folder))
        if complete(folder):
            return folder, looked, source
    looked.append(f"HF cache {repo_id}")
    config = hub_file_in_cache(repo_id, "open_clip_config.json")
    if config is not None and complete(config.parent):
        return config.parent, looked, source
    return None, looked, source


def find_hf_model_dir(
    model_id: str, folder_names: tuple[str, ...] = ()
) -> tuple[Path | None, list[str], str]:
    """Locate a `save_pretrained` folder for a hub id or local path, without downloading."""
    looked: list[str] = []
    local = Path(model_id).expanduser()
    if local.is_dir() or model_id.startswith((".", "/", "~")):
        looked.append(str(local))
        found = local if (local / "config.json").is_file() else None
        return found, looked, "the folder you gave"
    names = (*folder_names, model_id.replace("/", "--"))
    for folder in _candidate_folders(names):
        looked.append(str(folder))
        if (folder / "config.json").is_file():
            return folder, looked, f"huggingface.co/{model_id}"
    looked.append(f"HF cache {model_id}")
    return hub_snapshot_in_cache(model_id), looked, f"huggingface.co/{model_id}"


def hf_vision_image_size(model_id: str, display: str, default: int) -> int:
    """The vision resolution a `save_pretrained` folder's config.json states, read without
    loading weights; `default` (the model class's config default) where the folder or the
    key is not here."""
    try:
        folder, _, _ = find_hf_model_dir(model_id, (display,))
    except ValueError:  # neither a folder nor a valid hub id
        return default
    if folder is None:
        return default
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return default
    vision = config.get("vision_config") if isinstance(config, dict) else None
    size = vision.get("image_size", default) if isinstance(vision, dict) else default
    return int(size)


def locate_hf_model_dir(model_id: str, display: str) -> Path:
    """The `save_pretrained` folder of a hub id or local path; missing is one error line."""
    try:
        folder, looked, source = find_hf_model_dir(model_id, (display,))
    except ValueError:  # neither a folder nor a valid hub id (huggingface_hub's HFValidationError)
        folder, looked, source = None, [model_id], "nowhere: not a folder and not a hub id"
    if folder is None:
        raise missing_weights(display, looked, source)
    return folder


def missing_weights(what: str, looked: list[str], source: str) -> WeightsNotFoundError:
    """The one-line error for weights that are not here."""
    places = "; ".join(looked) if looked else "nowhere (set $ROBUST_WEIGHTS)"
    return WeightsNotFoundError(
        f"weights for {what} not found (looked in: {places}); they come from {source}: "
        f"download them on a machine with network access and put them in "
        f"${WEIGHTS_ENV}/<folder> or the Hugging Face cache"
    )
