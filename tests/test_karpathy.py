"""The Karpathy/ALBEF json reader and the exporter that puts the embedded world in that layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robust.data.dataset import ArrayImages, CaptionDataset
from robust.data.karpathy import DatasetError, export_dataset, load_karpathy, load_labels


def _dataset(
    captions_per_image: tuple[int, ...] = (2, 3, 1, 2),
    *,
    labels: bool = True,
    image_ids: tuple[str, ...] | None = None,
    seed: int = 0,
) -> CaptionDataset:
    """A small synthetic dataset: random pixels, numbered captions, simple attribute labels."""
    count = len(captions_per_image)
    pixels = np.random.default_rng(seed).integers(0, 256, (count, 9, 13, 3), dtype=np.uint8)
    captions: list[str] = []
    caption_image: list[int] = []
    for image_index, how_many in enumerate(captions_per_image):
        for k in range(how_many):
            captions.append(f"a red square number {image_index} caption {k} — ünïcode")
            caption_image.append(image_index)
    return CaptionDataset(
        name="synthetic",
        images=ArrayImages(pixels),
        image_ids=image_ids or tuple(f"img{i:03d}" for i in range(count)),
        captions=tuple(captions),
        caption_image=np.asarray(caption_image),
        labels=(
            tuple({"colour": "red", "count": i, "shapes": ["square"]} for i in range(count))
            if labels
            else None
        ),
    )


def _pixels(dataset: CaptionDataset) -> list[np.ndarray]:
    return [np.asarray(dataset.images.load(i)) for i in range(dataset.num_images)]


def _write_images(root: Path, names: list[str]) -> None:
    for index, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 6, 3), index * 20, dtype=np.uint8)).save(path)


def _write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def _valid_split(root: Path, count: int = 3) -> tuple[Path, list[dict]]:
    """A real-looking split: jpgs under a sub-folder and an ALBEF json next to the root."""
    names = [f"flickr30k-images/{1000 + i}.jpg" for i in range(count)]
    _write_images(root, names)
    entries = [
        {"image": n, "caption": [f"caption {i} a", f"caption {i} b"]} for i, n in enumerate(names)
    ]
    return _write_json(root / "test.json", entries), entries


def _error_of(root: Path, annotation: Path, **kwargs: object) -> str:
    with pytest.raises(DatasetError) as caught:
        load_karpathy(root, annotation, **kwargs)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    assert "fix:" in message
    return message


# ---------------------------------------------------------------- good input


def test_export_then_load_round_trips_captions_mapping_pixels_and_labels(tmp_path: Path) -> None:
    original = _dataset()
    annotation = export_dataset(original, tmp_path / "world")
    assert annotation == tmp_path / "world" / "annotations.json"

    loaded = load_karpathy(tmp_path / "world", annotation)
    assert loaded.captions == original.captions
    assert np.array_equal(loaded.caption_image, original.caption_image)
    assert loaded.image_captions == original.image_captions
    assert loaded.labels == original.labels
    assert loaded.name == "annotations"
    assert loaded.image_ids == tuple(f"images/img{i:03d}.png" for i in range(4))
    for ours, theirs in zip(_pixels(loaded), _pixels(original), strict=True):
        assert np.array_equal(ours, theirs)
    assert load_labels(tmp_path / "world") == original.labels


def test_exported_json_is_the_albef_layout(tmp_path: Path) -> None:
    annotation = export_dataset(_dataset((1, 2)), tmp_path, annotation_name="x.json")
    entries = json.loads(annotation.read_text(encoding="utf-8"))
    assert [sorted(e) for e in entries] == [["caption", "image"]] * 2
    assert [len(e["caption"]) for e in entries] == [1, 2]
    assert all(e["image"].startswith("images/") for e in entries)


def test_real_split_loads_with_relative_paths_and_single_string_captions(tmp_path: Path) -> None:
    annotation, entries = _valid_split(tmp_path)
    entries[1]["caption"] = "one caption as a plain string"
    _write_json(annotation, entries)
    dataset = load_karpathy(tmp_path, annotation, name="flickr30k")
    assert dataset.name == "flickr30k"
    assert dataset.labels is None
    assert dataset.image_ids == tuple(e["image"] for e in entries)
    assert dataset.captions == (
        "caption 0 a",
        "caption 0 b",
        "one caption as a plain string",
        "caption 2 a",
        "caption 2 b",
    )
    assert dataset.caption_image.tolist() == [0, 0, 1, 2, 2]
    assert np.asarray(dataset.images.load(2)).max() == 40


def test_export_without_labels_removes_a_stale_sidecar(tmp_path: Path) -> None:
    export_dataset(_dataset(), tmp_path)
    assert (tmp_path / "labels.json").exists()
    annotation = export_dataset(_dataset(labels=False), tmp_path)
    assert not (tmp_path / "labels.json").exists()
    assert load_karpathy(tmp_path, annotation).labels is None
    assert load_labels(tmp_path) is None


def test_labels_of_the_wrong_length_are_not_attached(tmp_path: Path) -> None:
    annotation = export_dataset(_dataset(), tmp_path)
    _write_json(tmp_path / "labels.json", [{"colour": "red"}])
    assert load_karpathy(tmp_path, annotation).labels is None


def test_export_sanitises_ids_into_unique_safe_names(tmp_path: Path) -> None:
    ids = ("a/b c.jpg", "a_b_c.jpg", "../../etc/passwd", "A/B C.jpg")
    annotation = export_dataset(_dataset((1, 1, 1, 1), image_ids=ids), tmp_path)
    loaded = load_karpathy(tmp_path, annotation)
    names = [Path(p).name for p in loaded.image_ids]
    assert len({n.lower() for n in names}) == 4
    assert all(p.startswith("images/") and p.count("/") == 1 for p in loaded.image_ids)
    assert not any(n.startswith(".") for n in names)
    assert sorted(f.name for f in (tmp_path / "images").iterdir()) == sorted(names)


def test_interrupted_export_leaves_no_json_pointing_at_missing_images(tmp_path: Path) -> None:
    export_dataset(_dataset(seed=1), tmp_path)

    class Exploding(ArrayImages):
        def load(self, index: int) -> Image.Image:
            if index == 2:
                raise RuntimeError("disk full")
            return super().load(index)

    original = _dataset((1, 1, 1, 1))
    crashing = CaptionDataset(
        name="crash",
        images=Exploding(original.images.pixels),  # type: ignore[attr-defined]
        image_ids=("new0", "new1", "new2", "new3"),
        captions=original.captions,
        caption_image=original.caption_image,
    )
    with pytest.raises(RuntimeError, match="disk full"):
        export_dataset(crashing, tmp_path)
    assert not (tmp_path / "annotations.json").exists()
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_export_refuses_captions_not_grouped_by_image(tmp_path: Path) -> None:
    base = _dataset((1, 1))
    shuffled = CaptionDataset(
        name="shuffled",
        images=base.images,
        image_ids=base.image_ids,
        captions=("second image", "first image", "second again"),
        caption_image=np.asarray([1, 0, 1]),
    )
    with pytest.raises(DatasetError, match="grouped by image") as caught:
        export_dataset(shuffled, tmp_path)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "annotations.json").exists()


# ---------------------------------------------------------------- bad input


def test_missing_annotation_file(tmp_path: Path) -> None:
    message = _error_of(tmp_path, tmp_path / "nope.json")
    assert "not found" in message and "nope.json" in message


def test_annotation_that_is_not_json(tmp_path: Path) -> None:
    annotation = tmp_path / "bad.json"
    annotation.write_text('[{"image": "a.jpg",\n "caption": [}', encoding="utf-8")
    message = _error_of(tmp_path, annotation)
    assert "not valid JSON" in message and "line 2" in message


@pytest.mark.parametrize(("value", "needle"), [({"images": []}, "got dict"), ([], "empty")])
def test_annotation_that_is_not_a_non_empty_list(
    tmp_path: Path, value: object, needle: str
) -> None:
    message = _error_of(tmp_path, _write_json(tmp_path / "a.json", value))
    assert needle in message


def test_entries_that_are_not_objects_are_all_named(tmp_path: Path) -> None:
    annotation = _write_json(
        tmp_path / "a.json", [1, {"image": "x.jpg", "caption": ["c"]}, "y.jpg", None]
    )
    message = _error_of(tmp_path, annotation)
    assert "entries that are not objects (3)" in message
    assert "entry [0]" in message and "entry [2]" in message and "entry [3]" in message


def test_entries_missing_keys(tmp_path: Path) -> None:
    annotation = _write_json(
        tmp_path / "a.json",
        [{"image": "x.jpg"}, {"caption": ["c"]}, {"image": "z.jpg", "caption": ["c"]}],
    )
    message = _error_of(tmp_path, annotation)
    assert "entries lacking required keys (2)" in message
    assert "entry [0] lacks 'caption'" in message and "entry [1] lacks 'image'" in message


def test_entries_with_wrong_types(tmp_path: Path) -> None:
    annotation = _write_json(
        tmp_path / "a.json",
        [{"image": 7, "caption": ["c"]}, {"image": "y.jpg", "caption": [1, "b"]}],
    )
    message = _error_of(tmp_path, annotation)
    assert "entries with values of the wrong type (2)" in message


def test_empty_caption_list(tmp_path: Path) -> None:
    annotation = _write_json(tmp_path / "a.json", [{"image": "x.jpg", "caption": []}])
    message = _error_of(tmp_path, annotation)
    assert "entries with no captions (1)" in message and "'x.jpg'" in message


def test_empty_and_whitespace_captions_are_all_named(tmp_path: Path) -> None:
    annotation = _write_json(
        tmp_path / "a.json",
        [
            {"image": "x.jpg", "caption": ["fine", ""]},
            {"image": "y.jpg", "caption": "  \n "},
        ],
    )
    message = _error_of(tmp_path, annotation)
    assert "empty or whitespace-only captions (2)" in message
    assert "entry [0] caption 1" in message and "entry [1] caption 0" in message


def test_many_offenders_are_truncated_with_a_count(tmp_path: Path) -> None:
    entries = [{"image": f"{i}.jpg", "caption": [" "]} for i in range(8)]
    message = _error_of(tmp_path, _write_json(tmp_path / "a.json", entries))
    assert "whitespace-only captions (8)" in message
    assert "and 3 more" in message
    assert "entry [4]" in message and "entry [5]" not in message


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/etc/passwd", "absolute"),
        ("C:\\images\\x.jpg", "absolute"),
        ("../outside.jpg", "escape"),
        ("a/../../outside.jpg", "escape"),
    ],
)
def test_paths_outside_the_root_are_refused(tmp_path: Path, path: str, needle: str) -> None:
    entries = [{"image": "ok.jpg", "caption": ["c"]}, {"image": path, "caption": ["c"]}]
    message = _error_of(tmp_path, _write_json(tmp_path / "a.json", entries))
    assert needle in message and repr(path) in message


def test_duplicate_images_are_refused(tmp_path: Path) -> None:
    entries = [{"image": "a.jpg", "caption": ["c"]}, {"image": "./a.jpg", "caption": ["d"]}]
    message = _error_of(tmp_path, _write_json(tmp_path / "a.json", entries))
    assert "more than one entry (1)" in message


def test_missing_root_directory(tmp_path: Path) -> None:
    annotation, _ = _valid_split(tmp_path)
    message = _error_of(tmp_path / "no-such-root", annotation)
    assert "image root directory not found" in message and "no-such-root" in message


def test_missing_image_files_are_named(tmp_path: Path) -> None:
    annotation, entries = _valid_split(tmp_path, count=4)
    (tmp_path / entries[1]["image"]).unlink()
    (tmp_path / entries[3]["image"]).unlink()
    message = _error_of(tmp_path, annotation)
    assert "image files missing under" in message
    assert "1001.jpg" in message and "1003.jpg" in message and "1000.jpg" not in message


def test_wrong_root_says_so(tmp_path: Path) -> None:
    annotation, _ = _valid_split(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    message = _error_of(tmp_path / "elsewhere", annotation)
    assert "none of its 3 images exist" in message


def test_images_that_do_not_decode(tmp_path: Path) -> None:
    annotation, entries = _valid_split(tmp_path, count=3)
    (tmp_path / entries[0]["image"]).write_bytes(b"not an image at all")
    (tmp_path / entries[2]["image"]).write_bytes(b"")
    message = _error_of(tmp_path, annotation)
    assert "image files that do not decode (2)" in message
    assert "1000.jpg" in message and "1002.jpg" in message and "1001.jpg" not in message
    assert load_karpathy(tmp_path, annotation, check_images=False).num_images == 3


def test_missing_files_are_reported_before_undecodable_ones(tmp_path: Path) -> None:
    annotation, entries = _valid_split(tmp_path, count=3)
    (tmp_path / entries[0]["image"]).write_bytes(b"garbage")
    (tmp_path / entries[1]["image"]).unlink()
    message = _error_of(tmp_path, annotation)
    assert "missing" in message and "1001.jpg" in message and "1000.jpg" not in message


def test_malformed_labels_sidecar(tmp_path: Path) -> None:
    annotation = export_dataset(_dataset(), tmp_path)
    _write_json(tmp_path / "labels.json", [{"ok": 1}, 2, 3, {"ok": 4}])
    message = _error_of(tmp_path, annotation)
    assert "labels that are not objects" in message and "[1] is int" in message


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)
    assert "\n" not in str(DatasetError("a\nb"))
