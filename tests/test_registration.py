"""A user's own attack and victim family, registered from this module alone, run in the matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from robust.attacks import (
    AttackConfigError,
    ImageAttack,
    attack_class,
    build_attack,
    register_attack,
)
from robust.data import load_dataset
from robust.data.images import load_images, to_uint8_array
from robust.data.world import ZOO_WORLD
from robust.errors import RobustError, UnknownVictimError
from robust.harness.cache import AdversarialCache
from robust.harness.matrix import run_matrix
from robust.harness.spec import SpecError, parse_spec
from robust.harness.store import ResultStore
from robust.victims import Victim, register_victim_family
from robust.victims.registry import (
    KNOWN_VICTIMS,
    check_victim,
    load_victim,
    spec_image_size,
)
from robust.zoo.recipes import world_image_size

NOISE = "uniform_noise"
FAMILY = "passthrough"
SOURCE = f"{FAMILY}:toy-clip-vit"
LIMIT = 8
DATASET = f"{ZOO_WORLD}:val"  # the shipped toys' world
TOY_SIZE = world_image_size(ZOO_WORLD)  # and so their input size


@dataclass(frozen=True)
class UniformNoiseParams:
    """The noise's L-inf radius and its shape."""

    eps: float = 0.5
    spread: str = "uniform"

    def __post_init__(self) -> None:
        if self.spread not in ("uniform", "sign"):
            raise AttackConfigError(f"spread must be 'uniform' or 'sign', got {self.spread!r}")


