"""Karpathy-split retrieval data in the ALBEF json layout: real Flickr30k/MSCOCO and exports.

One reader serves both worlds. The real test splits (`flickr30k_test.json`,
`coco_test.json` from the ALBEF data release) and the embedded world, once exported with
`export_dataset`, are read by the same `load_karpathy`, so nothing downstream can tell them
apart. The file is a JSON list of ``{"image": "relative/path.jpg", "caption": [str, ...]}``;
images and captions keep file order.

Bad input fails with a `DatasetError` carrying one line that names the problem, the first
few offenders and the fix, after checking every entry, so a broken file is fixed in one go.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from robust.data.dataset import CaptionDataset, FileImages
from robust.errors import RobustError
from robust.progress import Progress, ensure_progress

__all__ = [
    "LABELS_FILE",
    "DatasetError",
    "export_dataset",
    "load_karpathy",
    "load_labels",
]

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
_SHOWN_OFFENDERS = 5
_OFFENDER_CHARS = 80
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME_CHARS = 150


class DatasetError(RobustError, ValueError):
    """A dataset that cannot be used as given; the message is one line with the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))


def _short(text: str) -> str:
    """One offender as a short single-line string."""
    if len(text) > _OFFENDER_CHARS:
        return text[: _OFFENDER_CHARS - 3] + "..."
    return text


def _offender_list(offenders: Sequence[str]) -> str:
    """The first few offenders, then how many more there are."""
    shown = ", ".join(_short(item) for item in offenders[:_SHOWN_OFFENDERS])
    hidden = len(offenders) - _SHOWN_OFFENDERS
    return f"{shown} and {hidden} more" if hidden > 0 else shown


def _fail(where: Path, problem: str, offenders: Sequence[str], fix: str) -> DatasetError:
    count = len(offenders)
    return DatasetError(f"{where}: {problem} ({count}): {_offender_list(offenders)}; fix: {fix}")


