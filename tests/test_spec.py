"""Experiment specs: valid files load, every mistake is one line naming the field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from robust.cli import app
from robust.harness.spec import ExperimentSpec, SpecError, load_spec, parse_spec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def minimal(**changes) -> dict:
    data = {
        "name": "t",
        "dataset": "world:val",
        "limit": 6,
        "sources": ["toy-clip-vit"],
        "targets": ["toy-clip-vit", "toy-albef"],
        "attacks": [{"name": "pgd", "params": {"eps": "2/255", "steps": 3}}],
    }
    data.update(changes)
    return data


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def spec_error(tmp_path: Path, data) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, data))
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_valid_spec_loads_with_defaults_and_fractions(tmp_path):
    spec = load_spec(write(tmp_path, minimal()))
    assert isinstance(spec, ExperimentSpec)
    assert spec.attacks[0].label == "pgd"
    assert spec.attacks[0].params["eps"] == pytest.approx(2 / 255)
    assert spec.seeds == [0] and spec.batch_size == 8 and spec.executor == "local"
    assert [ref.name for ref in spec.targets] == ["toy-clip-vit", "toy-albef"]
    assert spec.run_dir == Path("runs") / "t"


def test_fingerprint_is_stable_and_tracks_what_is_computed(tmp_path):
    base = parse_spec(minimal())
    assert base.fingerprint() == parse_spec(minimal()).fingerprint()
    # key order, output_dir and the executor do not change what is computed
    reordered = dict(reversed(list(minimal(output_dir=str(tmp_path)).items())))
    assert parse_spec(reordered).fingerprint() == base.fingerprint()
    written_as_float = minimal(attacks=[{"name": "pgd", "params": {"eps": 2 / 255, "steps": 3}}])
    assert parse_spec(written_as_float).fingerprint() == base.fingerprint()
    changed = minimal(attacks=[{"name": "pgd", "params": {"eps": "4/255", "steps": 3}}])
    assert parse_spec(changed).fingerprint() != base.fingerprint()
    assert parse_spec(minimal(seeds=[0, 1])).fingerprint() != base.fingerprint()


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"sources": ["no-such-victim"]}, ("sources", "unknown victim 'no-such-victim'")),
        ({"targets": ["toy-albef", "toy-albef"]}, ("targets", "listed twice")),
        ({"targets": ["toy-blip-cap"]}, ("targets", "without image-text retrieval")),
        ({"attacks": [{"name": "fgsm"}]}, ("attacks[0]", "unknown attack 'fgsm'", "sga")),
        ({"attacks": [{"name": "pgd", "params": {"eps": 0}}]}, ("attacks[0]", "eps", "(0, 1]")),
        ({"attacks": [{"name": "pgd", "params": {"eps": 2}}]}, ("eps", "2/255")),
        ({"attacks": [{"name": "pgd", "params": {"steps": 0}}]}, ("steps", "positive integer")),
        ({"attacks": [{"name": "pgd", "params": {"epsilon": 0.1}}]}, ("'epsilon'", "known")),
        (
            {"attacks": [{"name": "sga", "params": {"eps": 3, "max_words": 1}}]},
            ("attacks[0]", "eps"),
        ),
        ({"attacks": [{"name": "pgd", "mlm": "toy-mlm"}]}, ("mlm is only used",)),
        ({"attacks": [{"name": "pgd"}, {"name": "pgd"}]}, ("label 'pgd' is used twice",)),
        ({"attacks": [{"name": "pgd", "colour": 1}]}, ("unknown key 'attacks[0].colour'",)),
        ({"extra_key": 1}, ("unknown key 'extra_key'", "remove it")),
        ({"dataset": "world:nope"}, ("dataset", "unknown world split")),
        ({"dataset": "imagenet"}, ("dataset", "karpathy:ROOT")),
        ({"limit": 0}, ("limit",)),
        ({"seeds": [1, 1]}, ("seeds", "once")),
        ({"executor": "dask"}, ("executor", "local", "ray")),
        ({"precision": "fp16"}, ("precision", "bf16")),
    ],
)
def test_invalid_specs_fail_in_one_line(tmp_path, changes, fragments):
    message = spec_error(tmp_path, minimal(**changes))
    for fragment in fragments:
        assert fragment in message, message


def test_missing_required_field_and_missing_dataset_file(tmp_path):
    data = minimal()
    del data["sources"]
    assert "sources: required" in spec_error(tmp_path, data)
    root = tmp_path / "images"
    root.mkdir()
    missing = tmp_path / "flickr30k_test.json"
    message = spec_error(tmp_path, minimal(dataset=f"karpathy:{root}:{missing}"))
    assert "dataset" in message and str(missing) in message and "does not exist" in message


def test_yaml_syntax_error_and_missing_file_are_one_line(tmp_path):
    message = spec_error(tmp_path, "name: t\nsources: [toy-clip-vit\n")
    assert "YAML syntax error" in message and "line" in message
    assert "expected a mapping" in spec_error(tmp_path, "- just\n- a list\n")
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_shipped_configs_validate(tmp_path):
    world = load_spec(CONFIGS / "world_matrix.yaml")
    assert [a.label for a in world.attacks] == [
        "pgd",
        "bert_attack",
        "sep_attack",
        "co_attack",
        "sga",
    ]
    from robust.victims.registry import TOY_RETRIEVAL_VICTIMS

    shipped = list(TOY_RETRIEVAL_VICTIMS)
    assert [v.name for v in world.sources] == [v.name for v in world.targets] == shipped
    assert world.attacks[-1].params["eps"] == pytest.approx(2 / 255)
    # the Flickr config is valid once its dataset paths point at real files
    data = yaml.safe_load((CONFIGS / "flickr_sga.yaml").read_text())
    annotation = tmp_path / "flickr30k_test.json"
    annotation.write_text("[]")
    data["dataset"] = f"karpathy:{tmp_path}:{annotation}"
    flickr = parse_spec(data)
    assert flickr.k_test == 128 and flickr.batch_size == 8
    assert {a.mlm for a in flickr.attacks if a.name != "pgd"} == {"bert-base-uncased"}


def test_cli_matrix_spec_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["matrix", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "spec file not found" in lines[0], result.output
    bad = write(tmp_path, minimal(attacks=[{"name": "pgd", "params": {"eps": 2}}]))
    result = CliRunner().invoke(app, ["matrix", str(bad)])
    assert result.exit_code == 2 and "eps" in result.output, result.output
