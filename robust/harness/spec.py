"""Experiment specs: one YAML file names the dataset, victims, attacks, budgets and seeds.

The spec is validated up front (pydantic, unknown keys refused) so a typo fails in a
second with one line naming the field and the fix, not hours into a run. Its
`fingerprint()` identifies the experiment, so a re-run into the same output directory
resumes instead of mixing results of two different experiments.

Budgets may be written as fractions (`eps: 2/255`), the way papers state them. Relative
paths (dataset files, `output_dir`) are relative to the working directory, as on the
command line. Victims are names, spec strings, or `{name, spec}` to give a spec string a
short display name (the store's column value).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from robust.errors import RobustError
from robust.harness.defense_axis import DefenseAxis
from robust.resources import spec_path

__all__ = [
    "AttackSpec",
    "ExperimentSpec",
    "SpecError",
    "VictimRef",
    "load_spec",
    "parse_spec",
]

# Keys excluded from the fingerprint: where and how a run executes, not what it computes.
NOT_FINGERPRINTED: Final[frozenset[str]] = frozenset({"output_dir", "executor", "device"})
POSITIVE_INT_PARAMS: Final[frozenset[str]] = frozenset(
    {"steps", "num_iters", "iterations", "max_words", "top_k", "batch_size"}
)
UNIT_INTERVAL_PARAMS: Final[frozenset[str]] = frozenset({"eps", "step_size"})
_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SpecError(RobustError):
    """A spec file that cannot be read or is invalid; the message names field and fix."""


class VictimRef(BaseModel):
    """A victim as the spec names it: `name` (the store's column value) and what loads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    spec: str

    def load_arg(self) -> dict[str, str]:
        """What `load_victim` takes to build this victim under this display name."""
        return {"name": self.name, "spec": self.spec}


def _fraction(value: Any) -> Any:
    """'2/255' -> 2/255 as a float; anything else unchanged."""
    if isinstance(value, str):
        match = _FRACTION.match(value)
        if match:
            denominator = float(match.group(2))
            if denominator == 0:
                raise ValueError(f"{value!r} divides by zero")
            return float(match.group(1)) / denominator
    return value


def _check_param(key: str, value: Any) -> None:
    """Range checks every attack shares, done before any model is loaded."""
    if key in UNIT_INTERVAL_PARAMS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number in (0, 1] such as 2/255, got {value!r}")
        if not (math.isfinite(value) and 0 < value <= 1):
            raise ValueError(
                f"{key} must be in (0, 1] (pixels are in [0, 1]; write 2/255, not 2), got {value!r}"
            )
    if key in POSITIVE_INT_PARAMS and (
        isinstance(value, bool) or not isinstance(value, int) or value < 1
    ):
        raise ValueError(f"{key} must be a positive integer, got {value!r}")


class AttackSpec(BaseModel):
    """One attack of the matrix: registry name, display label, hyper-parameters, masked LM."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    label: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    mlm: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        """The label defaults to the name; fractions like 2/255 become numbers."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("label") is None and isinstance(data.get("name"), str):
            data["label"] = data["name"]
        if isinstance(data.get("params"), dict):
            data["params"] = {key: _fraction(item) for key, item in data["params"].items()}
        return data

    @model_validator(mode="after")
    def _check(self) -> AttackSpec:
        from robust.attacks import AttackConfigError, attack_class

        if not _LABEL.match(self.label or ""):
            raise ValueError(
                f"label {self.label!r} must start with a letter or digit and use only "
                "letters, digits and _ . + -"
            )
        for key, value in self.params.items():
            _check_param(key, value)
        try:
            attack_cls = attack_class(self.name)
        except AttackConfigError as error:
            raise ValueError(str(error)) from None
        except Exception as error:  # a registered module that cannot be imported
            raise ValueError(
                f"attack {self.name!r} cannot be loaded ({type(error).__name__}: {error}); "
                "check the installation"
            ) from None
        if self.mlm is not None and not attack_cls.needs_mlm:
            raise ValueError(
                f"mlm is only used by text and multimodal attacks that load a masked LM; "
                f"remove it from {self.name!r}"
            )
        try:  # the class builds its own parameters now, so range errors come before any model
            attack_cls.validate_params(self.params)
        except AttackConfigError as error:
            raise ValueError(str(error)) from None
        return self

    def check_files(self) -> None:
        """The files building this attack reads (masked LM, decoder), checked unloaded."""
        from robust.attacks import attack_class

        attack_class(self.name).check_files(self.params, self.mlm)


class ExperimentSpec(BaseModel):
    """A transfer-matrix experiment: every attack crafted on every source, tested on every
    target, for every seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    dataset: str
    limit: PositiveInt | None = None
    sources: list[VictimRef] = Field(min_length=1)
    targets: list[VictimRef] = Field(min_length=1)
    attacks: list[AttackSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    batch_size: PositiveInt = 8
    eval_batch_size: PositiveInt = 64
    k_test: PositiveInt | None = None
    defenses: DefenseAxis | None = None
    output_dir: Path | None = None
    executor: Literal["local", "ray"] = "local"
    device: str = "cpu"
    precision: Literal["fp32", "bf16", "tf32"] = "fp32"

    @field_validator("sources", "targets", mode="before")
    @classmethod
    def _victims(cls, value: Any) -> Any:
        from robust.victims.registry import KNOWN_VICTIMS, resolve_spec

        if not isinstance(value, list):
            return value
        refs = []
        for item in value:
            if isinstance(item, VictimRef):
                item = item.load_arg()
            if not isinstance(item, str | dict):
                raise ValueError(
                    f"a victim is a name, a spec string or {{name, spec}}, got {item!r}"
                )
            if isinstance(item, dict) and set(item) - {"name", "spec"}:
                extra = ", ".join(sorted(set(item) - {"name", "spec"}))
                raise ValueError(f"victim {item!r} has unknown keys ({extra}); use name and spec")
            try:
                _, display = resolve_spec(item)
            except RobustError as error:
                raise ValueError(str(error)) from None
            original = item["spec"] if isinstance(item, dict) else str(item).strip()
            entry = KNOWN_VICTIMS.get(original)
            if entry is not None and "itc" not in entry.capabilities:
                raise ValueError(
                    f"{original} is a {'/'.join(entry.capabilities)} model without image-text "
                    "retrieval; list retrieval victims (CLIP, ALBEF, TCL, BLIP ITM) here"
                )
            refs.append({"name": display or original, "spec": original})
        names = [ref["name"] for ref in refs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"victim {duplicates[0]!r} is listed twice; list each victim once")
        return refs

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        from robust.data import DATASET_FORMS
        from robust.data.world import SPLITS, WORLD_VERSIONS

        kind, _, rest = value.partition(":")
        if kind in WORLD_VERSIONS:
            split = rest or "test-1k"
            if split not in SPLITS:
                raise ValueError(
                    f"unknown world split {split!r}; choose one of {', '.join(SPLITS)}"
                )
            return value
        if kind == "karpathy":
            root, sep, annotation = rest.partition(":")
            if not sep or not root or not annotation:
                raise ValueError(
                    "write karpathy:ROOT:ANNOTATION.json (image root folder, then the json)"
                )
            if not Path(root).expanduser().is_dir():
                raise ValueError(f"image root {root} is not a folder; fix the path")
            if not Path(annotation).expanduser().is_file():
                raise ValueError(f"annotation file {annotation} does not exist; fix the path")
            return value
        raise ValueError(f"unknown dataset {value!r}; use {DATASET_FORMS}")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if any(seed < 0 for seed in value):
            raise ValueError("seeds must be non-negative integers")
        if len(set(value)) != len(value):
            raise ValueError("each seed may be listed once")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise ValueError(f"{value!r} is not a torch device; use cpu, cuda or cuda:N") from None
        return value

    @model_validator(mode="after")
    def _unique_labels(self) -> ExperimentSpec:
        labels = [attack.label for attack in self.attacks]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(
                f"attack label {duplicates[0]!r} is used twice; give each attack a unique label"
            )
        return self

    # -- derived ---------------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        """Where the run's store and cache live (default `runs/<name>`)."""
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name

    def attack(self, label: str) -> AttackSpec:
        """The attack with display label `label`."""
        for attack in self.attacks:
            if attack.label == label:
                return attack
        raise KeyError(label)

    def victim(self, name: str) -> VictimRef:
        """A source or target by its display name, or a defended one by its derived name."""
        refs = [*self.sources, *self.targets]
        for ref in refs:
            if ref.name == name:
                return ref
        defended = None if self.defenses is None else self.defenses.resolve(name, refs)
        if defended is None:
            raise KeyError(name)
        return VictimRef(**defended)

    def check_files(self) -> None:
        """Every victim, masked LM and decoder the spec names is here and looks readable.

        Validation checks names and numbers; this checks the files, without loading models,
        so a missing checkpoint fails the run in seconds instead of after hours of cells.
        """
        from robust.victims.registry import check_victim

        for ref in dict.fromkeys([*self.sources, *self.targets]):
            check_victim(ref.load_arg())
        for attack in self.attacks:
            try:
                attack.check_files()
            except RobustError as error:
                raise type(error)(f"attack {attack.label!r}: {error}") from None

    def canonical(self) -> dict[str, Any]:
        """The spec as plain JSON data, minus the keys that do not change results."""
        data = self.model_dump(mode="json")
        if data["precision"] == "fp32":  # the reference: fingerprints from before the field hold
            del data["precision"]
        if data.get("defenses") is None:  # specs without defenses keep their fingerprints
            data.pop("defenses", None)
        return {key: value for key, value in data.items() if key not in NOT_FINGERPRINTED}

    def fingerprint(self) -> str:
        """A stable hash of what this experiment computes, for resume checks."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# -- loading ---------------------------------------------------------------------------------


def _location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif str(item).startswith(("function-", "model-")):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "spec"


def _one_error(error: dict[str, Any]) -> str:
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    where = _location(loc)
    if kind == "extra_forbidden":
        parent = _location(loc[:-1]) if len(loc) > 1 else "the spec"
        return f"unknown key {where!r} in {parent}; remove it or check its spelling"
    if kind == "missing":
        return f"{where}: required; add it"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return f"{where}: {message}"


def flatten_validation_error(error: ValidationError) -> str:
    """pydantic's multi-line report as one line: `field: problem; field: problem`."""
    return "; ".join(dict.fromkeys(_one_error(e) for e in error.errors()))


def parse_spec(data: Any, *, origin: str = "spec") -> ExperimentSpec:
    """Validate already-parsed YAML/JSON data into an `ExperimentSpec` (one-line errors)."""
    if not isinstance(data, dict):
        raise SpecError(
            f"{origin}: expected a mapping of keys (name, dataset, sources, ...), "
            f"got {type(data).__name__}"
        )
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(f"{origin}: {flatten_validation_error(error)}") from None


def load_spec(path: Path | str) -> ExperimentSpec:
    """Read and validate a YAML spec file, or the shipped spec of that name (`world-matrix`);
    every problem is one `SpecError` line."""
    try:
        path = spec_path(path)
    except RobustError as error:
        raise SpecError(str(error)) from None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: spec file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read the spec ({error}); pass a UTF-8 YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise SpecError(f"{path}: YAML syntax error{where}: {problem}; fix the file") from None
    return parse_spec(data, origin=str(path))
