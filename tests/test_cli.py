"""Each CLI command end to end on the world, including its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pypdf import PdfReader

from robust.harness.store import ResultStore
from robust.victims.registry import TOY_RETRIEVAL_VICTIMS
from tests.cli_helpers import assert_one_line_error, invoke


def test_victims_lists_names_families_and_weights():
    result = invoke("victims")
    assert result.exit_code == 0, result.output
    for fragment in ("clip-vit-b16", "clip-rn101", "toy-clip-vit", "toy-clip-rn", "missing"):
        assert fragment in result.output


def test_world_export_then_eval_reads_it_back(tmp_path, tiny_open_clip_dir):
    export_dir = tmp_path / "world"
    result = invoke("world", "export", str(export_dir), "--split", "val", "--count", "12")
    assert result.exit_code == 0, result.output
    annotation = export_dir / "annotations.json"
    assert annotation.is_file() and len(list((export_dir / "images").glob("*.png"))) == 12

    run_dir = tmp_path / "run"
    result = invoke(
        "eval",
        "--victim",
        f"open_clip:local-dir:{tiny_open_clip_dir}",
        "--dataset",
        f"karpathy:{export_dir}:{annotation}",
        "--limit",
        "10",
        "--out",
        str(run_dir),
    )
    assert result.exit_code == 0, result.output
    assert "TR R1" in result.output
    with ResultStore.in_run_dir(run_dir) as store:
        rows = store.metrics(store.latest_run_id())
        assert {row.metric for row in rows} >= {"tr_r1", "ir_r1", "r_mean"}
        ranks = store.query_ranks(
            store.latest_run_id(),
            victim=f"open_clip:local-dir:{tiny_open_clip_dir}",
            dataset="annotations",
            split="test[:10]",
            direction="tr",
            target=f"open_clip:local-dir:{tiny_open_clip_dir}",
        )
        assert ranks.shape == (10,)
        tr_r1 = next(r.value for r in rows if r.metric == "tr_r1")
        assert tr_r1 == pytest.approx(float(np.mean(ranks < 1)))


def test_eval_world_with_limit_writes_store(tmp_path, tiny_open_clip_dir):
    result = invoke(
        "eval",
        "--victim",
        f"open_clip:local-dir:{tiny_open_clip_dir}",
        "--dataset",
        "world:val",
        "--limit",
        "8",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    with ResultStore.in_run_dir(tmp_path) as store:
        info = store.run_info(store.latest_run_id())
        assert info["spec"]["dataset"] == "world:val[:8]"
        assert info["versions"]["torch"]


def test_zoo_train_writes_a_loadable_open_clip_folder(tmp_path):
    out = tmp_path / "toy"
    result = invoke(
        "zoo", "train", "toy-clip-vit", "--out", str(out), "--epochs", "1", "--train-images", "256"
    )
    assert result.exit_code == 0, result.output
    assert (out / "open_clip_config.json").is_file()
    assert (out / "open_clip_model.safetensors").is_file()
    import robust
    from robust.data.world import ZOO_WORLD
    from robust.zoo.recipes import world_image_size

    # `zoo train` trains on the zoo's world by default, so at its image size
    victim = robust.load_victim(f"open_clip:local-dir:{out}")
    assert victim.image_size == world_image_size(ZOO_WORLD)


def test_zoo_train_init_fine_tunes_a_member_and_keeps_its_record(tmp_path):
    """`--init` starts from the shipped weights (so one small step stays close to them) and
    the new training.json carries the record of the run it started from."""
    from robust.zoo.warm_start import clip_state

    out = tmp_path / "tuned"
    result = invoke(
        "zoo", "train", "toy-clip-vit", "--init", "toy-clip-vit", "--out", str(out),
        "--epochs", "1", "--train-images", "256", "--learning-rate", "1e-5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "training.json").read_text())
    assert record["recipe"]["init"] == "toy-clip-vit" and record["recipe"]["learning_rate"] == 1e-5
    assert record["init_record"]["steps"] > record["steps"] == 1
    shipped, tuned = clip_state("toy-clip-vit"), clip_state(str(out))
    assert shipped.keys() == tuned.keys()
    moved = max(float((shipped[k] - tuned[k]).abs().max()) for k in shipped)
    assert 0 < moved < 0.01


def test_zoo_refine_itm_writes_a_loadable_checkpoint_with_its_history(tmp_path):
    out = tmp_path / "albef"
    result = invoke(
        "zoo", "refine-itm", "toy-albef", "--out", str(out), "--train-images", "40",
        "--negatives-from-top", "4", "--learning-rate", "1e-3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "refined toy-albef's ITM" in result.output
    record = json.loads((out / "training.json").read_text())
    assert record["command"] == "robust zoo refine-itm toy-albef"
    assert record["recipe"]["negatives_from_top"] == 4
    assert record["init_record"]["name"] == "toy-albef"
    import robust

    assert robust.load_victim(f"albef:{out / 'checkpoint.pth'}").family == "albef"


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("eval", "--victim", "clip-vit-b17"), ("unknown victim", "clip-vit-b17")),
        (("zoo", "refine-itm", "toy-clip-vit"), ("no ITM to refine", "toy-albef")),
        (("zoo", "refine-itm", "toy-tcl", "--epochs", "0"), ("epochs",)),
        (
            ("zoo", "refine-itm", "toy-tcl", "--train-images", "1000001"),
            ("--train-images", "2..1,000,000"),
        ),
        (("zoo", "refine-itm", "toy-tcl", "--init", "/nonexistent"), ("no training.json",)),
        (
            ("zoo", "refine-itm", "toy-albef", "--init", "robust/zoo/toy-blip"),
            ("not a toy-albef folder", "no checkpoint.pth"),
        ),
        (
            ("zoo", "refine-itm", "toy-tcl", "--train-images", "3"),
            ("negatives_from_top 128", "--negatives-from-top"),
        ),
        (("eval", "--victim", "toy-clip-vit", "--dataset", "imagenet"), ("unknown dataset",)),
        (("eval", "--victim", "toy-clip-vit", "--dataset", "world:test-2k"), ("world split",)),
        (("eval", "--victim", "toy-clip-vit", "--limit", "0"), ("--limit",)),
        (
            ("eval", "--victim", "toy-clip-vit", "--dataset", "karpathy:/nonexistent:/no.json"),
            ("/no.json",),
        ),
        (("zoo", "train", "toy-imaginary"), ("no zoo recipe",)),
        (("zoo", "train", "toy-albef", "--init", "toy-clip-vit"), ("--init", "toy-albef")),
        (("zoo", "train", "toy-clip-vit", "--learning-rate", "0"), ("--learning-rate",)),
        (
            ("zoo", "train", "toy-clip-vit", "--train-images", "1000001"),
            ("--train-images", "1..1,000,000"),
        ),
        (("zoo", "train", "toy-clip-rn", "--init", "toy-clip-vit"), ("--init", "do not fit")),
        (("zoo", "train", "toy-clip-vit", "--init", "/nonexistent"), ("/nonexistent",)),
        (("world", "export", "/tmp/x", "--split", "nope"), ("unknown world split",)),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, fragments):
    assert_one_line_error(invoke(*args), *fragments)


def test_demo_refuses_a_folder_made_on_another_world_or_zoo(tmp_path):
    from robust.data.world import ZOO_WORLD
    from robust.demo import DEMO_RECORD, claim_run_dir, demo_inputs

    fresh = tmp_path / "fresh"
    claim_run_dir(fresh)
    assert json.loads((fresh / DEMO_RECORD).read_text()) == demo_inputs()
    claim_run_dir(fresh)  # the same world and zoo resume
    older = tmp_path / "older"
    (older / "clean").mkdir(parents=True)  # a demo from before the record existed
    result = invoke("demo", "--out", str(older))
    assert_one_line_error(result, "older version of the demo", "--out another folder")
    other = tmp_path / "other"
    other.mkdir()
    (other / DEMO_RECORD).write_text(json.dumps({"world": "world", "zoo": "0" * 16}))
    result = invoke("demo", "--out", str(other))
    assert_one_line_error(result, "made on world with zoo 0000", f"not on {ZOO_WORLD}")
    assert (older / "clean").is_dir() and (other / DEMO_RECORD).is_file()  # nothing removed


@pytest.mark.slow
def test_demo_runs_every_part_writes_the_report_and_resumes(tmp_path):
    report = tmp_path / "demo.pdf"
    result = invoke("demo", "--out", str(tmp_path), "--report", str(report))
    assert result.exit_code == 0, result.output
    assert "toy-clip-vit" in result.output and "toy-clip-rn" in result.output
    with ResultStore.in_run_dir(tmp_path / "clean") as store:
        rows = store.metrics(store.latest_run_id(), metric="tr_r1")
        assert {row.victim for row in rows} == set(TOY_RETRIEVAL_VICTIMS)
    for attack in ("pgd", "bert_attack", "sep_attack", "co_attack", "sga"):
        assert f"{attack}: R@1 ASR" in result.output
    with ResultStore.in_run_dir(tmp_path / "matrix") as store:
        sga = store.metrics(attack="sga", metric="tr_asr_r1", scoring="itc")
        pairs = {(row.source, row.target) for row in sga}
        assert pairs == {(s, t) for s in TOY_RETRIEVAL_VICTIMS for t in TOY_RETRIEVAL_VICTIMS}
        assert all(0.0 <= row.value <= 1.0 for row in sga)
        # the fusion toys are also scored by ITM re-ranking, as ALBEF, TCL and BLIP rank
        reranked = store.metrics(attack="sga", metric="tr_asr_r1", scoring="rerank")
        assert {row.target for row in reranked} == {"toy-albef", "toy-tcl", "toy-blip"}
    with ResultStore.in_run_dir(tmp_path / "patch") as store:
        patched = store.metrics(store.latest_run_id(), attack="advclip-patch", metric="tr_asr_r1")
        assert {row.target for row in patched} >= {"toy-clip-vit", "toy-clip-rn"}
    with ResultStore.in_run_dir(tmp_path / "defense") as store:
        defended = {row.defense for row in store.metrics(metric="tr_asr_r1")} - {None}
        assert defended == {
            "jpeg-q75",
            "jpeg-q75/adaptive",
            "resize-pad-1.15",
            "resize-pad-1.15/adaptive",
        }
    with ResultStore.in_run_dir(tmp_path / "matrix") as store:
        commands = [store.run_info(r)["spec"].get("command") for r in store.run_ids()]
        assert sorted(commands) == ["bias cache", "bias caption", "matrix"]
    with ResultStore.in_run_dir(tmp_path / "anyattack") as store:
        targeted = store.metrics(store.latest_run_id(), attack="anyattack", metric="adv_tr_r1")
        assert {row.target for row in targeted} == {"toy-clip-vit", "toy-clip-rn"}
    text = "".join(page.extract_text() for page in PdfReader(report).pages)
    assert "Transfer" in text and "toy-clip-vit" in text
    # the matrix read against the published pattern, printed and shown in the report
    record = json.loads((tmp_path / "matrix" / "calibration.json").read_text())
    assert record["split"] == "test-1k[:50]" and len(record["bands"]) == 6
    assert "World calibration" in result.output and "World calibration" in text

    def run_counts() -> list[int]:
        counts = []
        for part in ("clean", "matrix", "defense", "patch", "anyattack"):
            with ResultStore.in_run_dir(tmp_path / part) as store:
                counts.append(len(store.run_ids()))
        return counts

    before = run_counts()
    again = invoke("demo", "--out", str(tmp_path), "--report", str(report))
    assert again.exit_code == 0, again.output
    assert run_counts() == before == [1, 3, 1, 1, 1]
