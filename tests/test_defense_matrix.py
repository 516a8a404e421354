"""The defenses axis of the matrix: spec checks, stored rows, clean cost, resume."""

from __future__ import annotations

import math

import pytest

from robust.defenses import DefendedVictim
from robust.harness.matrix import run_matrix
from robust.harness.spec import SpecError, parse_spec
from robust.harness.store import ABSENT, ResultStore

LIMIT = 6


def _spec(tmp_path, tiny_open_clip_dir, **changes):
    data = {
        "name": "defended",
        "dataset": "world:test-1k",
        "limit": LIMIT,
        "sources": [{"name": "tiny", "spec": f"open_clip:local-dir:{tiny_open_clip_dir}"}],
        "targets": [{"name": "tiny", "spec": f"open_clip:local-dir:{tiny_open_clip_dir}"}],
        "attacks": [{"name": "pgd", "params": {"eps": "16/255", "step_size": "4/255", "steps": 2}}],
        "defenses": {"names": ["bits-3", "resize-pad-1.2"], "eot_samples": 2},
        "batch_size": 3,
        "output_dir": str(tmp_path / "run"),
    }
    data.update(changes)
    return parse_spec(data)


def test_defense_axis_validation(tmp_path, tiny_open_clip_dir):
    spec = _spec(tmp_path, tiny_open_clip_dir, defenses={"names": ["JPEG-Q75"]})
    assert spec.defenses.names == ["jpeg-q75"]
    with pytest.raises(SpecError, match="need BPDA; set bpda: true"):
        _spec(tmp_path, tiny_open_clip_dir, defenses={"names": ["jpeg-q75"], "bpda": False})
    with pytest.raises(SpecError, match="unknown defense 'blur'"):
        _spec(tmp_path, tiny_open_clip_dir, defenses={"names": ["blur"]})
    # a spec without defenses keeps the fingerprint it had before the axis existed
    plain = _spec(tmp_path, tiny_open_clip_dir, defenses=None)
    assert "defenses" not in plain.canonical()
    assert plain.fingerprint() != spec.fingerprint()


def test_derived_defended_names_resolve_to_defended_victims(tmp_path, tiny_open_clip_dir):
    from robust.victims.registry import load_victim

    spec = _spec(tmp_path, tiny_open_clip_dir)
    evaluation = load_victim(spec.victim("tiny+bits-3").load_arg())
    adaptive = load_victim(spec.victim("tiny+resize-pad-1.2/adaptive").load_arg())
    assert isinstance(evaluation, DefendedVictim) and not evaluation.adaptive
    assert adaptive.adaptive and adaptive.eot_samples == 2 and adaptive.name.endswith("/adaptive")
    bits_adaptive = load_victim(spec.victim("tiny+bits-3/adaptive").load_arg())
    assert bits_adaptive.bpda
    with pytest.raises(KeyError):
        spec.victim("tiny+jpeg-q75")


def test_matrix_stores_clean_cost_non_adaptive_and_adaptive_rows(tmp_path, tiny_open_clip_dir):
    spec = _spec(tmp_path, tiny_open_clip_dir)
    result = run_matrix(spec)
    assert result.computed["defense_crafted"] == 2  # one adaptive entry per defense
    assert result.computed["defense_clean"] == 2
    assert result.computed["defense_evaluated"] == 4
    with ResultStore.in_run_dir(spec.run_dir) as store:
        columns = {row.defense for row in store.metrics(result.run_id)}
        assert columns == {
            None,
            "bits-3",
            "bits-3/adaptive",
            "resize-pad-1.2",
            "resize-pad-1.2/adaptive",
        }
        undefended = store.metrics(result.run_id, defense=ABSENT, attack=ABSENT, metric="ir_r5")
        defended = store.metrics(result.run_id, defense="bits-3", attack=ABSENT, metric="ir_r5")
        cost = store.metrics(result.run_id, defense="bits-3", metric="ir_r5_cost")
        assert cost[0].value == pytest.approx(undefended[0].value - defended[0].value)
        adaptive = store.metrics(result.run_id, defense="bits-3/adaptive", metric="ir_asr_r5")
        assert len(adaptive) == 1 and adaptive[0].source == "tiny" and adaptive[0].attack == "pgd"
    rows = {row.defense: row for row in result.defenses}
    assert set(rows) == {"bits-3", "resize-pad-1.2"}
    undefended_ir = result.ir_asr["pgd"][0, 0]
    for row in rows.values():
        assert row.undefended_ir_asr == pytest.approx(undefended_ir, nan_ok=True)
        assert not math.isnan(row.cost_ir_r1)
    # the undefended headline is not polluted by defended rows
    plain = run_matrix(_spec(tmp_path / "plain", tiny_open_clip_dir, defenses=None))
    assert plain.ir_asr["pgd"][0, 0] == pytest.approx(undefended_ir, nan_ok=True)
    # resuming computes nothing and reports the same table
    again = run_matrix(spec)
    assert again.computed["defense_crafted"] == again.computed["defense_evaluated"] == 0
    assert repr(again.defenses) == repr(result.defenses)  # NaN-aware equality


def test_defenses_show_prints_the_runs_table(tmp_path, tiny_open_clip_dir):
    from typer.testing import CliRunner

    from robust.cli import app

    spec = _spec(tmp_path, tiny_open_clip_dir, defenses={"names": ["median-3"], "adaptive": False})
    result = run_matrix(spec)
    assert result.computed["defense_crafted"] == 0  # non-adaptive only
    assert all(math.isnan(row.adaptive_ir_asr) for row in result.defenses)
    shown = CliRunner().invoke(app, ["defenses", "show", str(spec.run_dir)])
    assert shown.exit_code == 0, shown.output
    assert "median-3" in shown.output and "ASR" in shown.output
