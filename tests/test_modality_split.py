"""The matrix's evaluation beyond the papers': a multimodal attack's image and text halves
scored on their own, spreads over seeds, and ASR against the same run's clean baseline."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import robust.eval.rerank as rerank_module
import robust.harness.evaluate as evaluate_module
from robust.data import load_dataset
from robust.data.dataset import ArrayImages
from robust.data.images import load_images, to_uint8_array
from robust.eval.retrieval import RECALL_KS, RetrievalResult, asr_sga, attack_success
from robust.harness.cache import AdversarialCache
from robust.harness.cells import adversarial_dataset
from robust.harness.evaluate import retrieval_results
from robust.harness.matrix import run_matrix
from robust.harness.results import MODALITY_PARTS, part_metric
from robust.harness.store import ResultStore
from robust.victims.registry import load_victim
from tests import test_matrix
from tests.test_matrix import LIMIT, PGD_PARAMS, clip32, clip48, make_spec

# test_matrix's tiny victims, as fixtures of this module too
albef_path = test_matrix.albef_path
clip48_dir = test_matrix.clip48_dir

SPLIT = f"val[:{LIMIT}]"
SEEDS = (0, 1)
SCORINGS = {"clip32": ("itc",), "clip48": ("itc",), "albef32": ("itc", "rerank")}


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, tiny_open_clip_dir, clip48_dir, albef_path, tiny_mlm_dir):
    """A 32 px CLIP source; CLIP (32, 48 px) and ALBEF targets; PGD and SGA, two seeds; with
    every gallery encoding counted."""
    run_dir = tmp_path_factory.mktemp("split-run")
    albef = {"name": "albef32", "spec": f"albef:{albef_path}"}
    spec = make_spec(
        run_dir,
        sources=[clip32(tiny_open_clip_dir)],
        targets=[clip32(tiny_open_clip_dir), clip48(clip48_dir), albef],
        attacks=[
            {"name": "pgd", "params": PGD_PARAMS},
            {"name": "sga", "params": {"eps": "8/255", "steps": 2}, "mlm": str(tiny_mlm_dir)},
        ],
        seeds=list(SEEDS),
    )
    encoded: list[int] = []
    original = rerank_module.encode_gallery

    def counting(victim, dataset, **kwargs):
        encoded.append(dataset.num_images)
        return original(victim, dataset, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rerank_module, "encode_gallery", counting)
        patch.setattr(evaluate_module, "encode_gallery", counting)
        result = run_matrix(spec)
    return spec, result, encoded


def cell_metrics(store, run_id, attack, seed, target, scoring) -> dict[str, float]:
    rows = store.metrics(
        run_id, attack=attack, seed=seed, source="clip32", target=target, scoring=scoring
    )
    return {row.metric: row.value for row in rows}


def test_only_multimodal_attacks_get_both_parts_for_every_scoring(split_run):
    spec, result, _ = split_run
    with ResultStore.in_run_dir(spec.run_dir) as store:
        for target, scorings in SCORINGS.items():
            for scoring in scorings:
                for seed in SEEDS:
                    sga = cell_metrics(store, result.run_id, "sga", seed, target, scoring)
                    pgd = cell_metrics(store, result.run_id, "pgd", seed, target, scoring)
                    for part in MODALITY_PARTS:
                        for metric in ("tr_r1", "ir_r10", "tr_asr_r1", "ir_asr_r5", "tr_drop_r1"):
                            assert part_metric(metric, part) in sga, (target, scoring, part)
                    assert not any(name.endswith(MODALITY_PARTS) for name in pgd)
    assert set(result.parts) == set(MODALITY_PARTS)
    for part in MODALITY_PARTS:
        assert list(result.parts[part]) == ["sga"]
        tr, ir = result.parts[part]["sga"]
        assert tr.shape == ir.shape == (1, 3)
        # a part is undefined exactly where the attack's ASR is: no query right on clean data
        assert np.array_equal(np.isnan(tr), np.isnan(result.tr_asr["sga"]))


def test_parts_are_the_half_adversarial_galleries_scored_against_the_clean_baseline(
    split_run, clip48_dir, albef_path
):
    spec, result, _ = split_run
    dataset = load_dataset("world:val", limit=LIMIT)
    examples = AdversarialCache(spec.run_dir / "cache").entry("sga", "clip32", 0).load()
    clean_pixels = to_uint8_array(load_images(dataset.images, range(LIMIT), 32, "crop"))
    clean_texts = dataset.captions_of(range(LIMIT))
    assert examples.texts != clean_texts and not np.array_equal(examples.images, clean_pixels)
    galleries = {
        "image_only": adversarial_dataset(dataset, examples.images, clean_texts),
        "text_only": adversarial_dataset(dataset, clean_pixels, examples.texts),
    }
    clean_data = replace(dataset, images=ArrayImages(clean_pixels))
    for ref in (clip48(clip48_dir), {"name": "albef32", "spec": f"albef:{albef_path}"}):
        target = load_victim(ref)
        clean = retrieval_results(target, clean_data, batch_size=8, k_test=4)
        with ResultStore.in_run_dir(spec.run_dir) as store:
            for part, gallery in galleries.items():
                direct = retrieval_results(target, gallery, batch_size=8, k_test=4)
                for scoring, expected in direct.items():
                    stored = cell_metrics(store, result.run_id, "sga", 0, ref["name"], scoring)
                    scored = {**expected.metrics(), **attack_success(clean[scoring], expected)}
                    for metric, value in scored.items():
                        assert stored[part_metric(metric, part)] == pytest.approx(
                            value, nan_ok=True
                        ), (ref["name"], part, scoring, metric)


def test_the_parts_reuse_the_clean_and_adversarial_encodings(split_run):
    _, result, encoded = split_run
    # one encoding per clean cell (3 targets, one source geometry) and per evaluated cell;
    # the four half-adversarial galleries of every SGA cell add none
    assert result.computed["clean"] == 3 and result.computed["evaluated"] == 12
    assert len(encoded) == 3 + 12


def test_tables_give_each_cell_its_spread_over_seeds(split_run):
    spec, result, _ = split_run
    spreads = []
    with ResultStore.in_run_dir(spec.run_dir) as store:
        for label in ("pgd", "sga"):
            for t, target in enumerate(result.targets):
                scoring = result.headline_scoring[target]
                values = [
                    cell_metrics(store, result.run_id, label, seed, target, scoring)["ir_asr_r1"]
                    for seed in SEEDS
                ]
                assert result.ir_asr[label][0, t] == pytest.approx(np.mean(values))
                spread = result.ir_asr_spread[label][0, t]
                assert spread == pytest.approx(np.std(values, ddof=1))
                spreads.append(spread)
    assert any(spread > 0 for spread in spreads)  # the seeds do differ somewhere
    assert result.tr_asr_spread["sga"].shape == (1, 3)


def test_asr_counts_the_queries_this_run_found_right_on_clean_data(split_run):
    """Originally-correct queries are this run's clean evaluation of the target at the
    source's preprocessing: recomputed from the stored ranks, every stored ASR matches."""
    spec, result, _ = split_run
    keys = {"dataset": "world", "split": SPLIT, "source": "clip32"}
    checked = 0
    with ResultStore.in_run_dir(spec.run_dir) as store:

        def ranks(target: str, scoring: str, label: str | None, seed: int | None):
            found = {
                direction: store.query_ranks(
                    result.run_id,
                    victim=target,
                    target=target,
                    attack=label,
                    seed=seed,
                    scoring=scoring,
                    direction=direction,
                    **keys,
                )  # fmt: skip
                for direction in ("tr", "ir")
            }
            return RetrievalResult(found["tr"], found["ir"])

        for target, scorings in SCORINGS.items():
            for scoring in scorings:
                baseline = ranks(target, scoring, None, None)
                for label in ("pgd", "sga"):
                    for seed in SEEDS:
                        attacked = ranks(target, scoring, label, seed)
                        stored = cell_metrics(store, result.run_id, label, seed, target, scoring)
                        for k in RECALL_KS:
                            for side in ("tr", "ir"):
                                expected = asr_sga(
                                    getattr(baseline, f"{side}_correct")(k),
                                    getattr(attacked, f"{side}_correct")(k),
                                )
                                assert stored[f"{side}_asr_r{k}"] == pytest.approx(
                                    expected, nan_ok=True
                                )
                        checked += 1
    assert checked == 2 * len(SEEDS) * 4  # 3 ITC targets and one re-ranked
