"""The report PDF: built from hand-written stores (no models), sections follow the data, and the
numbers printed are the stored ones."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
from pypdf import PdfReader
from reportlab.platypus import Flowable
from typer.testing import CliRunner

from robust.cli import app
from robust.harness.store import MetricRow, ResultStore
from robust.report import (
    ReportDataError,
    ReportError,
    analysis,
    build_report,
    load_report_data,
)

PROVENANCE = {
    "versions": {"python": "3.11.7", "torch": "2.14.1"},
    "git_commit": "0123456789abcdef0123",
    "git_dirty": False,
    "hardware": {"cpu_count": 2, "machine": "x86_64"},
}
LONG_VICTIM = "open_clip:ViT-B-16-quickgelu@openai"
CLEAN = {"toy-clip-vit": 0.8734, "toy-clip-rn": 0.912}
EPS = {"pgd": 2 / 255, "pgd-eps4": 4 / 255}
# (attack, source, target) -> (tr_asr_r1, ir_asr_r1)
ASR = {
    ("pgd", "toy-clip-vit", "toy-clip-vit"): (0.9, 0.8),
    ("pgd", "toy-clip-vit", "toy-clip-rn"): (0.425, 0.3),
    ("pgd", "toy-clip-rn", "toy-clip-vit"): (0.2, 0.1),
    ("pgd", "toy-clip-rn", "toy-clip-rn"): (0.95, 0.85),
    ("pgd-eps4", "toy-clip-vit", "toy-clip-vit"): (1.0, 0.9),
    ("pgd-eps4", "toy-clip-vit", "toy-clip-rn"): (0.6, 0.5),
    ("pgd-eps4", "toy-clip-rn", "toy-clip-vit"): (0.35, 0.25),
    ("pgd-eps4", "toy-clip-rn", "toy-clip-rn"): (1.0, 1.0),
}
VICTIMS = ("toy-clip-vit", "toy-clip-rn")


def _recalls(r1: float) -> dict[str, float]:
    r5, r10 = min(1.0, r1 + 0.05), 1.0
    return {
        "tr_r1": r1,
        "tr_r5": r5,
        "tr_r10": r10,
        "ir_r1": r1 - 0.1,
        "ir_r5": r5,
        "ir_r10": r10,
        "r_mean": (2 * (r1 + r5 + r10) - 0.1) / 6,
    }


def _matrix_spec(seeds: list[int]) -> dict:
    refs = [{"name": name, "spec": name} for name in VICTIMS]
    attacks = [
        {"name": "pgd", "label": label, "mlm": None, "params": {"eps": eps, "steps": 10}}
        for label, eps in EPS.items()
    ]
    spec = {"attacks": attacks, "dataset": "world:test-1k", "limit": 20, "seeds": seeds}
    spec |= {"sources": refs, "targets": refs}
    return {"command": "matrix", "name": "tiny-matrix", "fingerprint": "f" * 16, "spec": spec}


def write_clean_store(run_dir, victims=VICTIMS) -> None:
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(
            {"command": "eval", "victims": list(victims)}, {"world": 0}, PROVENANCE
        )
        rows = [
            MetricRow(
                victim=name,
                dataset="world",
                split="test-1k",
                metric=metric,
                value=value,
                target=name,
            )
            for name in victims
            for metric, value in _recalls(CLEAN.get(name, 0.5)).items()
        ]
        store.write_metrics(run_id, rows)


def write_matrix_store(run_dir, seeds=(0,), seed_offsets=(0.0,)) -> None:
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(
            _matrix_spec(list(seeds)), {"attack_seeds": list(seeds)}, PROVENANCE
        )
        keys = {"dataset": "world", "split": "test-1k[:20]"}
        rows = []
        for target in VICTIMS:
            for source in VICTIMS:
                rows += [
                    MetricRow(
                        victim=target, metric=m, value=v, source=source, target=target, **keys
                    )
                    for m, v in _recalls(CLEAN[target]).items()
                ]
        for (attack, source, target), (tr, ir) in ASR.items():
            for seed, offset in zip(seeds, seed_offsets, strict=True):
                values = {
                    **_recalls(0.3),
                    "tr_asr_r1": tr + offset,
                    "ir_asr_r1": ir + offset,
                    "tr_drop_r1": tr / 2,
                    "ir_drop_r1": ir / 2,
                }
                rows += [
                    MetricRow(
                        victim=target,
                        metric=m,
                        value=v,
                        attack=attack,
                        seed=seed,
                        source=source,
                        target=target,
                        **keys,
                    )
                    for m, v in values.items()
                ]
        store.write_metrics(run_id, rows)


@pytest.fixture
def demo_like_run(tmp_path):
    """The demo's layout: clean store at the top, the matrix in matrix/."""
    run_dir = tmp_path / "run"
    write_clean_store(run_dir)
    write_matrix_store(run_dir / "matrix")
    return run_dir


def pdf_text(path) -> str:
    """The document's text with every run of whitespace made one space (table cells are lines)."""
    return " ".join(" ".join(page.extract_text() for page in PdfReader(path).pages).split())