@register_attack
class UniformNoise(ImageAttack):
    """Adds seeded noise within eps: the smallest attack there is."""

    name: ClassVar[str] = NOISE
    Params: ClassVar[type] = UniformNoiseParams  # the base class validates params into it

    def __call__(
        self,
        images: torch.Tensor,
        texts_per_image: Sequence[Sequence[str]],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        params: UniformNoiseParams = self.params()
        draw = torch.rand(images.shape, generator=self.generator(generator)) * 2 - 1
        if params.spread == "sign":
            draw = draw.sign()
        return (images + params.eps * draw.to(images.device)).clamp(0, 1)


class PassThroughVictim(Victim):
    """Another family in front of any registered victim: same embeddings, its own name."""

    family = FAMILY
    capabilities = frozenset({"itc"})

    def __init__(self, inner: Victim, name: str) -> None:
        super().__init__(name, inner.image_size, inner.mean, inner.std)
        self.inner = inner
        self.resize_mode = inner.resize_mode

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner.encode_image(images)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.inner.encode_text(texts)


def load_pass_through(arg: str, name: str | None) -> Victim:
    return PassThroughVictim(load_victim(arg), name or f"{FAMILY}:{arg}")


register_victim_family(
    FAMILY,
    PassThroughVictim,
    load=load_pass_through,
    check=lambda arg, name: check_victim(arg),
    image_size=lambda arg, name: spec_image_size(arg),
)


def spec_data(output_dir, **changes) -> dict:
    data = {
        "name": "registration",
        "dataset": DATASET,
        "limit": LIMIT,
        "sources": [SOURCE],
        "targets": [SOURCE, "toy-clip-rn"],
        "attacks": [{"name": NOISE, "params": {"eps": 0.5, "spread": "sign"}}],
        "batch_size": 4,
        "eval_batch_size": 8,
        "output_dir": str(output_dir),
    }
    data.update(changes)
    return data


def test_user_attack_and_family_run_through_the_matrix(tmp_path):
    first = run_matrix(parse_spec(spec_data(tmp_path / "first")))
    with ResultStore.in_run_dir(tmp_path / "first") as store:
        rows = store.metrics(first.run_id, attack=NOISE)
    assert {row.target for row in rows} == {SOURCE, "toy-clip-rn"}
    assert {row.source for row in rows} == {SOURCE}
    # sign noise of half the pixel range destroys what the source sees
    assert first.asr(NOISE, SOURCE, SOURCE)[0] > 0
    assert first.white_box.tolist() == [[True, False]]

    def crafted(run: str) -> np.ndarray:
        entry = AdversarialCache(tmp_path / run / "cache").entry(NOISE, SOURCE, 0)
        return entry.load().images

    second = run_matrix(parse_spec(spec_data(tmp_path / "second")))
    np.testing.assert_array_equal(crafted("first"), crafted("second"))  # same seed, same noise
    np.testing.assert_array_equal(first.tr_asr[NOISE], second.tr_asr[NOISE])
    dataset = load_dataset(DATASET, limit=LIMIT)
    clean = to_uint8_array(load_images(dataset.images, range(LIMIT), TOY_SIZE, "crop"))
    change = np.abs(crafted("first").astype(int) - clean.astype(int))
    assert 0 < change.max() <= 0.5 * 255 + 1  # the noise is there, within its eps


def test_registered_family_loads_and_describes_itself():
    victim = load_victim(SOURCE)
    assert isinstance(victim, PassThroughVictim) and victim.name == SOURCE
    assert victim.image_size == spec_image_size(SOURCE) == TOY_SIZE
    with pytest.raises(UnknownVictimError) as error:
        load_victim("nofamily:toy-clip-vit")
    message = str(error.value)
    assert f"{FAMILY}:..." in message and "open_clip:..." in message and "\n" not in message


def test_user_attack_params_are_validated_by_its_own_dataclass(tmp_path):
    attack = build_attack(NOISE, load_victim("toy-clip-vit"), {"spread": "uniform"}, seed=2)
    assert attack.config()["spread"] == "uniform" and attack.config()["kind"] == "image"
    with pytest.raises(AttackConfigError, match="spread must be 'uniform' or 'sign'"):
        build_attack(NOISE, load_victim("toy-clip-vit"), {"spread": "gauss"})
    bad = spec_data(tmp_path, attacks=[{"name": NOISE, "params": {"spread": "gauss"}}])
    with pytest.raises(SpecError, match="attacks\\[0\\]: uniform_noise: spread must be"):
        parse_spec(bad)
    typo = spec_data(tmp_path, attacks=[{"name": NOISE, "params": {"epsilon": 0.1}}])
    with pytest.raises(SpecError, match="uniform_noise has no parameter 'epsilon'; known: eps"):
        parse_spec(typo)
    with_mlm = spec_data(tmp_path, attacks=[{"name": NOISE, "mlm": "toy-mlm"}])
    with pytest.raises(SpecError, match="mlm is only used"):
        parse_spec(with_mlm)


def test_a_taken_name_cannot_be_registered_again():
    class Impostor(UniformNoise):
        name: ClassVar[str] = "pgd"

    with pytest.raises(AttackConfigError, match="'pgd' is already registered by robust"):
        register_attack(Impostor)

    class Twin(UniformNoise):
        name: ClassVar[str] = NOISE

    with pytest.raises(AttackConfigError, match="already registered"):
        register_attack(Twin)
    assert register_attack(UniformNoise) is UniformNoise  # the same class again is a no-op

    class Nameless(UniformNoise):
        pass

    with pytest.raises(AttackConfigError, match="no name of its own"):
        register_attack(Nameless)

    class Unparametrised(ImageAttack):
        name: ClassVar[str] = "unparametrised"

        def params(self):
            return None

        def __call__(self, images, texts_per_image, generator=None):
            return images

    with pytest.raises(AttackConfigError, match="no Params dataclass"):
        register_attack(Unparametrised)
    with pytest.raises(RobustError, match="'albef' is already registered"):
        register_victim_family("albef", PassThroughVictim, load=load_pass_through, check=print)


def test_running_a_definition_again_replaces_its_registration():
    """A reloaded module or a re-run notebook cell defines the same class anew: it replaces
    the entry (and is what the name builds from then on) instead of being refused."""
    namespace: dict = {}
    source = (
        "from dataclasses import dataclass\n"
        "from robust.attacks import ImageAttack, register_attack\n"
        "@dataclass(frozen=True)\n"
        "class P:\n"
        "    pass\n"
        "@register_attack\n"
        "class Rerun(ImageAttack):\n"
        "    name = 'rerun_test_attack'\n"
        "    Params = P\n"
        "    def params(self):\n"
        "        return P()\n"
        "    def __call__(self, images, texts_per_image, generator=None):\n"
        "        return images\n"
    )
    exec(compile(source, "<cell>", "exec"), namespace)
    first = namespace["Rerun"]
    exec(compile(source, "<cell>", "exec"), namespace)
    second = namespace["Rerun"]
    assert first is not second
    assert attack_class("rerun_test_attack") is second


def test_unknown_attack_lists_every_known_name():
    with pytest.raises(AttackConfigError) as error:
        attack_class("fgsm")
    message = str(error.value)
    for name in ("pgd", "bert_attack", "sga", "advclip", "anyattack", NOISE):
        assert name in message
    assert "\n" not in message


# What `robust victims` printed for every shipped entry before families stated these facts;
# the toys' resolution is their world's.
SHIPPED_LISTING = {
    "clip-vit-b16": ("clip", 224, "itc"),
    "clip-rn101": ("clip", 224, "itc"),
    "clip-vit-b32": ("clip", 224, "itc"),
    "clip-vit-l14": ("clip", 224, "itc"),
    "tecoa2-clip-vit-l14": ("clip", 224, "itc"),
    "tecoa4-clip-vit-l14": ("clip", 224, "itc"),
    "fare2-clip-vit-l14": ("clip", 224, "itc"),
    "fare4-clip-vit-l14": ("clip", 224, "itc"),
    "albef-flickr": ("albef", 384, "itc,itm"),
    "albef-coco": ("albef", 384, "itc,itm"),
    "tcl-flickr": ("tcl", 384, "itc,itm"),
    "tcl-coco": ("tcl", 384, "itc,itm"),
    "blip-itm-base-coco": ("blip", 384, "itc,itm"),
    "blip-itm-base-flickr": ("blip", 384, "itc,itm"),
    "blip-itm-large-coco": ("blip", 384, "itc,itm"),
    "blip-itm-large-flickr": ("blip", 384, "itc,itm"),
    "blip-cap-base": ("blip", 384, "caption"),
    "blip-cap-large": ("blip", 384, "caption"),
    "toy-clip-vit": ("clip", TOY_SIZE, "itc"),
    "toy-clip-rn": ("clip", TOY_SIZE, "itc"),
    "toy-albef": ("albef", TOY_SIZE, "itc,itm"),
    "toy-tcl": ("tcl", TOY_SIZE, "itc,itm"),
    "toy-blip": ("blip", TOY_SIZE, "itc,itm"),
    "toy-blip-cap": ("blip", TOY_SIZE, "caption"),
}


def test_named_victims_take_family_resolution_and_capabilities_from_their_family(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("ROBUST_WEIGHTS", str(tmp_path))  # nothing of the real models here
    listing = {
        entry.name: (entry.family, entry.image_size, ",".join(entry.capabilities))
        for entry in KNOWN_VICTIMS.values()
    }
    assert listing == SHIPPED_LISTING
