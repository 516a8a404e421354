"""DRA and SA-AET: budgets at every step, the work each step does, determinism, the exact
reduction to SGA, the trajectory weights, SA-AET's caption projection, and a run through the
matrix, its cache (resume) and the report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import robust
from robust.attacks import AttackBatch, AttackConfigError, build_attack
from robust.attacks.dra import DRA, TrajectoryPoint, trajectory_weights
from robust.attacks.pgd import set_similarity
from robust.attacks.sa_aet import SAAET, dominant_directions, project_out
from robust.harness.matrix import run_matrix
from robust.report import build_report
from tests.test_matrix import clip32, make_spec, png_bytes, same_values, stored
from tests.test_report import pdf_text

CAPTIONS = (
    ("a red circle on the left", "a small red shape in the corner"),
    ("the big blue square in the middle", "a blue square"),
    ("a small green triangle at the top",),
)
EPS, STEP, STEPS, SAMPLES = 4 / 255, 1 / 255, 3, 2
BUDGET = {"eps": EPS, "step_size": STEP, "steps": STEPS, "samples": SAMPLES}
SCALES = 4  # SGA's scale set: 1 + 4 copies per multi-scale step


@pytest.fixture(scope="module")
def victim(tiny_open_clip_dir):
    return robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")


def batch() -> AttackBatch:
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return AttackBatch(images, CAPTIONS)


def attack(name, victim, mlm, **params):
    return build_attack(name, victim, {**BUDGET, **params}, mlm=mlm, seed=3)


@pytest.mark.parametrize("name", ["dra", "sa_aet"])
def test_every_iterate_stays_in_the_budget_and_moves_one_step(
    name, victim, tiny_mlm_dir, monkeypatch
):
    iterates: list[torch.Tensor] = []
    original = TrajectoryPoint.__call__

    def recording(self, step, current, clean, previous):
        iterates.append(current.detach().clone())
        return original(self, step, current, clean, previous)

    monkeypatch.setattr(TrajectoryPoint, "__call__", recording)
    clean = batch()
    adversarial = attack(name, victim, tiny_mlm_dir).craft(clean)
    iterates.append(adversarial.images)
    assert len(iterates) == STEPS + 1  # the random start, then after every step
    for iterate in iterates:
        assert (iterate - clean.images).abs().max() <= EPS + 1e-6
        assert iterate.min() >= 0 and iterate.max() <= 1
    for before, after in zip(iterates, iterates[1:], strict=False):
        assert (after - before).abs().max() <= STEP + 1e-6


@pytest.mark.parametrize("name", ["dra", "sa_aet"])
def test_each_step_encodes_k_look_aheads_and_the_scale_set(name, victim, tiny_mlm_dir, monkeypatch):
    calls: list[tuple[int, bool]] = []
    text_calls: list[int] = []
    encode_image, encode_text = victim.encode_image, victim.encode_text

    def count_images(images):
        calls.append((images.shape[0], torch.is_grad_enabled()))
        return encode_image(images)

    def count_texts(texts):
        text_calls.append(len(texts))
        return encode_text(texts)

    images = 3
    chosen = attack(name, victim, tiny_mlm_dir)
    guide_sets = [torch.randn(len(group), 16) for group in CAPTIONS]
    with torch.no_grad():
        clean = victim.encode_image(batch().images)
    monkeypatch.setattr(victim, "encode_image", count_images)
    monkeypatch.setattr(victim, "encode_text", count_texts)
    _, guide = chosen.attack_images(batch(), guide_sets, clean, torch.Generator())
    scale_set = ((1 + SCALES) * images, True)
    look_ahead = [(SAMPLES * images, True), (SAMPLES * images, False)]
    expected = [scale_set] + (look_ahead + [scale_set]) * (STEPS - 1)
    assert calls == expected + [(images, False), (images, False)]  # final and previous
    # the image loss never encodes text, but SA-AET encodes the batch's captions once
    assert text_calls == ([5] if name == "sa_aet" else [])
    assert guide.shape == clean.shape


@pytest.mark.parametrize("name", ["dra", "sa_aet"])
def test_same_seed_same_result_other_seed_differs(name, victim, tiny_mlm_dir):
    clean = batch()
    first = attack(name, victim, tiny_mlm_dir).craft(clean, torch.Generator().manual_seed(1))
    again = attack(name, victim, tiny_mlm_dir).craft(clean, torch.Generator().manual_seed(1))
    other = attack(name, victim, tiny_mlm_dir).craft(clean, torch.Generator().manual_seed(2))
    assert torch.equal(first.images, again.images) and first.texts == again.texts
    assert not torch.equal(first.images, other.images)


@pytest.mark.parametrize(
    ("name", "extra"),
    [("dra", {}), ("sa_aet", {"removed_directions": 0})],
)
def test_sampler_at_the_current_point_with_sgas_text_guide_is_exactly_sga(
    name, extra, victim, tiny_mlm_dir
):
    clean = batch()
    budget = {"eps": EPS, "step_size": STEP, "steps": STEPS}
    sga = build_attack("sga", victim, budget, mlm=tiny_mlm_dir)
    reduced = build_attack(
        name,
        victim,
        {**BUDGET, "sampler": "current", "text_ratios": [0, 1, 0], **extra},
        mlm=tiny_mlm_dir,
    )
    expected = sga.craft(clean, torch.Generator().manual_seed(5))
    got = reduced.craft(clean, torch.Generator().manual_seed(5))
    assert torch.equal(got.images, expected.images) and got.texts == expected.texts
    # the real sampler takes gradients elsewhere
    sampled = attack(name, victim, tiny_mlm_dir, **extra)
    moved = sampled.craft(clean, torch.Generator().manual_seed(5))
    assert not torch.equal(moved.images, expected.images)


def test_trajectory_weights_follow_the_official_samplers():
    draws = {
        sampler: trajectory_weights(sampler, 20_000, torch.Generator().manual_seed(0))
        for sampler in ("dra", "sa_aet")
    }
    for weights in draws.values():
        assert weights.shape == (20_000, 3)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(20_000))
        assert weights.min() >= 0.01 - 1e-6 and weights.max() <= 0.98 + 1e-6
    current, clean, previous = draws["sa_aet"].T
    assert bool(((current < previous) & (previous < clean)).all())
    for sampler, means in {"dra": (0.49, 0.25, 0.25), "sa_aet": (0.12, 0.60, 0.28)}.items():
        torch.testing.assert_close(draws[sampler].mean(0), torch.tensor(means), atol=0.01, rtol=0)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    fixed = trajectory_weights("current", 3, generator)
    assert fixed.tolist() == [[1.0, 0.0, 0.0]] * 3
    assert torch.equal(generator.get_state(), state)  # it draws nothing


def test_projection_removes_exactly_the_dominant_caption_direction():
    generator = torch.Generator().manual_seed(0)
    shared = F.normalize(torch.randn(16, generator=generator), dim=0)
    captions = F.normalize(torch.randn(40, 16, generator=generator) + 2 * shared, dim=-1)
    (direction,) = dominant_directions(captions, 1)
    top = torch.linalg.eigh((captions.T @ captions).double()).eigenvectors[:, -1].float()
    assert abs(float(direction @ top)) == pytest.approx(1.0, abs=1e-5)
    projection = project_out(torch.eye(16), direction[None])
    torch.testing.assert_close(projection, projection.T)
    torch.testing.assert_close(projection @ projection, projection, atol=1e-6, rtol=0)
    torch.testing.assert_close(projection @ direction, torch.zeros(16), atol=1e-6, rtol=0)
    assert int(torch.linalg.matrix_rank(projection)) == 15
    flipped = project_out(captions, -direction[None])
    torch.testing.assert_close(flipped, project_out(captions, direction[None]))
    # SA-AET's loss: <f, P g> = <f, g> - <f, u><g, u>, with no renormalisation
    images = F.normalize(torch.randn(2, 3, 16, generator=generator), dim=-1)
    owners = torch.tensor([0, 0, 1, 2])
    texts = captions[:4]
    raw = set_similarity(images, texts, owners)
    along = (images[..., owners, :] @ direction) * (texts @ direction)
    expected = raw - torch.zeros_like(raw).index_add(-1, owners, along)
    got = set_similarity(images, project_out(texts, direction[None]), owners)
    torch.testing.assert_close(got, expected)


def test_sa_aet_projects_the_batch_captions_direction_or_a_corpus_once(
    victim, tiny_mlm_dir, monkeypatch
):
    clean = batch()
    sa_aet = attack("sa_aet", victim, tiny_mlm_dir)
    with torch.no_grad():
        captions = F.normalize(victim.encode_text([t for g in CAPTIONS for t in g]), dim=-1)
    (direction,) = dominant_directions(captions, 1)
    projected = sa_aet.caption_directions(captions, clean)
    torch.testing.assert_close(projected, project_out(captions, direction[None]))
    torch.testing.assert_close(projected @ direction, torch.zeros(5), atol=1e-6, rtol=0)

    encoded: list[int] = []
    original = SAAET._unit_text

    def counting(self, texts):
        encoded.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(SAAET, "_unit_text", counting)
    held_out = attack("sa_aet", victim, tiny_mlm_dir, corpus="world:val", corpus_limit=4)
    held_out.craft(clean)
    held_out.craft(AttackBatch(clean.images[:1], CAPTIONS[:1]))
    assert len(encoded) == 1 and encoded[0] >= 4  # four images' captions, encoded once
    assert held_out.config()["extra"]["corpus"] == "world:val"


def test_defaults_are_the_official_ones(victim, tiny_mlm_dir):
    dra = build_attack("dra", victim, {}, mlm=tiny_mlm_dir).config()
    sa_aet = build_attack("sa_aet", victim, {}, mlm=tiny_mlm_dir).config()
    for config in (dra, sa_aet):
        assert config["image"]["eps"] == pytest.approx(2 / 255)
        assert config["image"]["step_size"] == pytest.approx(0.5 / 255)
        assert config["image"]["steps"] == 10
        assert tuple(config["image"]["scales"]) == (0.5, 0.75, 1.25, 1.5)
        assert config["extra"]["samples"] == 5
        assert config["extra"]["text_ratios"] == (0.6, 0.2, 0.2)
    assert dra["extra"] == {
        "samples": 5,
        "sampler": "dra",
        "project_lookahead": False,
        "text_ratios": (0.6, 0.2, 0.2),
    }
    assert sa_aet["extra"]["sampler"] == "sa_aet" and sa_aet["extra"]["project_lookahead"]
    assert sa_aet["extra"]["removed_directions"] == 1 and sa_aet["extra"]["corpus"] == "batch"
    assert isinstance(build_attack("sa_aet", victim, {}, mlm=tiny_mlm_dir), DRA)


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("dra", {"samples": 0}, "samples"),
        ("dra", {"sampler": "uniform"}, "sampler"),
        ("dra", {"text_ratios": [1, 1]}, "text_ratios"),
        ("dra", {"text_ratios": [0, 0, 0]}, "text_ratios"),
        ("dra", {"corpus": "batch"}, "no parameter 'corpus'"),
        ("sa_aet", {"removed_directions": -1}, "removed_directions"),
        ("sa_aet", {"corpus": "test-set"}, "corpus"),
        ("sa_aet", {"corpus_limit": 0}, "corpus_limit"),
    ],
)
def test_bad_parameters_are_one_clear_line(name, params, fragment, victim, tiny_mlm_dir):
    with pytest.raises(AttackConfigError, match=fragment) as error:
        build_attack(name, victim, params, mlm=tiny_mlm_dir)
    assert "\n" not in str(error.value)


def test_more_directions_than_captions_is_one_clear_line(victim, tiny_mlm_dir):
    sa_aet = attack("sa_aet", victim, tiny_mlm_dir, removed_directions=6)
    with pytest.raises(AttackConfigError, match="removed_directions=6") as error:
        sa_aet.craft(batch())
    assert "\n" not in str(error.value)


def test_both_run_through_the_matrix_resume_from_the_cache_and_reach_the_report(
    tmp_path, tiny_open_clip_dir, tiny_hf_clip_dir, tiny_mlm_dir, monkeypatch
):
    sources = [clip32(tiny_open_clip_dir)]
    targets = [*sources, {"name": "hf32", "spec": f"hf-clip:{tiny_hf_clip_dir}"}]
    params = {"eps": "4/255", "step_size": "1/255", "steps": 2, "samples": 2}
    attacks = [
        {"name": name, "params": params, "mlm": str(tiny_mlm_dir)} for name in ("dra", "sa_aet")
    ]

    def spec(folder):
        return make_spec(tmp_path / folder, sources, targets, attacks, limit=4, batch_size=2)

    run_matrix(spec("reference"))
    crafted: list[str] = []
    original = DRA.attack_images

    def killed_third(self, *args, **kwargs):
        crafted.append(self.name)
        if len(crafted) == 3:
            raise KeyboardInterrupt("killed while crafting SA-AET's first batch")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DRA, "attack_images", killed_third)
    resumed = spec("resumed")
    with pytest.raises(KeyboardInterrupt):
        run_matrix(resumed)
    crafted.clear()
    result = run_matrix(resumed)
    assert crafted == ["sa_aet", "sa_aet"]  # DRA's entry and nothing else was kept
    assert png_bytes(tmp_path / "reference") == png_bytes(tmp_path / "resumed")
    reference_rows, _ = stored(tmp_path / "reference")
    resumed_rows, _ = stored(tmp_path / "resumed")
    assert same_values(reference_rows, resumed_rows)
    assert {row.attack for row in resumed_rows} == {None, "dra", "sa_aet"}
    asr_cells = {(row.attack, row.target) for row in resumed_rows if row.metric == "tr_asr_r1"}
    assert asr_cells == {(a, t) for a in ("dra", "sa_aet") for t in ("clip32", "hf32")}
    assert result.tr_asr["dra"].shape == result.tr_asr["sa_aet"].shape == (1, 2)

    summary = build_report(tmp_path / "resumed", tmp_path / "report.pdf")
    text = pdf_text(summary.path)
    assert "Transfer matrices" in summary.sections
    assert "dra clip32 hf32" in text and "sa_aet clip32 hf32" in text