def test_report_sections_follow_the_data_and_print_the_stored_numbers(demo_like_run, tmp_path):
    summary = build_report(demo_like_run, tmp_path / "out" / "report.pdf")

    assert summary.sections == (
        "Executive summary",
        "Clean performance",
        "Transfer matrices",
        "Attack comparison",
        "Budget sweep",
        "Appendix",
    )
    assert [title for title, _ in summary.omitted] == [
        "Universal patch",
        "AnyAttack",
        "Defenses",
        "Bias",
    ]
    text = pdf_text(summary.path)
    assert len(PdfReader(summary.path).pages) == summary.pages
    for _, note in summary.omitted:
        assert note in text
    assert "No universal-patch results in this run." in text
    # clean R@1 as the clean table prints it, and one ASR cell of the full transfer table
    assert "87.3" in text and "91.2" in text
    row = re.search(r"pgd toy-clip-vit toy-clip-rn \(itc\)(?: [\d.]+){10}", text)
    assert row is not None, text
    assert row.group(0).split()[-4:] == ["42.5", "30.0", "21.2", "15.0"]
    # executive summary: toy-clip-rn is fooled most by transfers: mean of (42.5, 30, 60, 50) %
    assert "Most vulnerable victim: toy-clip-rn" in text
    assert "45.6 %" in text
    assert "Most transferable attack: pgd-eps4" in text
    # metadata on the title page
    assert "0123456789ab" in text and "2.14.1" in text and "tiny-matrix" in text


def test_clean_only_run_notes_every_missing_section(tmp_path):
    write_clean_store(tmp_path / "clean")
    summary = build_report(tmp_path / "clean", tmp_path / "clean.pdf")

    assert summary.sections == ("Executive summary", "Clean performance", "Appendix")
    text = pdf_text(summary.path)
    assert "No transfer-attack results in this run." in text
    assert "No eps sweep in this run" in text
    assert "Best clean retrieval: toy-clip-rn with TR R@1 91.2 %" in text


def test_fonts_are_embedded_and_figures_are_vector(demo_like_run, tmp_path):
    summary = build_report(demo_like_run, tmp_path / "report.pdf")
    reader = PdfReader(summary.path)
    fonts = {}
    for page in reader.pages:
        resources = page["/Resources"]
        for name, font in resources.get("/Font", {}).items():
            fonts[name] = font.get_object()
        assert not page.images  # heatmaps, bars and curves are drawn, not pasted as bitmaps
    assert fonts
    for font in fonts.values():
        descendant = (
            font["/DescendantFonts"][0].get_object() if "/DescendantFonts" in font else font
        )
        descriptor = descendant["/FontDescriptor"].get_object()
        assert "/FontFile2" in descriptor, font


def test_same_data_gives_the_same_bytes(demo_like_run, tmp_path):
    first = build_report(demo_like_run, tmp_path / "first.pdf").path.read_bytes()
    second = build_report(demo_like_run, tmp_path / "second.pdf").path.read_bytes()
    assert first == second


def test_matrix_marks_white_box_and_averages_seeds(tmp_path):
    write_matrix_store(tmp_path / "run", seeds=(0, 1), seed_offsets=(0.0, -0.05))
    data = load_report_data(tmp_path / "run")
    matrix = analysis.transfer_matrix(data, "pgd")

    assert matrix.sources == VICTIMS and matrix.targets == VICTIMS
    assert matrix.white_box.tolist() == [[True, False], [False, True]]
    assert matrix.tr_asr[0, 1] == pytest.approx(0.425 - 0.025)
    assert matrix.ir_asr[1, 0] == pytest.approx(0.1 - 0.025)
    assert {score.seed for score in data.transfer} == {0, 1}
    text = pdf_text(build_report(tmp_path / "run", tmp_path / "seeds.pdf").path)
    assert "Mean over seeds 0, 1." in text
    assert "pgd seed 1 toy-clip-vit toy-clip-rn (itc)" in text


def test_attack_comparison_shows_the_spread_over_seeds(tmp_path):
    write_matrix_store(tmp_path / "run", seeds=(0, 1, 2), seed_offsets=(0.0, -0.05, 0.05))
    data = load_report_data(tmp_path / "run")
    pgd = analysis.attack_summaries(data)[0]
    # the transfer mean taken seed by seed: 0.3125, 0.2625, 0.3625
    assert pgd.transfer_tr == pytest.approx(0.3125)
    assert pgd.transfer_tr_spread == pytest.approx(0.05)
    assert pgd.white_box_ir_spread == pytest.approx(0.05)
    text = pdf_text(build_report(tmp_path / "run", tmp_path / "spread.pdf").path)
    assert "± 5.0" in text and "standard deviation over seeds" in text
    one_seed = tmp_path / "one"
    write_matrix_store(one_seed)
    assert math.isnan(analysis.attack_summaries(load_report_data(one_seed))[0].transfer_tr_spread)
    assert "±" not in pdf_text(build_report(one_seed, tmp_path / "one.pdf").path)


def test_modality_split_table_reads_the_part_rows(tmp_path):
    run_dir = tmp_path / "run"
    write_matrix_store(run_dir)
    keys = {"dataset": "world", "split": "test-1k[:20]", "attack": "pgd", "seed": 0}
    parts = {"image_only": 0.25, "text_only": 0.125}  # same for TR and IR, every cell
    with ResultStore.in_run_dir(run_dir) as store:
        rows = [
            MetricRow(
                victim=target,
                source=source,
                target=target,
                metric=f"{side}_asr_r1_{part}",
                value=value,
                **keys,
            )  # fmt: skip
            for (attack, source, target) in ASR
            if attack == "pgd"
            for part, value in parts.items()
            for side in ("tr", "ir")
        ]
        store.write_metrics(store.run_ids()[-1], rows)
    data = load_report_data(run_dir)
    (split,) = analysis.modality_splits(data)
    assert split.attack == "pgd"
    assert split.both == pytest.approx(((0.425 + 0.2) / 2, (0.3 + 0.1) / 2))
    assert split.image_only == pytest.approx((0.25, 0.25))
    assert split.text_only == pytest.approx((0.125, 0.125))
    text = pdf_text(build_report(run_dir, tmp_path / "split.pdf").path)
    assert "Which modality carries the transfer" in text
    assert re.search(r"pgd 31\.2 20\.0 25\.0 25\.0 12\.5 12\.5", text), text
    # an attack without part rows has no row there, and a run without any has no table
    plain = tmp_path / "plain"
    write_matrix_store(plain)
    assert analysis.modality_splits(load_report_data(plain)) == []


