"""AnyAttack: the decoder's layout and bound, training and resume, pairing and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robust.attacks.anyattack import (
    AnyAttack,
    DecoderConfig,
    DecoderLoadError,
    NoiseDecoder,
    add_noise,
    bound_noise,
    load_decoder,
    save_decoder,
)
from robust.attacks.anyattack_train import (
    FinetuneConfig,
    PretrainConfig,
    finetune,
    load_checkpoint,
    new_state,
    pretrain,
    pretrain_loss,
    temperature,
)
from robust.data.world import ZOO_WORLD
from robust.eval.targeted import class_key, pair_images
from robust.victims.registry import load_victim
from robust.zoo.recipes import world_image_size

# a decoder that fits the shipped toy-clip-vit: its embedding width, its world's image size
ZOO_SIZE = world_image_size(ZOO_WORLD)
WORLD_SIZES = {"embed_dim": 64, "image_size": ZOO_SIZE, "channels": 64, "bound": "tanh"}
EPS = 16 / 255
EPS32 = torch.tensor(EPS, dtype=torch.float32).item()  # the bound as float32 pixels hold it


@pytest.fixture(scope="module")
def toy_vit():
    return load_victim("toy-clip-vit")


def tiny_pretrain(**overrides) -> PretrainConfig:
    values = dict(
        encoder="toy-clip-vit",
        data=f"{ZOO_WORLD}:val",
        limit=32,
        batch_size=8,
        chunks=2,
        steps=6,
        lr=1e-3,
        tau_decay_steps=4,
        checkpoint_every=2,
        decoder=WORLD_SIZES,
    )
    values.update(overrides)
    return PretrainConfig(**values)


def test_noise_bounds_are_exact_and_tanh_keeps_gradients():
    raw = torch.linspace(-300, 300, 3 * 8 * 8).view(1, 3, 8, 8).requires_grad_(True)
    for bound in ("tanh", "clamp"):
        noise = bound_noise(raw, EPS, bound)
        assert noise.abs().max().item() == EPS32  # reaches the bound, never passes it
    assert torch.equal(bound_noise(raw, EPS, "clamp"), raw.detach().clamp(-EPS, EPS))

    moderate = torch.linspace(-3, 3, 50).requires_grad_(True)
    bound_noise(moderate, EPS, "tanh").sum().backward()
    assert (moderate.grad > 0).all()  # saturated outputs still receive gradient

    clean = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    adversarial = add_noise(clean, bound_noise(raw, EPS, "tanh").detach())
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - clean).abs().max().item() <= EPS32 + 1e-7  # float32 rounding only
    with pytest.raises(Exception, match="unknown noise bound"):
        DecoderConfig(bound="sigmoid")


def test_attack_output_stays_within_eps(toy_vit):
    torch.manual_seed(0)
    decoder = NoiseDecoder(DecoderConfig(**WORLD_SIZES)).eval()
    with torch.no_grad():
        decoder.final_conv.weight.mul_(1000)  # raw noise far beyond the budget
    attack = AnyAttack(toy_vit, decoder, eps=EPS)
    size = toy_vit.image_size
    images = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    noise = attack.noise(images.flip(0))
    assert noise.abs().max().item() == EPS32  # reaches the bound, never passes it
    adversarial = attack.apply(images, images.flip(0))
    assert (adversarial - images).abs().max().item() <= EPS + 1e-7


def test_decoder_has_the_released_parameter_count_and_names():
    decoder = NoiseDecoder()  # released sizes: 512-d, 224 px, 256 channels
    assert sum(p.numel() for p in decoder.parameters()) == 27_926_907
    names = decoder.state_dict()
    assert tuple(names["fc.0.weight"].shape) == (256 * 14 * 14, 512)
    assert tuple(names["upsample_blocks.8.attention.keys.weight"].shape) == (4, 16, 1, 1)
    assert tuple(names["final_conv.weight"].shape) == (3, 16, 3, 3)
    out = decoder.eval()(torch.zeros(1, 512))
    assert out.shape == (1, 3, 224, 224)


def released_layout_checkpoint(path, seed=0):
    """A checkpoint shaped like the released files: DDP names, optimiser, no config."""
    torch.manual_seed(seed)
    reference = NoiseDecoder().eval()
    state = {f"module.{name}": value for name, value in reference.state_dict().items()}
    torch.save({"decoder_state_dict": state, "epoch": 3, "optimizer_state_dict": {}}, path)
    return reference


def test_loads_a_checkpoint_with_the_released_key_layout(tmp_path):
    path = tmp_path / "coco_cos.pt"
    reference = released_layout_checkpoint(path)
    loaded = load_decoder(path)
    assert loaded.config == DecoderConfig(embed_dim=512, image_size=224, channels=256)
    assert loaded.config.bound == "clamp"  # the bound the released decoders were trained with
    embedding = torch.randn(2, 512, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded(embedding), reference(embedding))


def test_mismatched_checkpoints_name_the_keys(tmp_path):
    decoder = NoiseDecoder(DecoderConfig(**WORLD_SIZES))
    state = decoder.state_dict()
    del state["upsample_blocks.2.bn1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["final_conv.bias"] = torch.zeros(5)
    path = tmp_path / "broken.pt"
    torch.save({"decoder_state_dict": state, "decoder_config": WORLD_SIZES}, path)
    with pytest.raises(DecoderLoadError) as raised:
        load_decoder(path)
    message = str(raised.value)
    assert "missing: upsample_blocks.2.bn1.weight" in message
    assert "unexpected: extra.weight" in message
    assert "final_conv.bias (5,) (expected (3,))" in message

    torch.save({"weights": {}}, path)
    with pytest.raises(DecoderLoadError, match="no 'decoder_state_dict' entry"):
        load_decoder(path)
    with pytest.raises(DecoderLoadError, match="does not exist"):
        load_decoder(tmp_path / "absent.pt")


def test_save_then_load_round_trips(tmp_path):
    torch.manual_seed(0)
    decoder = NoiseDecoder(DecoderConfig(**WORLD_SIZES)).eval()
    loaded = load_decoder(save_decoder(decoder, tmp_path / "d.pt"))
    embedding = torch.randn(2, 64)
    with torch.no_grad():
        assert torch.equal(loaded(embedding), decoder(embedding))


def test_temperature_follows_the_global_step():
    config = tiny_pretrain(tau_decay_steps=100)
    assert temperature(config, 0) == pytest.approx(1.0)
    assert temperature(config, 50) == pytest.approx(0.07**0.5)
    assert temperature(config, 100) == pytest.approx(0.07)
    assert temperature(config, 10_000) == pytest.approx(0.07)


def test_decoder_initialisation_follows_the_seed_and_leaves_the_global_generator_alone():
    config = tiny_pretrain()
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = new_state(config).decoder.state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(1)
    second = new_state(config).decoder.state_dict()
    other_seed = new_state(tiny_pretrain(seed=config.seed + 1)).decoder.state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other_seed[name]) for name in first)


def test_resume_continues_the_same_run(tmp_path, toy_vit):
    config = tiny_pretrain()
    straight = pretrain(config, encoder=toy_vit)

    checkpoint = tmp_path / "run.pt"
    first_half = pretrain(config, until=3, checkpoint=checkpoint, encoder=toy_vit)
    assert first_half.step == 3
    resumed = load_checkpoint(checkpoint)
    assert resumed.step == 3 and resumed.config == config
    finished = pretrain(resumed, checkpoint=checkpoint, encoder=toy_vit)

    assert finished.step == straight.step == 6
    assert finished.losses == straight.losses
    for name, value in straight.decoder.state_dict().items():
        assert torch.equal(finished.decoder.state_dict()[name], value), name
    assert load_checkpoint(checkpoint).step == 6


def test_finetune_starts_from_a_decoder_and_resumes(tmp_path, toy_vit):
    init = save_decoder(NoiseDecoder(DecoderConfig(**WORLD_SIZES)), tmp_path / "init.pt")
    config = FinetuneConfig(
        encoder="toy-clip-vit",
        data=f"{ZOO_WORLD}:val",
        clean=f"{ZOO_WORLD}:test-1k",
        limit=32,
        batch_size=8,
        steps=4,
        lr=1e-3,
        auxiliaries={"toy-clip-vit": 1.0, "toy-clip-rn": 0.5},
        criterion="contrastive",
        init=str(init),
        decoder=WORLD_SIZES,
    )
    straight = finetune(config, encoder=toy_vit)
    checkpoint = tmp_path / "ft.pt"
    finetune(config, until=2, checkpoint=checkpoint, encoder=toy_vit)
    finished = finetune(load_checkpoint(checkpoint), encoder=toy_vit)
    assert finished.losses == straight.losses and len(straight.losses) == 4
    with pytest.raises(Exception, match="criterion"):
        FinetuneConfig(criterion="l2", decoder=WORLD_SIZES)


def test_pairing_spans_every_shape_and_colour_and_is_seeded():
    from robust.data.world import COLORS, SHAPES, generate_world

    world = generate_world("test-1k", count=400)
    pairs = pair_images(world, 100, seed=5)
    assert len(pairs) == 100
    assert not set(pairs.clean) & set(pairs.target)
    for indices in (pairs.clean, pairs.target):
        keys = {class_key(world.labels[i]) for i in indices}
        assert {shape for shape, _ in keys} == set(SHAPES)
        assert {colour for _, colour in keys} == set(COLORS)
    same_class = sum(
        class_key(world.labels[c]) == class_key(world.labels[t])
        for c, t in zip(pairs.clean, pairs.target, strict=True)
    )
    assert same_class == 0
    again = pair_images(world, 100, seed=5)
    assert np.array_equal(again.clean, pairs.clean) and np.array_equal(again.target, pairs.target)
    assert not np.array_equal(pair_images(world, 100, seed=6).target, pairs.target)


@pytest.mark.slow
def test_short_pretraining_lowers_the_loss_and_beats_the_clean_floor(tmp_path, toy_vit):
    from robust.data.images import load_images
    from robust.data.world import generate_world
    from robust.harness.anyattack_eval import evaluate_anyattack
    from robust.harness.store import ResultStore

    config = tiny_pretrain(
        data=f"{ZOO_WORLD}:train",
        limit=64,
        batch_size=32,
        chunks=1,
        steps=160,
        lr=3e-3,
        tau_decay_steps=60,
    )
    val = generate_world("val", count=32, version=ZOO_WORLD)
    held_out = load_images(val.images, range(32), ZOO_SIZE)  # images the decoder never saw
    state = pretrain(config, encoder=toy_vit)
    untrained = NoiseDecoder(DecoderConfig(**WORLD_SIZES)).eval()

    def fixed_tau_loss(decoder):
        with torch.no_grad():
            return pretrain_loss(
                decoder.eval(), toy_vit, held_out, config, 0.07, torch.Generator().manual_seed(0)
            ).item()

    assert fixed_tau_loss(state.decoder) < fixed_tau_loss(untrained) - 0.3

    # targets the decoder was trained on, pasted onto clean images it has seen as cleans
    world = generate_world("train", count=64, version=ZOO_WORLD)
    evaluation = evaluate_anyattack(
        state.decoder, "toy-clip-vit", ["toy-clip-vit"], world, tmp_path, pairs=32, examples=2
    )
    results = evaluation.retrieval["toy-clip-vit"]
    adv, floor, ceiling = (results[g].recall(1) for g in ("adv", "floor", "ceiling"))
    for direction in (0, 1):  # TR and IR R@1
        assert floor[direction] < adv[direction] < ceiling[direction]
    adv = adv[0]
    floor = floor[0]
    with ResultStore.in_run_dir(tmp_path) as store:
        stored = store.metrics(attack="anyattack")
    # the seed of the drawn pairs, the encoder as source, the evaluated victim as target
    assert {(r.seed, r.source, r.target, r.victim) for r in stored} == {
        (0, "toy-clip-vit", "toy-clip-vit", "toy-clip-vit")
    }
    rows = {r.metric: r.value for r in stored}
    assert rows["adv_tr_r1"] == pytest.approx(adv)
    assert rows["floor_tr_r1"] == pytest.approx(floor)
    examples = json.loads((tmp_path / "anyattack_examples" / "examples.json").read_text())
    assert len(examples["examples"]) == 2
    for kind in ("clean", "noise", "adversarial", "target"):
        assert (tmp_path / "anyattack_examples" / examples["examples"][0]["files"][kind]).is_file()


def test_matrix_runs_anyattack_as_a_targeted_attack(tmp_path, toy_vit):
    from robust.attacks import AttackBatch, build_attack
    from robust.data.images import load_images
    from robust.data.world import generate_world
    from robust.harness.matrix import run_matrix
    from robust.harness.spec import parse_spec
    from robust.harness.store import ResultStore

    torch.manual_seed(0)
    decoder_path = save_decoder(
        NoiseDecoder(DecoderConfig(**WORLD_SIZES)).eval(), tmp_path / "d.pt"
    )
    world = generate_world("val", count=4, version=ZOO_WORLD)
    attack = build_attack("anyattack", toy_vit, {"decoder": str(decoder_path)}, seed=3)
    assert attack.kind == "targeted" and attack.config()["decoder"] == str(decoder_path)
    images = load_images(world.images, range(4), toy_vit.image_size)
    groups = tuple(tuple(g) for g in world.captions_of(range(4)))
    output = attack.craft(AttackBatch(images, groups), torch.Generator().manual_seed(0))
    assert (output.images - images).abs().max().item() <= EPS32 + 1e-7
    assert sorted(output.texts) == sorted(groups) and all(
        out != own for out, own in zip(output.texts, groups, strict=True)
    )  # every image carries another image's captions: its target's

    spec = parse_spec(
        {
            "name": "anyattack-matrix",
            "dataset": f"{ZOO_WORLD}:val",
            "limit": 8,
            "sources": ["toy-clip-vit"],
            "targets": ["toy-clip-vit", "toy-clip-rn"],
            "attacks": [{"name": "anyattack", "params": {"decoder": str(decoder_path)}}],
            "batch_size": 4,
            "eval_batch_size": 8,
            "output_dir": str(tmp_path / "run"),
        }
    )
    result = run_matrix(spec)
    with ResultStore.in_run_dir(spec.run_dir) as store:
        rows = store.metrics(result.run_id, attack="anyattack")
    assert {row.target for row in rows} == {"toy-clip-vit", "toy-clip-rn"}
    assert {row.metric for row in rows} >= {"tr_r1", "ir_r1"}
    with pytest.raises(Exception, match="params.decoder"):
        parse_spec({**spec.canonical(), "attacks": [{"name": "anyattack"}]})


def test_shipped_world_decoder_loads_and_beats_the_clean_floor(tmp_path):
    from robust.attacks.anyattack import describe_checkpoint
    from robust.data.world import generate_world
    from robust.harness.anyattack_eval import WORLD_DECODER, evaluate_anyattack

    info = describe_checkpoint(WORLD_DECODER)
    assert info["decoder"] == WORLD_SIZES
    assert info["encoder"] == "toy-clip-vit" and info["eps"] == pytest.approx(EPS)
    world = generate_world("test-1k", count=400, version=ZOO_WORLD)
    evaluation = evaluate_anyattack(
        load_decoder(WORLD_DECODER), "toy-clip-vit", ["toy-clip-vit"], world, tmp_path, pairs=200
    )
    results = evaluation.retrieval["toy-clip-vit"]
    assert results["adv"].recall(10)[0] > results["floor"].recall(10)[0] + 0.02


def test_a_second_evaluation_reads_every_gallery_from_the_cache(tmp_path, monkeypatch):
    """Galleries are cache entries per victim geometry; a second run into the same
    directory crafts nothing and stores the same rows, captions and examples."""
    from robust.data.world import generate_world
    from robust.harness.anyattack_eval import WORLD_DECODER, evaluate_anyattack
    from robust.harness.cache import CacheEntry
    from robust.harness.store import ResultStore

    world = generate_world("test-1k", count=24, version=ZOO_WORLD)
    victims = ["toy-clip-vit", "toy-blip-cap"]  # crop and squash: one entry per geometry

    def evaluate():
        return evaluate_anyattack(
            load_decoder(WORLD_DECODER), "toy-clip-vit", victims, world, tmp_path, pairs=8,
            examples=1,
        )  # fmt: skip

    first = evaluate()
    cache = tmp_path / "cache"
    entries = sorted(path.parent.relative_to(cache) for path in cache.rglob("manifest.json"))
    assert len(entries) == 7  # adv/floor/ceiling at both geometries, the examples' noise
    assert {path.name for path in entries} == {
        f"seed-0-at-{ZOO_SIZE}-crop",
        f"seed-0-at-{ZOO_SIZE}-squash",
    }
    examples = (tmp_path / "anyattack_examples" / "examples.json").read_text()

    def crafting(*args, **kwargs):
        raise AssertionError("a second run crafted a cached gallery again")

    monkeypatch.setattr(CacheEntry, "write_batch", crafting)
    second = evaluate()
    assert second.run_id == first.run_id + 1
    with ResultStore.in_run_dir(tmp_path) as store:
        rows = [
            {(r.target, r.metric): r.value for r in store.metrics(run_id, attack="anyattack")}
            for run_id in (first.run_id, second.run_id)
        ]
    captions = 3 * 2 * 5 + 3 * (2 * 4 + 1)  # BLEU & co., caption target rates, per gallery
    assert rows[0] == rows[1] and len(rows[0]) == 3 * 7 + captions  # recalls, captions
    rates = {m: v for (t, m), v in rows[0].items() if t == "toy-blip-cap" and "_true" in m}
    assert rates == {m: v for m, v in first.captioning["toy-blip-cap"].items() if "_true" in m}
    assert rates["ceiling_vs_target_color_true"] > rates["floor_vs_target_color_true"] + 0.3
    assert rates["floor_vs_clean_color_true"] > rates["floor_vs_target_color_true"] + 0.3
    assert second.generated == first.generated and set(first.generated) == {"toy-blip-cap"}
    assert (tmp_path / "anyattack_examples" / "examples.json").read_text() == examples

    monkeypatch.undo()
    with pytest.raises(AssertionError, match="crafted"):  # another budget is another entry
        monkeypatch.setattr(CacheEntry, "write_batch", crafting)
        evaluate_anyattack(
            load_decoder(WORLD_DECODER), "toy-clip-vit", victims[:1], world, tmp_path, pairs=8,
            eps=8 / 255, examples=0,
        )  # fmt: skip


def test_a_targeted_cell_names_the_galleries_it_can_cache(tmp_path):
    from robust.data.world import generate_world
    from robust.errors import RobustError
    from robust.harness.cells import CellRunner, ExperimentSettings
    from robust.harness.executors import TargetedCell

    world = generate_world("val", count=8, version=ZOO_WORLD)
    runner = CellRunner(ExperimentSettings(dataset=world.name), tmp_path, dataset=world)
    cell = TargetedCell("anyattack-x", "toy-clip-vit", 0, "d.pt", EPS, 2, "clear", ZOO_SIZE, "crop")
    with pytest.raises(RobustError, match="unknown AnyAttack gallery 'clear'; choose one of adv"):
        runner(cell)
