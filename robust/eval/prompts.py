"""Zero-shot classification tasks: class names and prompt templates read from a small file.

A prompt file (YAML or JSON) names the task, its classes and the templates each class name
is written into (CLIP's prompt ensembling averages a class's template embeddings):

    name: shape
    label: shape                     # world tasks only: which world label gives the class
    classes: [circle, square, ...]   # or a mapping, folder name -> name used in prompts
    templates: ["a {}", "an image of a {}"]

World tasks (`label` set) read the world generator's labels; image-folder tasks take each
image's class from its folder, so their `classes` are the folder names. The shipped files
(`robust specs`) hold the world's shape, colour and background tasks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from robust.errors import RobustError
from robust.resources import PROMPTS, prompt_path, shipped_files

WORLD_LABELS = ("shape", "color", "background")


class PromptFileError(RobustError):
    """A prompt file that is missing or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class PromptTask:
    """One zero-shot task: classes (label values or folder names), the names prompts use,
    templates, and for world tasks the world label the class comes from."""

    name: str
    classes: tuple[str, ...]
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    label: str | None = None
    source: str = ""

    def prompts(self) -> list[list[str]]:
        """Per class, its name written into every template."""
        return [[template.format(name) for template in self.templates] for name in self.class_names]

    def label_sets(self, labels: Sequence[dict]) -> list[frozenset[str]]:
        """A world task's acceptable classes per image: every value its objects carry."""
        if self.label == "background":
            return [frozenset({label["background"]}) for label in labels]
        return [frozenset(obj[self.label] for obj in label["objects"]) for label in labels]

    def class_sets(self, labels: Sequence[dict]) -> list[frozenset[int]]:
        """Per world image, the indices of the task's classes it holds: a scene of a circle
        and a letter k is correctly called either (empty: none of the task's classes)."""
        position = {name: index for index, name in enumerate(self.classes)}
        return [
            frozenset(position[value] for value in values if value in position)
            for values in self.label_sets(labels)
        ]

    def describe(self) -> dict:
        """What a results store records about the task."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "class_names": list(self.class_names),
            "templates": list(self.templates),
            "label": self.label,
            "source": self.source,
        }


def load_prompt_task(path_or_name: str | Path) -> PromptTask:
    """Read a prompt file, or the shipped one of that name (`world-shape`); every problem is
    one `PromptFileError` line."""
    try:
        path = prompt_path(path_or_name)
    except RobustError as error:
        raise PromptFileError(str(error)) from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptFileError(
            f"{path}: prompt file not found; pass a YAML/JSON file with name, classes and "
            "templates, or a shipped name (`robust specs` lists them)"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{path}: cannot read the prompt file ({error})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise PromptFileError(f"{path}: not valid YAML/JSON ({error}); fix the file") from None
    return parse_prompt_task(data, str(path))


def parse_prompt_task(data: object, source: str) -> PromptTask:
    """Validate a prompt file's content; every problem is one `PromptFileError` line."""
    if not isinstance(data, Mapping):
        raise PromptFileError(f"{source}: expected a mapping with name, classes and templates")
    unknown = sorted(set(data) - {"name", "label", "classes", "templates"})
    if unknown:
        raise PromptFileError(
            f"{source}: unknown keys {', '.join(map(str, unknown))}; "
            "allowed: name, label, classes, templates"
        )
    name, label = data.get("name"), data.get("label")
    if not isinstance(name, str) or not name.strip():
        raise PromptFileError(f"{source}: `name` must be a non-empty string")
    if label is not None and label not in WORLD_LABELS:
        raise PromptFileError(
            f"{source}: `label` must be one of {', '.join(WORLD_LABELS)} (world tasks) or "
            f"left out (image-folder tasks), got {label!r}"
        )
    classes, class_names = _classes(data.get("classes"), source)
    templates = data.get("templates")
    if (
        not isinstance(templates, list)
        or not templates
        or not all(isinstance(t, str) and t.count("{}") == 1 for t in templates)
    ):
        raise PromptFileError(
            f"{source}: `templates` must be a non-empty list of strings with one {{}} each "
            "(where the class name goes), e.g. ['a photo of a {}.']"
        )
    return PromptTask(name.strip(), classes, class_names, tuple(templates), label, source)


def _classes(value: object, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(classes, names in prompts) from a list of names or a folder -> name mapping."""
    pairs = list(value.items()) if isinstance(value, Mapping) else value
    if isinstance(pairs, list) and all(isinstance(item, str) for item in pairs):
        pairs = [(item, item) for item in pairs]
    if (
        not isinstance(pairs, list)
        or len(pairs) < 2
        or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in pairs)
    ):
        raise PromptFileError(
            f"{source}: `classes` must list at least two class names, or map each class "
            "folder to the name its prompts use"
        )
    classes = tuple(k for k, _ in pairs)
    if len(set(classes)) != len(classes):
        raise PromptFileError(f"{source}: `classes` names a class twice")
    return classes, tuple(v for _, v in pairs)


def world_prompt_tasks() -> tuple[PromptTask, ...]:
    """The shipped world tasks (shape, colour, background), in that order."""
    shipped = shipped_files(PROMPTS)
    return tuple(load_prompt_task(shipped[f"world-{label}"]) for label in WORLD_LABELS)