def test_sweep_orders_by_eps_and_summaries_split_white_box(tmp_path):
    write_matrix_store(tmp_path / "run")
    data = load_report_data(tmp_path / "run")

    (sweep,) = analysis.eps_sweeps(data)
    assert sweep.attacks == ("pgd", "pgd-eps4")
    curve = next(c for c in sweep.curves if (c.source, c.target) == ("toy-clip-vit", "toy-clip-rn"))
    assert curve.eps == pytest.approx((2 / 255, 4 / 255))
    assert curve.tr_asr == pytest.approx((0.425, 0.6))
    pgd = analysis.attack_summaries(data)[0]
    assert pgd.white_box_tr == pytest.approx((0.9 + 0.95) / 2)
    assert pgd.transfer_ir == pytest.approx((0.3 + 0.1) / 2)


def test_defended_rows_make_a_defense_section(tmp_path):
    write_clean_store(tmp_path / "run")
    with ResultStore.in_run_dir(tmp_path / "run") as store:
        run_id = store.latest_run_id()
        store.write_metrics(
            run_id,
            [
                MetricRow(
                    victim="toy-clip-vit",
                    dataset="world",
                    split="test-1k",
                    metric="tr_r1",
                    value=0.615,
                    defense="jpeg-75",
                ),
            ],
        )
    summary = build_report(tmp_path / "run", tmp_path / "report.pdf")
    assert "Defenses" in summary.sections
    text = pdf_text(summary.path)
    assert "jpeg-75" in text and "61.5" in text


def test_long_victim_names_are_abbreviated_with_a_legend(tmp_path):
    write_clean_store(tmp_path / "run", victims=(LONG_VICTIM, "toy-clip-rn"))
    data = load_report_data(tmp_path / "run")
    names = analysis.victim_order(data)
    from robust.report.figures import short_names

    assert short_names(names) == {LONG_VICTIM: "V1", "toy-clip-rn": "V2"}
    assert short_names(["a", "b"]) == {"a": "a", "b": "b"}


def test_runs_without_provenance_still_build(tmp_path):
    with ResultStore.in_run_dir(tmp_path / "bare") as store:
        run_id = store.start_run({"command": "eval"}, {}, {"versions": {}, "hardware": {}})
        store.write_metrics(
            run_id,
            [
                MetricRow(
                    victim="toy-clip-rn",
                    dataset="world",
                    split="test-1k",
                    metric="tr_r1",
                    value=0.5,
                )
            ],
        )
    text = pdf_text(build_report(tmp_path / "bare", tmp_path / "bare.pdf").path)
    assert "The runs recorded no versions." in text and "unknown" in text


def test_a_failed_build_keeps_the_previous_report(demo_like_run, tmp_path, monkeypatch):
    output = tmp_path / "report.pdf"
    output.write_bytes(b"previous report")

    class Exploding(Flowable):
        def wrap(self, available_width, available_height):
            raise RuntimeError("layout failed")

    def broken(data):
        return [Exploding()]

    from robust.report import sections

    broken_sections = tuple(
        replace(section, build=broken) if section.title == "Appendix" else section
        for section in sections.SECTIONS
    )
    monkeypatch.setattr("robust.report.pdf.SECTIONS", broken_sections)
    with pytest.raises(RuntimeError, match="layout failed"):
        build_report(demo_like_run, output)
    assert output.read_bytes() == b"previous report"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


def test_output_that_is_a_directory_is_refused(demo_like_run, tmp_path):
    with pytest.raises(ReportError, match="is a directory"):
        build_report(demo_like_run, tmp_path)


