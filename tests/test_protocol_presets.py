"""The published protocols as shipped specs: SGA's (2/255) and DRA/SA-AET's (8/255), on
Flickr30k and on the world, plus variants that read BERT-Attack's substitutes as the
official code does."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robust.attacks import attack_class
from robust.harness.spec import load_spec, parse_spec
from robust.resources import SPECS, shipped_files
from robust.victims.registry import TOY_RETRIEVAL_VICTIMS

PROTOCOLS = {"sga": (2 / 255, 0.5 / 255), "dra": (8 / 255, 2 / 255)}
ATTACKS = ["pgd", "sep_attack", "co_attack", "sga", "dra", "sa_aet"]
FLICKR_VICTIMS = ["albef-flickr", "tcl-flickr", "clip-vit-b16", "clip-rn101"]


def flickr_preset(name: str, tmp_path: Path):
    """A Flickr preset with its dataset pointed at files that exist here."""
    data = yaml.safe_load(shipped_files(SPECS)[name].read_text())
    annotation = tmp_path / "flickr30k_test.json"
    annotation.write_text("[]")
    data["dataset"] = f"karpathy:{tmp_path}:{annotation}"
    return parse_spec(data)


def presets(tmp_path: Path, protocol: str, suffix: str = "") -> dict:
    return {
        "world": load_spec(f"world-protocol-{protocol}{suffix}"),
        "flickr": flickr_preset(f"flickr-protocol-{protocol}{suffix}", tmp_path),
    }


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_presets_list_every_attack_at_the_protocols_budget(protocol_attacks, tmp_path, protocol):
    eps, step_size = PROTOCOLS[protocol]
    for setting, spec in presets(tmp_path, protocol).items():
        assert [attack.label for attack in spec.attacks] == ATTACKS, setting
        for attack in spec.attacks:
            assert attack.params["eps"] == pytest.approx(eps)
            assert attack.params["step_size"] == pytest.approx(step_size)
            assert attack.params["steps"] == 10
            if attack_class(attack.name).needs_mlm:
                assert attack.params["max_words"] == 1
                assert attack.params["max_length"] == "source"
                assert "subword_offset" not in attack.params  # our reading, the default
                assert attack.mlm == ("toy-mlm" if setting == "world" else "bert-base-uncased")
    world, flickr = presets(tmp_path, protocol).values()
    assert [v.name for v in world.sources] == [v.name for v in world.targets]
    assert [v.name for v in world.sources] == list(TOY_RETRIEVAL_VICTIMS)
    assert world.seeds == [0, 1, 2]
    assert [v.name for v in flickr.sources] == [v.name for v in flickr.targets] == FLICKR_VICTIMS
    assert flickr.k_test == 128 and flickr.batch_size == 8


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_official_variants_differ_only_in_the_subword_offset(protocol_attacks, tmp_path, protocol):
    plain = presets(tmp_path, protocol)
    official = presets(tmp_path, protocol, "-official")
    for setting in plain:
        ours, theirs = plain[setting], official[setting]
        assert theirs.name == f"{ours.name}-official"
        for mine, other in zip(ours.attacks, theirs.attacks, strict=True):
            expected = dict(mine.params)
            if attack_class(mine.name).needs_mlm:
                expected["subword_offset"] = "official"
            assert other.params == expected and other.mlm == mine.mlm
        same = {"name", "attacks", "output_dir"}
        assert ours.model_dump(exclude=same) == theirs.model_dump(exclude=same)
        assert ours.run_dir != theirs.run_dir


def test_preset_params_reach_the_text_half(protocol_attacks, tmp_path, tiny_open_clip_dir):
    """What a preset says is what the built attack uses: the official reading and the CLIP
    source's 77 tokens."""
    import robust
    from robust.attacks import build_attack

    spec = load_spec("world-protocol-sga-official")
    sga = spec.attack("sga")
    victim = robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")
    attack = build_attack(sga.name, victim, dict(sga.params), mlm=sga.mlm)
    assert attack.text_attack.max_length == 77
    assert attack.text_attack.params().subword_offset == "official"
    assert attack.image_attack.params().eps == pytest.approx(2 / 255)
