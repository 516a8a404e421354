"""Shipped files: specs by name and as files, prompt files, the zoo, `robust specs`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_helpers import assert_one_line_error, invoke

import robust
from robust.harness.spec import SpecError, load_spec
from robust.resources import PROMPTS, SPECS, ZOO_DIR, shipped_files, spec_path

REPO = Path(__file__).resolve().parent.parent


def test_every_shipped_spec_loads_by_its_name(protocol_attacks):
    specs = shipped_files(SPECS)
    assert {"world-matrix", "world-defense", "world-calibration", "flickr-sga"} <= set(specs)
    for name, path in specs.items():
        assert yaml.safe_load(path.read_text())["name"] == name
        if name.startswith("world-"):
            assert load_spec(name).name == name
    with pytest.raises(SpecError, match="/data/flickr30k"):  # found; its data is not here
        load_spec("flickr-sga")
    assert spec_path("world_matrix") == specs["world-matrix"]


def test_configs_folder_is_the_shipped_specs_not_a_copy():
    for path in shipped_files(SPECS).values():
        assert (REPO / "configs" / path.name).resolve() == path.resolve()


def test_unknown_spec_name_is_one_line_listing_the_shipped_ones():
    with pytest.raises(SpecError, match="world-matrix") as caught:
        load_spec("world-matrx")
    assert "robust specs" in str(caught.value)
    with pytest.raises(SpecError, match="not found"):
        load_spec("missing/spec.yaml")
    assert_one_line_error(invoke("matrix", "world-matrx"), "world-matrx", "robust specs")


def test_robust_specs_lists_and_prints_shipped_files():
    listing = invoke("specs")
    assert listing.exit_code == 0
    for name in (*shipped_files(SPECS), *shipped_files(PROMPTS)):
        assert name in listing.output
    shown = invoke("specs", "world-defense")
    assert shown.output == shipped_files(SPECS)["world-defense"].read_text()
    assert invoke("specs", "world-shape").output.startswith("# Zero-shot shape")
    assert_one_line_error(invoke("specs", "world-matrx"), "world-matrix", "world-shape")


def test_zoo_is_package_data():
    assert ZOO_DIR == Path(robust.__file__).parent / "zoo"
    assert (ZOO_DIR / "toy-clip-vit" / "open_clip_config.json").is_file()