def test_bad_run_directories_are_one_clear_error(tmp_path):
    with pytest.raises(ReportDataError, match="is not a directory"):
        build_report(tmp_path / "missing", tmp_path / "r.pdf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportDataError, match="no results.sqlite under"):
        build_report(tmp_path / "empty", tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()


def test_cli_writes_the_report_and_reports_bad_dirs_in_one_line(demo_like_run, tmp_path):
    runner = CliRunner()
    output = tmp_path / "cli.pdf"
    result = runner.invoke(app, ["report", str(demo_like_run), "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert output.stat().st_size > 0
    assert "No AnyAttack results in this run." in result.output

    bad = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "is not a directory" in lines[0]


def test_nan_asr_prints_as_a_dash(tmp_path):
    from robust.report.layout import percent

    assert percent(math.nan) == "–"
    assert percent(0.4256) == "42.6"


# -- universal patch -------------------------------------------------------------------------

PATCH_SPEC = {
    "command": "patch-eval",
    "dataset": "world:test-1k[:20]",
    "targets": ["toy-clip-vit", "toy-blip-cap"],
    "patch": {
        "source": "toy-clip-vit",
        "side": 3,
        "area_fraction": 0.03,
        "placement": "fixed",
        "seed": 0,
        "config": {"steps": 7, "fit_images": "world:train[:16]"},
    },
}
# (target, attack, scoring) -> metrics, as `run_patch_evaluation` names them
PATCH_ROWS = {
    ("toy-clip-vit", None, "itc"): {
        "tr_r1": 0.95,
        "ir_r1": 0.9,
        "images_unoccluded": 15.0,
        "tr_r1_unoccluded": 1.0,
        "ir_r1_unoccluded": 0.96,
    },
    ("toy-clip-vit", "advclip-patch", "itc"): {
        "tr_r1": 0.15,
        "ir_r1": 0.35,
        "tr_asr_r1": 0.8421,
        "ir_asr_r1": 0.6111,
        "tr_drop_r1": 0.8,
        "ir_drop_r1": 0.55,
        "tr_r1_unoccluded": 0.2,
        "ir_r1_unoccluded": 0.4,
        "tr_asr_r1_unoccluded": 0.8,
        "ir_asr_r1_unoccluded": 0.5833,
    },
    ("toy-clip-vit", "random-patch", "itc"): {
        "tr_r1": 0.65,
        "ir_r1": 0.7,
        "tr_asr_r1": 0.3158,
        "ir_asr_r1": 0.2222,
        "tr_drop_r1": 0.3,
        "ir_drop_r1": 0.2,
        "tr_r1_unoccluded": 0.9333,
        "ir_r1_unoccluded": 0.92,
        "tr_asr_r1_unoccluded": 0.0667,
        "ir_asr_r1_unoccluded": 0.0417,
    },
    ("toy-clip-vit", None, "zero-shot"): {"color_acc": 0.975},
    ("toy-clip-vit", "advclip-patch", "zero-shot"): {
        "color_acc": 0.625,
        "color_acc_drop": 0.35,
        "color_fooling_rate": 0.375,
    },
    ("toy-clip-vit", "random-patch", "zero-shot"): {
        "color_acc": 0.95,
        "color_acc_drop": 0.025,
        "color_fooling_rate": 0.05,
    },
    ("toy-blip-cap", None, "caption"): {"bleu4": 0.339, "rouge_l": 0.494, "cider": 1.058},
    ("toy-blip-cap", "advclip-patch", "caption"): {
        "bleu4": 0.247,
        "rouge_l": 0.44,
        "cider": 0.578,
        "bleu4_drop": 0.092,
        "rouge_l_drop": 0.054,
        "cider_drop": 0.48,
        "caption_change_rate": 0.994,
    },
    ("toy-blip-cap", "random-patch", "caption"): {
        "bleu4": 0.273,
        "rouge_l": 0.455,
        "cider": 0.67,
        "bleu4_drop": 0.066,
        "rouge_l_drop": 0.039,
        "cider_drop": 0.388,
        "caption_change_rate": 0.952,
    },
}


def _png(path, pixels) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path, format="PNG")


def write_patch_run(folder) -> np.ndarray:
    """A `robust patch eval` run dir by hand: store rows, patch files, examples; returns the
    patch pixels."""
    from robust.harness.cache import slug

    with ResultStore.in_run_dir(folder) as store:
        run_id = store.start_run(PATCH_SPEC, {"patch": 0, "control": 0}, PROVENANCE)
        rows = [
            MetricRow(
                victim=target,
                dataset="world",
                split="test-1k[:20]",
                metric=metric,
                value=value,
                attack=attack,
                source=None if attack is None else "toy-clip-vit",
                target=target,
                scoring=scoring,
            )
            for (target, attack, scoring), metrics in PATCH_ROWS.items()
            for metric, value in metrics.items()
        ]
        store.write_metrics(run_id, rows)
    generator = np.random.default_rng(0)
    patch = generator.integers(0, 256, (3, 3, 3), dtype=np.uint8)
    _png(folder / "patch" / "advclip-patch.png", patch)
    _png(folder / "patch" / "random-patch.png", generator.integers(0, 256, (3, 3, 3), np.uint8))
    for target in PATCH_SPEC["targets"]:
        for index in range(2):
            for name in ("clean", "advclip-patch", "random-patch"):
                pixels = generator.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                _png(folder / "examples" / slug(target) / f"{index:03d}-{name}.png", pixels)
    return patch


def _pixel_blocks(image, side: int) -> np.ndarray:
    """The centre pixel of each block of an image enlarged `side` times per axis."""
    pixels = np.asarray(image.convert("RGB"))
    block = pixels.shape[0] // side
    return pixels[block // 2 :: block, block // 2 :: block][:side, :side]


def test_patch_section_prints_patch_and_control_rows_and_embeds_the_patch_losslessly(tmp_path):
    write_clean_store(tmp_path / "run")
    patch = write_patch_run(tmp_path / "run" / "patch")
    data = load_report_data(tmp_path / "run")
    # patch rows are the patch section's own: never clean baselines or transfer cells
    assert not data.transfer and {s.victim for s in data.clean} == set(VICTIMS)
    assert len(data.patch) == len(PATCH_ROWS)

    summary = build_report(tmp_path / "run", tmp_path / "report.pdf")
    assert "Universal patch" in summary.sections
    assert "Universal patch" not in [title for title, _ in summary.omitted]
    text = pdf_text(summary.path)
    assert "fitted on toy-clip-vit in 7 steps on world:train[:16]" in text
    assert (
        "Universal patch fitted on toy-clip-vit: white-box TR / IR R@1 ASR 84.2 / 61.1 % "
        "against 31.6 / 22.2 % for the random-patch control (itc)."
    ) in text
    # retrieval: R@1, ASR (SGA) and drop (Co-Attack) for patch and control; white-box starred
    assert "toy-clip-vit* itc patch 15.0 35.0 84.2 61.1 80.0 55.0" in text
    assert "toy-clip-vit* itc random patch 65.0 70.0 31.6 22.2 30.0 20.0" in text
    # the same over the images the patch leaves whole (world runs): kept count, R@1, ASR
    assert "toy-clip-vit* itc clean 15 100.0 96.0" in text
    assert "toy-clip-vit* itc patch 15 20.0 40.0 80.0 58.3" in text
    assert "toy-clip-vit* itc random patch 15 93.3 92.0 6.7 4.2" in text
    # zero-shot colour: clean, patch acc/drop/fooled, control acc/drop/fooled
    assert "toy-clip-vit zero-shot color 97.5 62.5 35.0 37.5 95.0 2.5 5.0" in text
    # captions x100, drops and change rate
    assert "toy-blip-cap patch 24.7 44.0 57.8 9.2 5.4 48.0 99.4" in text
    assert "toy-blip-cap random patch 27.3 45.5 67.0 6.6 3.9 38.8 95.2" in text

    images = [image.image for page in PdfReader(summary.path).pages for image in page.images]
    assert len(images) == 2 + 2 * 2 * 3  # patch, control, 2 examples x 3 variants x 2 targets
    # every patch pixel survives exactly, as a block of the enlarged bitmap
    assert any(np.array_equal(_pixel_blocks(image, 3), patch) for image in images)
    again = build_report(tmp_path / "run", tmp_path / "again.pdf").path
    assert again.read_bytes() == summary.path.read_bytes()  # bitmaps keep the build repeatable


def test_patch_section_is_noted_without_patch_rows_and_survives_missing_files(tmp_path):
    write_clean_store(tmp_path / "clean")
    summary = build_report(tmp_path / "clean", tmp_path / "clean.pdf")
    assert "Universal patch" not in summary.sections
    assert "No universal-patch results in this run." in pdf_text(summary.path)

    write_patch_run(tmp_path / "bare")
    (tmp_path / "bare" / "patch" / "advclip-patch.png").unlink()
    text = pdf_text(build_report(tmp_path / "bare", tmp_path / "bare.pdf").path)
    assert "(image missing: advclip-patch.png)" in text
    assert "toy-blip-cap patch 24.7 44.0 57.8" in text


# -- defenses --------------------------------------------------------------------------------

# (defense column, source, target) -> (tr_asr_r1, ir_asr_r1) for pgd behind jpeg-q75
DEFENDED_ASR = {
    ("jpeg-q75", "toy-clip-vit", "toy-clip-rn"): (0.12, 0.08),
    ("jpeg-q75/adaptive", "toy-clip-vit", "toy-clip-rn"): (0.305, 0.05),
}
DEFENDED_CLEAN = {"tr_r1": 0.875, "ir_r1": 0.8, "tr_r1_cost": 0.037, "ir_r1_cost": 0.02}


def write_defended_matrix(run_dir) -> None:
    """A matrix run with a defenses axis, rows laid out as `run_defense_cells` writes them."""
    spec = _matrix_spec([0])
    spec["spec"] |= {"name": "tiny-defense", "attacks": spec["spec"]["attacks"][:1]}
    spec["spec"]["defenses"] = {"names": ["jpeg-q75"], "adaptive": True, "bpda": True}
    keys = {"dataset": "world", "split": "test-1k[:20]"}
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(spec, {"attack_seeds": [0]}, PROVENANCE)
        rows = []
        for (attack, source, target), (tr, ir) in ASR.items():
            if attack != "pgd":
                continue
            rows += [
                MetricRow(
                    victim=target,
                    metric=m,
                    value=v,
                    attack="pgd",
                    seed=0,
                    source=source,
                    target=target,
                    **keys,
                )
                for m, v in {"tr_asr_r1": tr, "ir_asr_r1": ir}.items()
            ]
            rows += [
                MetricRow(
                    victim=target,
                    metric=m,
                    value=v,
                    source=source,
                    target=target,
                    defense="jpeg-q75",
                    **keys,
                )
                for m, v in DEFENDED_CLEAN.items()
            ]
            for defense in ("jpeg-q75", "jpeg-q75/adaptive"):
                tr_asr, ir_asr = DEFENDED_ASR.get((defense, source, target), (0.01, 0.02))
                rows += [
                    MetricRow(
                        victim=target,
                        metric=m,
                        value=v,
                        attack="pgd",
                        seed=0,
                        source=source,
                        target=target,
                        defense=defense,
                        **keys,
                    )
                    for m, v in {"tr_asr_r1": tr_asr, "ir_asr_r1": ir_asr}.items()
                ]
        store.write_metrics(run_id, rows)


def test_defense_section_sets_adaptive_beside_non_adaptive_with_the_clean_cost(tmp_path):
    write_defended_matrix(tmp_path / "run")
    data = load_report_data(tmp_path / "run")
    (summary,) = data.defense_summaries
    assert summary.adaptive and len(summary.rows) == 4
    row = next(r for r in summary.rows if (r.source, r.target) == ("toy-clip-vit", "toy-clip-rn"))
    assert (row.tr_asr, row.adaptive_tr_asr, row.undefended_tr_asr) == (0.12, 0.305, 0.425)

    report = build_report(tmp_path / "run", tmp_path / "report.pdf")
    assert "Defenses" in report.sections
    text = pdf_text(report.path)
    # undefended, non-adaptive, adaptive and worst, TR then IR
    assert "jpeg-q75 pgd: toy-clip-vit → toy-clip-rn 42.5 12.0 30.5 30.5 30.0 8.0 5.0 8.0" in text
    # clean cost: defended clean R@1 and undefended minus defended, per target
    assert "jpeg-q75 toy-clip-rn itc 87.5 80.0 3.7 2.0" in text
    assert "Every defended cell" in text and "jpeg-q75/adaptive" in text


# -- bias ------------------------------------------------------------------------------------

RELEVANCE = {
    "bias_r1_a": 0.892,
    "bias_r1_b": 0.014,
    "bias_delta_r1": 193.82,
    "bias_ndcg5_a": 0.5864,
    "bias_ndcg5_b": 0.2197,
    "bias_delta_ndcg5": 90.99,
    "bias_rank_diff": -10.232,
    "bias_preference_rate": 0.016,
    "bias_shift_shape_cross": 0.068,
    "bias_shift_color_bottom_red": -0.01,
}
CAPTION_BIAS = {
    "caption_change_rate": 0.8,
    "caption_color_insertion_rate": 0.19,
    "caption_target_rate_clean": 0.13,
    "caption_target_rate_attacked": 0.15,
    "caption_cider_clean": 1.054,
    "caption_cider_attacked": 0.805,
    "caption_cider_drop": 0.249,
}


def write_bias_runs(run_dir) -> None:
    """`robust bias cache` and `robust bias caption` runs, as `robust.harness.bias` stores."""
    keys = {"dataset": "world", "split": "test-1k[:20]", "attack": "pgd", "source": "toy-clip-vit"}
    with ResultStore.in_run_dir(run_dir) as store:
        record = {
            "command": "bias cache",
            "attack": "pgd",
            "source": "toy-clip-vit",
            "victim": "toy-clip-rn",
            "seed": 0,
            "sources": {"a": "clean", "b": "adversarial"},
        }
        run_id = store.start_run(record, {"attack_seed": 0}, PROVENANCE)
        store.write_metrics(
            run_id,
            [
                MetricRow(
                    victim="toy-clip-rn",
                    metric=m,
                    value=v,
                    target="toy-clip-rn",
                    scoring="itc",
                    **keys,
                )
                for m, v in RELEVANCE.items()
            ],
        )
        record = {
            "command": "bias caption",
            "attack": "pgd",
            "source": "toy-clip-vit",
            "captioner": "toy-blip-cap",
            "seed": 0,
            "target_concept": "red",
        }
        run_id = store.start_run(record, {"attack_seed": 0}, PROVENANCE)
        store.write_metrics(
            run_id,
            [
                MetricRow(
                    victim="toy-blip-cap",
                    metric=m,
                    value=v,
                    target="toy-blip-cap",
                    scoring="caption",
                    **keys,
                )
                for m, v in CAPTION_BIAS.items()
            ],
        )


def test_bias_section_prints_relevance_and_caption_bias_and_no_bias_row_is_a_transfer_cell(
    tmp_path,
):
    write_clean_store(tmp_path / "run")
    write_bias_runs(tmp_path / "run")
    data = load_report_data(tmp_path / "run")
    assert not data.transfer  # bias rows name an attack and a source, yet are no cells
    assert {score.kind for score in data.bias} == {"relevance", "caption"}

    report = build_report(tmp_path / "run", tmp_path / "report.pdf")
    assert "Bias" in report.sections
    text = pdf_text(report.path)
    assert "toy-clip-rn: clean vs adversarial images" in text
    assert "R@1 89.2 1.4 +193.8" in text and "NDCG@5 58.6 22.0 +91.0" in text
    assert "RankDiff -10.23; preference for B (adversarial) 1.6 %" in text
    assert "Attribute shift of top-1 retrieval" in text
    assert "Captions of toy-blip-cap" in text
    assert "captions changed 80.0" in text and "color insertion 19.0" in text
    assert "'red' in clean captions 13.0" in text and "'red' in attacked captions 15.0" in text
    assert "CIDEr 105.4 80.5 24.9" in text
    # the title page says what each bias run measured
    assert "bias cache with pgd examples crafted on toy-clip-vit measured on toy-clip-rn" in text


def test_bias_and_defense_sections_are_notes_without_their_rows(tmp_path):
    write_matrix_store(tmp_path / "run")
    report = build_report(tmp_path / "run", tmp_path / "report.pdf")
    assert "Bias" not in report.sections and "Defenses" not in report.sections
    text = pdf_text(report.path)
    assert "No bias measurements in this run." in text
    assert "No defense results in this run." in text


# -- AnyAttack -------------------------------------------------------------------------------

ANYATTACK_SPEC = {
    "command": "anyattack eval",
    "attack": {"attack": "anyattack", "encoder": "toy-clip-vit", "eps": 16 / 255, "decoder": {}},
    "victims": ["toy-clip-vit", "toy-blip-cap"],
    "dataset": "world:train",
    "pairs": 8,
    "examples": 2,
}
TARGETED = {
    "toy-clip-vit": {
        **{f"floor_{m}": 0.031 for m in ("tr_r1", "ir_r1")},
        "adv_tr_r1": 0.406,
        "adv_ir_r1": 0.344,
        "adv_tr_r5": 0.75,
        "ceiling_tr_r1": 0.969,
        "ceiling_ir_r1": 0.938,
    },
    "toy-blip-cap": {
        "adv_vs_target_cider": 0.523,
        "adv_vs_clean_cider": 0.214,
        "floor_vs_target_cider": 0.101,
        "floor_vs_clean_cider": 1.02,
        "ceiling_vs_target_cider": 1.05,
        "adv_vs_target_emb_sim_mean": 0.8125,
        **{f"{g}_caption_readable": 0.875 for g in ("adv", "floor", "ceiling")},
        "adv_vs_target_objects_true": 0.25,
        "adv_vs_target_color_true": 0.625,
        "floor_vs_target_color_true": 0.125,
        "ceiling_vs_target_all_true": 0.5,
        "adv_vs_clean_objects_true": 0.375,
    },
}


def write_anyattack_run(folder) -> None:
    """A `robust anyattack eval` run by hand: rows and the example quadruples."""
    import json

    with ResultStore.in_run_dir(folder) as store:
        run_id = store.start_run(ANYATTACK_SPEC, {"pairs": 0, "world": 0}, PROVENANCE)
        store.write_metrics(
            run_id,
            [
                MetricRow(
                    victim=victim,
                    dataset="world",
                    split="train[:16]",
                    metric=metric,
                    value=value,
                    attack="anyattack",
                    source="toy-clip-vit",
                    target=victim,
                )
                for victim, metrics in TARGETED.items()
                for metric, value in metrics.items()
            ],
        )
    examples_dir = folder / "anyattack_examples"
    generator = np.random.default_rng(1)
    records = []
    for index in range(2):
        files = {}
        for kind in ("clean", "noise", "adversarial", "target"):
            files[kind] = f"{index:02d}_{kind}.png"
            _png(examples_dir / files[kind], generator.integers(0, 256, (8, 8, 3), np.uint8))
        records.append(
            {
                "pair": index,
                "clean_captions": [f"a blue square number {index}"],
                "target_captions": [f"a red cross number {index}"],
                "files": files,
                "generated": {"toy-blip-cap": {"adv": "a red cross", "floor": "a blue square"}},
            }
        )
    payload = {"eps": 16 / 255, "examples": records}
    (examples_dir / "examples.json").write_text(json.dumps(payload))


def test_anyattack_section_shows_quadruples_captions_and_targeted_success(tmp_path):
    write_anyattack_run(tmp_path / "run" / "anyattack")
    data = load_report_data(tmp_path / "run")
    assert not data.transfer and len(data.anyattack) == 2  # targeted rows are not cells

    report = build_report(tmp_path / "run", tmp_path / "report.pdf")
    assert "AnyAttack" in report.sections
    text = pdf_text(report.path)
    assert (
        "AnyAttack from toy-clip-vit's embedding, eps 16/255: targeted TR / IR R@1 on "
        "toy-clip-vit 40.6 / 34.4 % (clean floor 3.1 / 3.1 %, target ceiling 96.9 / 93.8 %)."
    ) in text
    assert "toy-clip-vit adversarial 40.6 75.0 – 34.4" in text
    assert "toy-blip-cap adversarial 52.3 21.4" not in text  # BLEU-4 (absent) comes first
    assert "toy-blip-cap adversarial – 52.3 81.2 – 21.4 –" in text
    assert "toy-blip-cap target (ceiling) – 105.0 – – – –" in text
    assert "Caption target rate" in text
    assert "toy-blip-cap adversarial 87.5 25.0 62.5 – – 37.5" in text
    assert "toy-blip-cap clean (floor) 87.5 – 12.5 – – –" in text
    assert "toy-blip-cap target (ceiling) 87.5 – – – 50.0 –" in text
    assert "clean: a blue square number 1" in text and "target: a red cross number 0" in text
    assert "toy-blip-cap on adversarial: a red cross" in text
    images = [image for page in PdfReader(report.path).pages for image in page.images]
    assert len(images) == 2 * 4  # two quadruples


def test_anyattack_section_without_examples_says_so(tmp_path):
    write_anyattack_run(tmp_path / "run")
    (tmp_path / "run" / "anyattack_examples" / "examples.json").unlink()
    text = pdf_text(build_report(tmp_path / "run", tmp_path / "report.pdf").path)
    assert "No examples: anyattack_examples/examples.json is missing or unreadable." in text
    assert "toy-clip-vit adversarial 40.6" in text


ORACLE = {"floor_tr_r1": 0.0625, "oracle_tr_r1": 0.25, "ceiling_tr_r1": 0.875}
ORACLE_STEPS = {1: 0.125, 2: 0.125, 4: 0.1875, 8: 0.25}


def write_oracle_run(folder, *, seed: int = 0) -> None:
    """A `robust anyattack bound` run by hand over ANYATTACK_SPEC's pairs (when seed is 0)."""
    spec = {
        "command": "anyattack bound",
        "encoder": "toy-clip-vit",
        "dataset": "world:train",
        "clean_pool": "world:val",
        "pairs": 8,
        "optimised": 4,
        "steps": 8,
        "step_checkpoints": list(ORACLE_STEPS),
        "cleans_per_step": 2,
        "eps": 16 / 255,
    }
    metrics = ORACLE | {f"oracle_tr_r1_at_step_{n}": v for n, v in ORACLE_STEPS.items()}
    with ResultStore.in_run_dir(folder) as store:
        run_id = store.start_run(spec, {"pairs": seed, "oracle": seed}, PROVENANCE)
        store.write_metrics(
            run_id,
            [
                MetricRow(
                    victim="toy-clip-vit",
                    dataset="world",
                    split="train",
                    metric=metric,
                    value=value,
                    attack="anyattack-oracle",
                    source="toy-clip-vit",
                    target="toy-clip-vit",
                    seed=seed,
                )
                for metric, value in metrics.items()
            ],
        )


def test_anyattack_section_shows_the_oracle_of_the_same_pairs_and_its_steps(tmp_path):
    write_anyattack_run(tmp_path / "run")  # bound and eval share a run directory (both default)
    write_oracle_run(tmp_path / "run")
    data = load_report_data(tmp_path / "run")
    assert not data.transfer and not data.attack_labels()  # oracle rows are not cells
    assert [oracle.by_step for oracle in data.oracles] == [ORACLE_STEPS]
    assert data.oracle_for(data.anyattack_runs[0], "toy-clip-vit") is data.oracles[0]
    assert data.oracle_for(data.anyattack_runs[0], "toy-clip-rn") is None

    report = build_report(tmp_path / "run", tmp_path / "report.pdf")
    text = pdf_text(report.path)
    assert "Targeted success on toy-clip-vit" in text
    assert "Oracle: the best single noise per target, optimised white-box on toy-clip-vit" in text
    assert "first 4 of these pairs (floor 6.2 %, ceiling 87.5 % there)" in text
    assert "The oracle is missing" not in text
    assert "target ceiling 96.9 / 93.8 %; noise oracle TR R@1 25.0 % on the first 4" in text
    assert "Noise oracle by steps" in text
    assert "toy-clip-vit 4 of 8 6.2 12.5 12.5 18.8 25.0 87.5" in text
    assert "anyattack-oracle" not in text and "Attack comparison" not in report.sections
    assert text.count("Targeted success on ") == 1  # one chart per retrieval victim


def test_anyattack_section_says_when_the_oracle_is_missing(tmp_path):
    write_anyattack_run(tmp_path / "run")
    write_oracle_run(tmp_path / "run" / "bound", seed=1)  # other pairs: not this run's oracle
    data = load_report_data(tmp_path / "run")
    assert not data.transfer and data.oracle_for(data.anyattack_runs[0], "toy-clip-vit") is None
    text = pdf_text(build_report(tmp_path / "run", tmp_path / "report.pdf").path)
    assert "Targeted success on toy-clip-vit" in text
    assert (
        "The oracle is missing: no robust anyattack bound run on toy-clip-vit over these pairs"
    ) in text
    assert "Noise oracle runs whose pairs no AnyAttack evaluation in this input shares" in text
    assert "toy-clip-vit 4 of 8 6.2 12.5 12.5 18.8 25.0 87.5" in text


def test_an_oracle_run_alone_is_never_a_transfer_cell(tmp_path):
    write_oracle_run(tmp_path / "run")
    data = load_report_data(tmp_path / "run")
    assert not data.transfer and not data.clean and len(data.oracles) == 1
    report = build_report(tmp_path / "run", tmp_path / "report.pdf")
    assert "AnyAttack" in report.sections and "Attack comparison" not in report.sections
    assert "Noise oracle by steps" in pdf_text(report.path)


def test_anyattack_examples_are_the_evaluations_cached_images_and_captions(tmp_path, monkeypatch):
    """The report's example rows are what `anyattack eval` stored, read back with no model:
    the PNGs hold the cache entries' pixels, the captions are the captioner's on the
    adversarial, clean and target image."""
    from PIL import Image

    from robust.attacks.anyattack import load_decoder
    from robust.data.world import ZOO_WORLD, generate_world
    from robust.harness.anyattack_eval import WORLD_DECODER, evaluate_anyattack
    from robust.harness.cache import AdversarialCache
    from robust.victims import registry
    from robust.zoo.recipes import world_image_size

    run = tmp_path / "run"
    evaluation = evaluate_anyattack(
        load_decoder(WORLD_DECODER), "toy-clip-vit", ["toy-clip-vit", "toy-blip-cap"],
        generate_world("test-1k", count=24, version=ZOO_WORLD), run, pairs=8, examples=2,
    )  # fmt: skip
    entries = {
        (entry.attack_label, entry.path.name): entry
        for entry in AdversarialCache(run / "cache").complete_entries()
    }
    shown = {"clean": "floor", "noise": "noise", "adversarial": "adv", "target": "ceiling"}
    folder = run / "anyattack_examples"
    at = f"seed-0-at-{world_image_size(ZOO_WORLD)}-crop"  # the shipped decoder's and toy's size
    for kind, gallery in shown.items():
        cached = entries[(f"anyattack-{gallery}", at)].load().images
        for pair in range(2):
            stored = np.asarray(Image.open(folder / f"{pair:02d}_{kind}.png"))
            assert np.array_equal(stored, cached[pair])

    def no_model(*args, **kwargs):
        raise AssertionError("the report loaded a model")

    monkeypatch.setattr(registry, "load_victim", no_model)
    text = pdf_text(build_report(run, tmp_path / "report.pdf").path)
    generated = evaluation.generated["toy-blip-cap"]
    for gallery, label in (("adv", "adversarial"), ("floor", "clean"), ("ceiling", "target")):
        caption = " ".join(generated[gallery][0].split())
        assert f"toy-blip-cap on {label}: {caption}" in text
    assert "scaled by 1 / (2 eps) = 7.97× at eps 16/255" in text
