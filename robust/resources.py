"""Where the files shipped inside the package live: experiment specs, zero-shot prompt files
and the toy zoo.

Every path to a shipped file comes from here, so the suite finds them the same way from a
checkout, an editable install or an installed wheel (setuptools installs packages unzipped,
so each is a real folder). A shipped spec or prompt file is named by its file name with
dashes: `robust/specs/world_matrix.yaml` is `world-matrix`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from robust.errors import RobustError

SPECS = "specs"
PROMPTS = "prompts"
ZOO = "zoo"


def package_dir(folder: str) -> Path:
    """A folder of the installed `robust` package."""
    return Path(str(files("robust").joinpath(folder)))


# The shipped toy zoo's folder (checkpoints and recipes).
ZOO_DIR = package_dir(ZOO)


def shipped_files(folder: str) -> dict[str, Path]:
    """The YAML files of a shipped folder by name (stem with dashes), sorted by name."""
    found = sorted(package_dir(folder).glob("*.yaml"))
    return {path.stem.replace("_", "-"): path for path in found}


def shipped_file(folder: str, name: str, what: str) -> Path:
    """The shipped file `name` (dashes or underscores), or one error listing the names."""
    known = shipped_files(folder)
    path = known.get(name.replace("_", "-"))
    if path is None:
        raise RobustError(
            f"{name!r} is neither a {what} file nor a shipped {what} name; shipped: "
            f"{', '.join(known)} (`robust specs` lists them)"
        )
    return path


def spec_path(path_or_name: str | Path) -> Path:
    """A spec file as given, else the shipped spec of that name (`world-matrix`)."""
    path = Path(path_or_name)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    return shipped_file(SPECS, str(path_or_name), "spec")


def prompt_path(path_or_name: str | Path) -> Path:
    """A zero-shot prompt file as given, else the shipped one of that name (`world-shape`)."""
    path = Path(path_or_name)
    if path.is_file() or path.suffix in (".yaml", ".yml", ".json") or len(path.parts) > 1:
        return path
    return shipped_file(PROMPTS, str(path_or_name), "prompt")
