"""The transfer-matrix runner end to end on tiny models: rows, fairness, caching, resume."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import robust.harness.cells as cells_module
from robust.attacks import TextAttack, register_attack
from robust.attacks.pgd import PGD
from robust.cli import app
from robust.data import load_dataset
from robust.data.dataset import ArrayImages
from robust.data.images import load_images, to_uint8_array
from robust.harness.cache import AdversarialCache
from robust.harness.cells import batch_seed
from robust.harness.executors import EvalCell, LocalExecutor
from robust.harness.matrix import MatrixResult, run_matrix
from robust.harness.spec import SpecError, parse_spec
from robust.harness.store import ABSENT, ResultStore
from robust.victims.registry import load_victim
from tests.conftest import TINY_OPEN_CLIP_CFG, TINY_PREPROCESS
from tests.schema1_store import downgrade_matrix_store

LIMIT = 6
PGD_PARAMS = {"eps": "16/255", "step_size": "4/255", "steps": 3}
ASR_METRICS = ("tr_asr_r1", "ir_asr_r1", "tr_drop_r1", "ir_drop_r1", "tr_asr_r5", "ir_drop_r10")


@pytest.fixture(scope="module")
def clip48_dir(tmp_path_factory) -> Path:
    """A second tiny open_clip ViT at 48 px, so images must cross resolutions."""
    from open_clip.model import CLIP

    from robust.victims.openclip import save_local_dir

    config = copy.deepcopy(TINY_OPEN_CLIP_CFG)
    config["vision_cfg"]["image_size"] = 48
    torch.manual_seed(1)
    model = CLIP(**config).eval()
    folder = tmp_path_factory.mktemp("tiny-clip-48")
    return save_local_dir(model, config, {**TINY_PREPROCESS, "size": 48}, folder)


@pytest.fixture(scope="module")
def albef_path(tmp_path_factory) -> Path:
    """A tiny random ALBEF (fusion: ITC + ITM re-rank, squash resize) as a checkpoint file."""
    from robust.victims.albef import AlbefConfig, AlbefModel, AlbefVictim, save_albef_checkpoint

    words = "a an the red blue green yellow circle square triangle star on left right of".split()
    folder = tmp_path_factory.mktemp("tiny-albef")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    config = AlbefConfig(
        image_size=32,
        patch_size=16,
        vision_width=48,
        vision_depth=2,
        vision_heads=2,
        vocab_size=5 + len(words),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        fusion_layer=2,
        encoder_width=48,
        embed_dim=16,
    )
    torch.manual_seed(0)
    victim = AlbefVictim("tiny-albef", AlbefModel(config), vocab)
    return save_albef_checkpoint(victim, folder / "model" / "checkpoint.pth")


def clip32(tiny_open_clip_dir: Path) -> dict:
    return {"name": "clip32", "spec": f"open_clip:local-dir:{tiny_open_clip_dir}"}


def clip48(clip48_dir: Path) -> dict:
    return {"name": "clip48", "spec": f"open_clip:local-dir:{clip48_dir}"}


def make_spec(output_dir: Path, sources, targets, attacks, **changes):
    data = {
        "name": "tiny-matrix",
        "dataset": "world:val",
        "limit": LIMIT,
        "sources": sources,
        "targets": targets,
        "attacks": attacks,
        "batch_size": 4,
        "eval_batch_size": 8,
        "k_test": 4,
        "output_dir": str(output_dir),
    }
    data.update(changes)
    return parse_spec(data)


@dataclass(frozen=True)
class NoParams:
    """A test attack without hyper-parameters."""


class GuideRecorder(TextAttack):
    """Reverses every caption and records the guide embeddings it was given."""

    name = "guide_recorder"
    Params = NoParams
    guides: list[tuple[list[str], torch.Tensor]] = []

    def params(self) -> NoParams:
        return NoParams()

    def __call__(self, texts, guide_embeddings, generator=None):
        GuideRecorder.guides.append((list(texts), guide_embeddings.detach().clone()))
        return [" ".join(reversed(text.split())) for text in texts]


@pytest.fixture
def counted_pgd(monkeypatch):
    """Counts PGD calls; `fail_on[0] = n` makes the n-th call raise (a kill mid-craft)."""
    calls: list[int] = []
    fail_on = [0]
    original = PGD.__call__

    def counting(self, images, texts, generator=None, **kwargs):
        calls.append(images.shape[0])
        if fail_on[0] and len(calls) == fail_on[0]:
            raise KeyboardInterrupt("killed mid-craft")
        return original(self, images, texts, generator, **kwargs)

    monkeypatch.setattr(PGD, "__call__", counting)
    return calls, fail_on


class InterruptAfterFirstEval(LocalExecutor):
    """Behaves like LocalExecutor until the first adversarial evaluation, then dies."""

    def map(self, function, cells):
        for cell in cells:
            result = function(cell)
            yield result
            if isinstance(cell, EvalCell):
                raise KeyboardInterrupt("killed after the first evaluation")


def stored(run_dir: Path) -> tuple[list, dict]:
    """Every metric row and every per-query rank array of the run in `run_dir`."""
    with ResultStore.in_run_dir(run_dir) as store:
        (run_id,) = store.run_ids()
        rows = store.metrics(run_id)
        ranks = {}
        for row in rows:
            if row.metric != "tr_r1":
                continue
            for direction in ("tr", "ir"):
                key = (row.attack, row.seed, row.source, row.target, row.scoring, direction)
                ranks[key] = store.query_ranks(
                    run_id,
                    victim=row.victim,
                    dataset=row.dataset,
                    split=row.split,
                    direction=direction,
                    attack=row.attack,
                    seed=row.seed,
                    source=row.source,
                    target=row.target,
                    scoring=row.scoring,
                )
    return rows, ranks


def png_bytes(run_dir: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(run_dir)): path.read_bytes()
        for path in sorted((run_dir / "cache").rglob("*.png"))
    }


def same_values(first: list, second: list) -> bool:
    def key(row):
        return (row.attack, row.seed, row.source, row.target, row.scoring, row.metric)

    a = {key(row): row.value for row in first}
    b = {key(row): row.value for row in second}
    return a.keys() == b.keys() and all(
        (np.isnan(a[k]) and np.isnan(b[k])) or a[k] == b[k] for k in a
    )


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_open_clip_dir, clip48_dir, albef_path, tiny_mlm_dir):
    """Two CLIP sources at 32/48 px; CLIP and ALBEF targets; PGD, BERT-Attack and SGA."""
    run_dir = tmp_path_factory.mktemp("full-run")
    mlm = str(tiny_mlm_dir)
    spec = make_spec(
        run_dir,
        sources=[clip32(tiny_open_clip_dir), clip48(clip48_dir)],
        targets=[
            clip32(tiny_open_clip_dir),
            clip48(clip48_dir),
            {"name": "albef32", "spec": f"albef:{albef_path}"},
        ],
        attacks=[
            {"name": "pgd", "params": PGD_PARAMS},
            {"name": "bert_attack", "params": {"max_words": 1}, "mlm": mlm},
            {"name": "sga", "label": "sga-8", "params": {"eps": "8/255", "steps": 2}, "mlm": mlm},
        ],
    )
    return spec, run_matrix(spec)


def test_every_cell_has_adversarial_and_clean_rows(full_run):
    spec, result = full_run
    with ResultStore.in_run_dir(spec.run_dir) as store:
        rows = store.metrics(result.run_id, dataset="world", split=f"val[:{LIMIT}]")
        for attack in ("pgd", "bert_attack", "sga-8"):
            for source in ("clip32", "clip48"):
                for target in ("clip32", "clip48", "albef32"):
                    scorings = ("itc", "rerank") if target == "albef32" else ("itc",)
                    for scoring in scorings:
                        cell = {
                            r.metric
                            for r in rows
                            if (r.attack, r.source, r.target, r.scoring)
                            == (attack, source, target, scoring)
                        }
                        assert set(ASR_METRICS) | {"tr_r1", "ir_r10", "r_mean"} <= cell, (
                            attack,
                            source,
                            target,
                            scoring,
                        )
                        assert all(r.victim == target for r in rows if r.target == target)
        clean = store.metrics(result.run_id, attack=ABSENT, metric="tr_r1")
        assert {(r.source, r.target, r.scoring) for r in clean} == {
            (s, t, sc)
            for s in ("clip32", "clip48")
            for t, scorings in (
                ("clip32", ("itc",)),
                ("clip48", ("itc",)),
                ("albef32", ("itc", "rerank")),
            )
            for sc in scorings
        }
        ranks = store.query_ranks(
            result.run_id,
            victim="albef32",
            dataset="world",
            split=f"val[:{LIMIT}]",
            direction="ir",
            attack="sga-8",
            seed=0,
            source="clip48",
            target="albef32",
            scoring="rerank",
        )
        assert ranks.shape == (load_dataset("world:val", limit=LIMIT).num_captions,)


def test_matrix_result_headline(full_run):
    spec, result = full_run
    assert isinstance(result, MatrixResult)
    assert result.sources == ("clip32", "clip48")
    assert result.targets == ("clip32", "clip48", "albef32")
    assert result.headline_scoring == {"clip32": "itc", "clip48": "itc", "albef32": "rerank"}
    assert result.white_box.tolist() == [[True, False, False], [False, True, False]]
    for label in ("pgd", "bert_attack", "sga-8"):
        assert result.tr_asr[label].shape == result.ir_asr[label].shape == (2, 3)
    # white-box PGD breaks image retrieval for queries that were right
    assert result.ir_asr["pgd"][0, 0] > 0 and result.ir_asr["pgd"][1, 1] > 0
    assert result.asr("pgd", "clip32", "clip32")[1] == result.ir_asr["pgd"][0, 0]
    assert result.computed["crafted"] == 6 and result.computed["evaluated"] == 18
    # one clean evaluation per (target, source geometry): both CLIPs differ in size
    assert result.computed["clean"] == 6


def test_text_attack_changes_captions_and_keeps_images(full_run):
    spec, _ = full_run
    cache = AdversarialCache(spec.run_dir / "cache")
    pgd = cache.entry("pgd", "clip32", 0).load()
    text = cache.entry("bert_attack", "clip32", 0).load()
    dataset = load_dataset("world:val", limit=LIMIT)
    clean = to_uint8_array(load_images(dataset.images, range(LIMIT), 32, "crop"))
    assert np.array_equal(text.images, clean)
    assert not np.array_equal(pgd.images, clean)
    assert np.abs(pgd.images.astype(int) - clean.astype(int)).max() <= 16
    assert pgd.texts == dataset.captions_of(range(LIMIT))
    assert text.texts != dataset.captions_of(range(LIMIT))
    assert text.config["attack"] == "bert_attack" and text.config["max_words"] == 1
    manifest = text.manifest
    assert manifest["image_size"] == 32 and manifest["num_images"] == LIMIT


def test_rerun_recomputes_nothing(full_run, counted_pgd):
    spec, first = full_run
    calls, _ = counted_pgd
    again = run_matrix(spec)
    assert calls == []
    assert again.computed == {"crafted": 0, "crafted_batches": 0, "clean": 0, "evaluated": 0}
    assert again.run_id == first.run_id
    for label in first.labels:
        np.testing.assert_array_equal(again.ir_asr[label], first.ir_asr[label])


def test_different_spec_in_the_same_directory_is_refused(full_run):
    spec, _ = full_run
    changed = spec.model_copy(update={"seeds": [1]})
    with pytest.raises(SpecError) as caught:
        run_matrix(changed)
    assert "\n" not in str(caught.value) and "output_dir" in str(caught.value)


# -- determinism and resume ------------------------------------------------------------------


def pgd_spec(run_dir: Path, tiny_open_clip_dir, clip48_dir, **changes):
    return make_spec(
        run_dir,
        sources=[clip32(tiny_open_clip_dir), clip48(clip48_dir)],
        targets=[clip32(tiny_open_clip_dir), clip48(clip48_dir)],
        attacks=[{"name": "pgd", "params": PGD_PARAMS}],
        **changes,
    )


def test_same_seed_gives_identical_pngs_other_seed_differs(tmp_path, tiny_open_clip_dir):
    sources = [clip32(tiny_open_clip_dir)]
    attacks = [{"name": "pgd", "params": PGD_PARAMS}]
    first = make_spec(tmp_path / "a", sources, sources, attacks, seeds=[0, 1])
    second = make_spec(tmp_path / "b", sources, sources, attacks, seeds=[0, 1])
    result = run_matrix(first)
    run_matrix(second)
    pngs_a, pngs_b = png_bytes(tmp_path / "a"), png_bytes(tmp_path / "b")
    assert len(pngs_a) == 2 * LIMIT and pngs_a == pngs_b
    seed0 = [v for k, v in pngs_a.items() if "seed-0" in k]
    seed1 = [v for k, v in pngs_a.items() if "seed-1" in k]
    assert seed0 != seed1
    with ResultStore.in_run_dir(tmp_path / "a") as store:
        attacks_stored = {(r.attack, r.seed) for r in store.metrics(result.run_id) if r.attack}
        clean_seeds = {r.seed for r in store.metrics(result.run_id, attack=ABSENT)}
    assert attacks_stored == {("pgd", 0), ("pgd", 1)} and clean_seeds == {None}
    assert batch_seed(0, 1) == batch_seed(0, 1) != batch_seed(1, 0)


@pytest.mark.parametrize("seeds", [[0, 1], [5]])
def test_a_run_stored_by_schema_1_resumes_without_recomputing(
    tmp_path, tiny_open_clip_dir, clip48_dir, counted_pgd, seeds
):
    calls, _ = counted_pgd
    spec = make_spec(
        tmp_path,
        sources=[clip32(tiny_open_clip_dir)],
        targets=[clip32(tiny_open_clip_dir), clip48(clip48_dir)],
        attacks=[{"name": "pgd", "params": PGD_PARAMS}],
        seeds=seeds,
    )
    first = run_matrix(spec)
    rows, ranks = stored(tmp_path)
    # the same run as the code before the seed column wrote it (`pgd@seed=N` with several)
    downgrade_matrix_store(tmp_path / "results.sqlite")
    calls.clear()

    again = run_matrix(spec)
    assert calls == [] and again.run_id == first.run_id
    assert again.computed == {"crafted": 0, "crafted_batches": 0, "clean": 0, "evaluated": 0}
    np.testing.assert_array_equal(again.tr_asr["pgd"], first.tr_asr["pgd"])
    np.testing.assert_array_equal(again.clean_ir_r1, first.clean_ir_r1)
    migrated_rows, migrated_ranks = stored(tmp_path)
    assert same_values(rows, migrated_rows) and len(rows) == len(migrated_rows)
    assert ranks.keys() == migrated_ranks.keys()


def test_resume_after_kills_matches_an_uninterrupted_run(
    tmp_path, tiny_open_clip_dir, clip48_dir, counted_pgd
):
    calls, fail_on = counted_pgd
    reference = run_matrix(pgd_spec(tmp_path / "reference", tiny_open_clip_dir, clip48_dir))
    uninterrupted_calls = len(calls)
    assert uninterrupted_calls == 4  # 2 sources x 2 batches (6 images, batch 4)
    calls.clear()

    spec = pgd_spec(tmp_path / "resumed", tiny_open_clip_dir, clip48_dir)
    fail_on[0] = 2  # killed while crafting the second batch of the first entry
    with pytest.raises(KeyboardInterrupt):
        run_matrix(spec)
    fail_on[0] = 0
    entry = AdversarialCache(spec.run_dir / "cache").entry("pgd", "clip32", 0)
    assert not entry.is_complete() and len(list(entry.images_dir.glob("*.png"))) == 4

    assert calls == [4, 2]  # batch 0 finished, batch 1 killed
    with pytest.raises(KeyboardInterrupt):
        run_matrix(spec, executor=InterruptAfterFirstEval())
    # only the killed batch of clip32 and both batches of clip48: batch 0 was not redone
    assert calls[2:] == [2, 4, 2]
    rows, _ = stored(spec.run_dir)
    assert {r.attack for r in rows} == {None, "pgd"}

    final = run_matrix(spec)
    assert len(calls) == 5 and final.computed["crafted"] == 0
    assert final.computed["evaluated"] == 3  # the first evaluation was kept
    reference_rows, reference_ranks = stored(tmp_path / "reference")
    resumed_rows, resumed_ranks = stored(spec.run_dir)
    assert same_values(reference_rows, resumed_rows)
    assert reference_ranks.keys() == resumed_ranks.keys()
    for key, ranks in reference_ranks.items():
        np.testing.assert_array_equal(ranks, resumed_ranks[key])
    assert png_bytes(tmp_path / "reference") == png_bytes(spec.run_dir)
    np.testing.assert_array_equal(final.ir_asr["pgd"], reference.ir_asr["pgd"])


def test_stale_cache_from_another_budget_is_recrafted(
    tmp_path, tiny_open_clip_dir, clip48_dir, counted_pgd
):
    calls, _ = counted_pgd
    run_matrix(pgd_spec(tmp_path, tiny_open_clip_dir, clip48_dir))
    (tmp_path / "results.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / 'results.sqlite'}{suffix}").unlink(missing_ok=True)
    calls.clear()
    changed = pgd_spec(tmp_path, tiny_open_clip_dir, clip48_dir)
    changed = changed.model_copy(
        update={"attacks": [changed.attacks[0].model_copy(update={"params": {"eps": 0.01}})]}
    )
    run_matrix(changed)
    assert len(calls) == 4
    config = json.loads(
        (
            AdversarialCache(tmp_path / "cache").entry("pgd", "clip32", 0).path / "config.json"
        ).read_text()
    )
    assert config["eps"] == 0.01


def test_sources_with_the_same_preprocessing_share_one_clean_evaluation(
    tmp_path, tiny_open_clip_dir
):
    same_model = {"name": "clip32-again", "spec": clip32(tiny_open_clip_dir)["spec"]}
    spec = make_spec(
        tmp_path,
        sources=[clip32(tiny_open_clip_dir), same_model],
        targets=[clip32(tiny_open_clip_dir)],
        attacks=[{"name": "pgd", "params": PGD_PARAMS}],
    )
    result = run_matrix(spec)
    assert result.computed["clean"] == 1 and result.computed["evaluated"] == 2
    assert result.white_box.tolist() == [[True], [True]]  # same weights under two names
    with ResultStore.in_run_dir(tmp_path) as store:
        clean = store.metrics(result.run_id, attack=ABSENT, target="clip32")
    by_source = {
        source: {r.metric: r.value for r in clean if r.source == source}
        for source in ("clip32", "clip32-again")
    }
    assert by_source["clip32"] and by_source["clip32"] == by_source["clip32-again"]
    np.testing.assert_array_equal(result.ir_asr["pgd"][0], result.ir_asr["pgd"][1])


# -- fairness across resolutions -------------------------------------------------------------


def test_cross_resolution_clean_and_adversarial_take_the_same_path(
    tmp_path, tiny_open_clip_dir, clip48_dir, monkeypatch
):
    """Source at 32 px, target at 48 px: the target sees clean and adversarial images alike
    as uint8 arrays at 32 px, resized by load_images to 48 px."""
    import robust.data.images as images_module

    seen: list[tuple[str, str, tuple[int, ...], int, str]] = []
    original_retrieval = cells_module.retrieval_results
    original_load = images_module.load_images
    phase = ["?"]

    def recording_retrieval(victim, dataset, **kwargs):
        pixels = dataset.images.pixels
        phase[0] = "clean" if np.array_equal(pixels, clean_pixels) else "adversarial"
        return original_retrieval(victim, dataset, **kwargs)

    def recording_load(source, indices, size, mode="squash"):
        if isinstance(source, ArrayImages):
            seen.append((phase[0], "array", source.pixels.shape[1:], size, mode))
        else:
            seen.append((phase[0], type(source).__name__, (), size, mode))
        return original_load(source, indices, size, mode)

    dataset = load_dataset("world:val", limit=LIMIT)
    clean_pixels = to_uint8_array(original_load(dataset.images, range(LIMIT), 32, "crop"))
    monkeypatch.setattr(cells_module, "retrieval_results", recording_retrieval)
    monkeypatch.setattr(images_module, "load_images", recording_load)

    spec = make_spec(
        tmp_path,
        sources=[clip32(tiny_open_clip_dir)],
        targets=[clip48(clip48_dir)],
        attacks=[{"name": "pgd", "params": PGD_PARAMS}],
    )
    result = run_matrix(spec)
    target_loads = [entry for entry in seen if entry[3] == 48]
    assert {entry[0] for entry in target_loads} == {"clean", "adversarial"}
    for entry in target_loads:
        assert entry[1:] == ("array", (32, 32, 3), 48, "crop"), entry
    # nothing reached the 48 px target straight from the dataset's own images
    assert all(entry[1] == "array" for entry in seen if entry[3] == 48)

    # the stored clean baseline is exactly the target on 32 px uint8 images resized to 48
    from robust.eval.retrieval import evaluate_retrieval

    target = load_victim(clip48(clip48_dir))
    expected = evaluate_retrieval(target, replace(dataset, images=ArrayImages(clean_pixels)))
    with ResultStore.in_run_dir(tmp_path) as store:
        stored_ranks = store.query_ranks(
            result.run_id,
            victim="clip48",
            dataset="world",
            split=f"val[:{LIMIT}]",
            direction="ir",
            source="clip32",
            target="clip48",
        )
    np.testing.assert_array_equal(stored_ranks, expected.ir_ranks)


def test_text_attack_guides_are_the_paired_clean_images(tmp_path, tiny_open_clip_dir):
    register_attack(GuideRecorder)  # here, not at import: test_ray_executor imports this module
    GuideRecorder.guides.clear()
    spec = make_spec(
        tmp_path,
        sources=[clip32(tiny_open_clip_dir)],
        targets=[clip32(tiny_open_clip_dir)],
        attacks=[{"name": "guide_recorder"}],
    )
    run_matrix(spec)
    dataset = load_dataset("world:val", limit=LIMIT)
    source = load_victim(clip32(tiny_open_clip_dir))
    with torch.no_grad():
        embeddings = source.encode_image(load_images(dataset.images, range(LIMIT), 32, "crop"))
    texts, guides = zip(*GuideRecorder.guides, strict=True)
    flat_texts = [t for batch in texts for t in batch]
    flat_guides = torch.cat(guides)
    assert flat_texts == list(dataset.captions)  # world captions are stored image by image
    owners = torch.as_tensor(dataset.caption_image)
    torch.testing.assert_close(flat_guides, embeddings[owners])
    stored_texts = AdversarialCache(tmp_path / "cache").entry("guide_recorder", "clip32", 0)
    assert stored_texts.load().texts[0][0] == " ".join(reversed(dataset.captions[0].split()))


# -- CLI -------------------------------------------------------------------------------------


def test_cli_matrix_prints_one_table_per_attack(tmp_path, tiny_open_clip_dir, clip48_dir):
    import yaml

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "name": "cli",
                "dataset": "world:val",
                "limit": LIMIT,
                "sources": [clip32(tiny_open_clip_dir), clip48(clip48_dir)],
                "targets": [clip32(tiny_open_clip_dir), clip48(clip48_dir)],
                "attacks": [
                    {"name": "pgd", "params": PGD_PARAMS},
                    {"name": "pgd", "label": "pgd-small", "params": {"eps": "2/255", "steps": 1}},
                ],
                "batch_size": 4,
            }
        )
    )
    result = CliRunner().invoke(
        app, ["matrix", str(spec_file), "--output-dir", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    assert "pgd: R@1 ASR, TR / IR (%)" in result.output
    assert "pgd-small: R@1 ASR" in result.output
    assert "*" in result.output and "clip48" in result.output
    assert (tmp_path / "run" / "results.sqlite").is_file()