def _read_json(path: Path, what: str, fix: str) -> Any:
    """Parse a json file or say in one line why it cannot be read."""
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}; fix: {fix}")
    if not path.is_file():
        raise DatasetError(f"{what} is not a file: {path}; fix: {fix}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{what} is not UTF-8 text: {path} (byte {error.start}); fix: {fix}"
        ) from None
    except OSError as error:
        raise DatasetError(
            f"{what} cannot be read: {path} ({error.strerror}); fix: {fix}"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(
            f"{what} is not valid JSON: {path} (line {error.lineno} column {error.colno}:"
            f" {error.msg}); fix: {fix}"
        ) from None


def _escapes_root(relative: str) -> bool:
    """Whether a relative path climbs out of its root with `..` (either slash style)."""
    normal = posixpath.normpath(relative.replace("\\", "/"))
    return normal == ".." or normal.startswith("../")


def _is_absolute(path: str) -> bool:
    return (
        PurePosixPath(path).is_absolute()
        or PureWindowsPath(path).is_absolute()
        or path.startswith(("/", "\\"))
        or bool(PureWindowsPath(path).drive)
    )


def _parse_entries(entries: list[Any], annotation: Path) -> tuple[list[str], list[list[str]]]:
    """Image paths and caption lists of every entry, or one error naming all offenders."""
    not_objects: list[str] = []
    missing_keys: list[str] = []
    bad_types: list[str] = []
    no_captions: list[str] = []
    empty_captions: list[str] = []
    paths: list[str] = []
    caption_lists: list[list[str]] = []
    for position, entry in enumerate(entries):
        label = f"entry [{position}]"
        if not isinstance(entry, dict):
            not_objects.append(f"{label} is {type(entry).__name__}")
            continue
        absent = [key for key in ("image", "caption") if key not in entry]
        if absent:
            missing_keys.append(f"{label} lacks {'/'.join(repr(k) for k in absent)}")
            continue
        image, caption = entry["image"], entry["caption"]
        if not isinstance(image, str) or not image.strip():
            bad_types.append(f"{label} 'image' is {image!r}")
            continue
        captions = [caption] if isinstance(caption, str) else caption
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            bad_types.append(f"{label} 'caption' is {type(caption).__name__} {caption!r}")
            continue
        if not captions:
            no_captions.append(f"{label} {image!r}")
        for number, text in enumerate(captions):
            if not text.strip():
                empty_captions.append(f"{label} caption {number} {text!r}")
        paths.append(image)
        caption_lists.append(captions)

    shape_fix = 'make every entry an object {"image": "relative/path.jpg", "caption": [str, ...]}'
    if not_objects:
        raise _fail(annotation, "entries that are not objects", not_objects, shape_fix)
    if missing_keys:
        raise _fail(annotation, "entries lacking required keys", missing_keys, shape_fix)
    if bad_types:
        raise _fail(
            annotation,
            "entries with values of the wrong type",
            bad_types,
            "'image' must be a non-empty path string and 'caption' a string or list of strings",
        )
    if no_captions:
        raise _fail(
            annotation,
            "entries with no captions",
            no_captions,
            "give every image at least one caption or drop the entry",
        )
    if empty_captions:
        raise _fail(
            annotation,
            "empty or whitespace-only captions",
            empty_captions,
            "write the missing captions or remove them from their lists",
        )
    return paths, caption_lists


def _check_paths(paths: list[str], annotation: Path) -> None:
    """Reject paths that could read outside the image root, and ambiguous duplicates."""
    absolute = [repr(p) for p in paths if _is_absolute(p)]
    if absolute:
        raise _fail(
            annotation,
            "absolute image paths",
            absolute,
            "make 'image' paths relative to the image root and pass that root directory",
        )
    escaping = [repr(p) for p in paths if _escapes_root(p)]
    if escaping:
        raise _fail(
            annotation,
            "image paths that escape the image root via '..'",
            escaping,
            "make 'image' paths relative to a root that contains every image",
        )
    seen: set[str] = set()
    duplicates: list[str] = []
    for path in paths:
        key = posixpath.normpath(path.replace("\\", "/"))
        if key in seen:
            duplicates.append(repr(path))
        seen.add(key)
    if duplicates:
        raise _fail(
            annotation,
            "images listed in more than one entry",
            duplicates,
            "merge each image's captions into a single entry (retrieval needs one entry per image)",
        )


def _check_files(
    root: Path, paths: list[str], check_images: bool, annotation: Path, progress: Progress
) -> None:
    """Every image exists (always) and decodes (when asked); all offenders reported at once."""
    if not root.exists():
        raise DatasetError(
            f"image root directory not found: {root}; fix: pass the directory that the"
            f" 'image' paths in {annotation.name} are relative to"
        )
    if not root.is_dir():
        raise DatasetError(
            f"image root is not a directory: {root}; fix: pass the directory that the"
            f" 'image' paths in {annotation.name} are relative to"
        )
    missing = [repr(p) for p in paths if not (root / p).is_file()]
    if missing and len(missing) == len(paths):
        raise DatasetError(
            f"{annotation}: none of its {len(paths)} images exist under {root}"
            f" ({_offender_list(missing)}); fix: pass the directory the 'image' paths are"
            " relative to as the image root (for Flickr30k, the folder holding"
            " flickr30k-images/)"
        )
    if missing:
        raise _fail(
            annotation,
            f"image files missing under {root}",
            missing,
            "restore those files or remove their entries from the annotation",
        )
    if not check_images:
        return
    broken: list[str] = []
    with progress.task("checking images", total=len(paths)) as task:
        for path in paths:
            try:
                with Image.open(root / path) as image:
                    image.verify()
            except Exception as error:  # PIL raises many types for a bad file
                broken.append(f"{path!r} ({type(error).__name__})")
            task.advance()
    if broken:
        raise _fail(
            annotation,
            "image files that do not decode",
            broken,
            "re-download or re-extract those files (or pass check_images=False to skip this)",
        )


def load_karpathy(
    root: Path | str,
    annotation: Path | str,
    *,
    name: str | None = None,
    check_images: bool = True,
    progress: Progress | None = None,
) -> CaptionDataset:
    """Read a Karpathy test split (ALBEF json) or an exported world as a `CaptionDataset`.

    `root` is the directory the json's image paths are relative to. Every entry is
    validated before anything is returned; missing files are always checked, image headers
    only when `check_images`. A `labels.json` next to the annotation with one label per
    image is attached as `labels` (that is how an exported world keeps its attributes).
    """
    annotation = Path(annotation).expanduser()
    root = Path(root).expanduser()
    entries = _read_json(
        annotation,
        "annotation file",
        "pass the Karpathy test json in the ALBEF format (e.g. flickr30k_test.json)",
    )
    if not isinstance(entries, list):
        hint = (
            " (a COCO-style object: convert it to ALBEF's list format)"
            if isinstance(entries, dict)
            else ""
        )
        raise DatasetError(
            f'{annotation}: expected a JSON list of {{"image", "caption"}} objects, got'
            f" {type(entries).__name__}{hint}; fix: use the ALBEF-format Karpathy json"
        )
    if not entries:
        raise DatasetError(
            f"{annotation}: the annotation list is empty; fix: use a json with at least one"
            " image entry"
        )
    paths, caption_lists = _parse_entries(entries, annotation)
    _check_paths(paths, annotation)
    _check_files(root, paths, check_images, annotation, ensure_progress(progress))

    captions: list[str] = []
    caption_image: list[int] = []
    for image_index, texts in enumerate(caption_lists):
        captions.extend(texts)
        caption_image.extend([image_index] * len(texts))
    labels = load_labels(annotation.parent)
    if labels is not None and len(labels) != len(paths):
        logger.warning(
            "ignoring %s: %d labels for %d images in %s",
            annotation.parent / LABELS_FILE,
            len(labels),
            len(paths),
            annotation.name,
        )
        labels = None
    return CaptionDataset(
        name=annotation.stem if name is None else name,
        images=FileImages(root, tuple(paths)),
        image_ids=tuple(paths),
        captions=tuple(captions),
        caption_image=np.asarray(caption_image, dtype=np.int64),
        labels=labels,
    )


def load_labels(directory: Path | str) -> tuple[dict, ...] | None:
    """Per-image attribute labels from an export's `labels.json`, or None when there is none."""
    path = Path(directory).expanduser() / LABELS_FILE
    if not path.exists():
        return None
    fix = f"re-export the dataset or delete {path}"
    labels = _read_json(path, "labels file", fix)
    if not isinstance(labels, list):
        raise DatasetError(
            f"{path}: expected a JSON list of per-image objects, got {type(labels).__name__};"
            f" fix: {fix}"
        )
    not_objects = [
        f"[{i}] is {type(v).__name__}" for i, v in enumerate(labels) if not isinstance(v, dict)
    ]
    if not_objects:
        raise _fail(path, "labels that are not objects", not_objects, fix)
    return tuple(labels)


def _safe_file_names(image_ids: Iterable[str]) -> list[str]:
    """File-system-safe, unique (also case-insensitively) stems for image ids."""
    names: list[str] = []
    taken: set[str] = set()
    for index, image_id in enumerate(image_ids):
        stem = _SAFE_NAME.sub("_", str(image_id)).lstrip(".")[:_MAX_NAME_CHARS] or "image"
        if stem.lower() in taken:
            stem = f"{stem}-{index}"
            while stem.lower() in taken:
                stem = f"{stem}_"
        taken.add(stem.lower())
        names.append(stem)
    return names


def _json_value(value: Any) -> Any:
    """Numpy scalars/arrays in labels as plain JSON values."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"label value of type {type(value).__name__} is not JSON-serialisable")


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same directory, then rename over the target."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _check_exportable(dataset: CaptionDataset) -> None:
    """Refuse datasets the Karpathy layout cannot hold losslessly (it orders by image)."""
    where = f"dataset {dataset.name!r}"
    expected = [i for i, group in enumerate(dataset.image_captions) for _ in group]
    if dataset.caption_image.tolist() != expected:
        raise DatasetError(
            f"{where}: captions are not grouped by image in image order, so export would"
            " renumber them; fix: order captions by image (image 0's first, then image 1's, ...)"
        )
    uncaptioned = [
        repr(dataset.image_ids[i]) for i, g in enumerate(dataset.image_captions) if not g
    ]
    if uncaptioned:
        raise DatasetError(
            f"{where}: {len(uncaptioned)} images have no captions: {_offender_list(uncaptioned)};"
            " fix: give every image at least one caption or drop it"
        )
    blank = [f"caption {t} {c!r}" for t, c in enumerate(dataset.captions) if not c.strip()]
    if blank:
        raise DatasetError(
            f"{where}: {len(blank)} captions are empty or whitespace-only:"
            f" {_offender_list(blank)}; fix: write or remove those captions"
        )
    if len(dataset.images) != dataset.num_images:
        raise DatasetError(
            f"{where}: {len(dataset.images)} images for {dataset.num_images} image ids; fix:"
            " build the dataset with one image per id"
        )
    if dataset.labels is not None and len(dataset.labels) != dataset.num_images:
        raise DatasetError(
            f"{where}: {len(dataset.labels)} labels for {dataset.num_images} images; fix:"
            " give one label object per image or none"
        )


def export_dataset(
    dataset: CaptionDataset,
    directory: Path | str,
    *,
    annotation_name: str = "annotations.json",
    image_subdir: str = "images",
    progress: Progress | None = None,
) -> Path:
    """Write a dataset in the Karpathy layout (lossless PNGs + ALBEF json); return the json path.

    This is how the embedded world enters the same loader as Flickr30k and COCO. Images and
    the `labels.json` sidecar are written first and the annotation last, each through a temp
    file and a rename, so an interrupted export never leaves a json pointing at missing
    images. Labels round-trip as JSON (tuples come back as lists).
    """
    _check_exportable(dataset)
    for what, part in (("annotation_name", annotation_name), ("image_subdir", image_subdir)):
        if not part or _is_absolute(part) or _escapes_root(part) or part.strip(".") == "":
            raise DatasetError(
                f"{what} must be a plain name inside the export directory, got {part!r};"
                " fix: pass a relative name such as 'images'"
            )
    directory = Path(directory).expanduser()
    annotation = directory / annotation_name
    labels_path = directory / LABELS_FILE
    image_dir = directory / image_subdir
    image_dir.mkdir(parents=True, exist_ok=True)
    # A previous export's json must not survive alongside half-replaced images.
    annotation.unlink(missing_ok=True)

    relative_paths: list[str] = []
    names = _safe_file_names(dataset.image_ids)
    with ensure_progress(progress).task("exporting images", total=dataset.num_images) as task:
        for index, stem in enumerate(names):
            image = dataset.images.load(index)
            if image.mode != "RGB":
                image = image.convert("RGB")
            target = image_dir / f"{stem}.png"
            _write_atomically(target, lambda temp, im=image: im.save(temp, format="PNG"))
            relative_paths.append(f"{image_subdir}/{target.name}")
            task.advance()

    if dataset.labels is None:
        labels_path.unlink(missing_ok=True)
    else:
        labels_text = json.dumps(list(dataset.labels), ensure_ascii=False, default=_json_value)
        _write_atomically(labels_path, lambda temp: temp.write_text(labels_text, "utf-8"))

    entries = [
        {"image": path, "caption": [dataset.captions[t] for t in group]}
        for path, group in zip(relative_paths, dataset.image_captions, strict=True)
    ]
    annotation_text = json.dumps(entries, ensure_ascii=False, indent=1)
    _write_atomically(annotation, lambda temp: temp.write_text(annotation_text, "utf-8"))
    return annotation
