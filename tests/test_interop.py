"""torchattacks interop: gallery classifier logits and the adapter, with a stand-in module."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

import robust
from robust.attacks import AttackConfigError, build_attack
from robust.attacks.interop import as_classifier

CAPTIONS = (("a red circle", "a red disc"), ("a blue square",), ("a green star", "a star"))


@pytest.fixture(scope="module")
def victim(tiny_open_clip_dir):
    return robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")


class OneStepFGSM:
    """A stand-in with torchattacks' calling convention: Attack(model, **kw)(images, labels)."""

    calls: list = []

    def __init__(self, model, eps=8 / 255):
        self.model, self.eps = model, eps

    def __call__(self, images, labels):
        OneStepFGSM.calls.append(labels.tolist())
        images = images.clone().requires_grad_(True)
        noise = torch.rand_like(images) * 1e-3  # global RNG, as torchattacks uses
        loss = F.cross_entropy(self.model(images + noise), labels)
        (gradient,) = torch.autograd.grad(loss, images)
        return (images + self.eps * gradient.sign()).clamp(0, 1).detach()


@pytest.fixture
def fake_torchattacks(monkeypatch):
    module = types.ModuleType("torchattacks")
    module.FGSM = OneStepFGSM
    monkeypatch.setitem(sys.modules, "torchattacks", module)
    OneStepFGSM.calls = []
    return module


def test_classifier_logits_are_scaled_similarities(victim):
    gallery = ["a red circle", "a blue square", "a green star"]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    classifier = as_classifier(victim, gallery, logit_scale=10.0)
    with torch.no_grad():
        expected = 10.0 * victim.encode_image(images) @ victim.encode_text(gallery).T
        torch.testing.assert_close(classifier(images), expected)
    with pytest.raises(ValueError, match="empty"):
        as_classifier(victim, [])


def test_adapter_labels_each_image_with_its_first_caption(victim, fake_torchattacks):
    attack = build_attack("torchattacks", victim, {"attack": "FGSM", "eps": 4 / 255}, seed=1)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = attack(images, CAPTIONS)
    assert OneStepFGSM.calls == [[0, 2, 3]]
    assert (first - images).abs().max() <= 4 / 255 + 1e-6
    assert torch.equal(first, attack(images, CAPTIONS))  # seeded: global RNG is forked
    assert attack.config()["arguments"] == {"eps": 4 / 255}
    assert attack.config()["attack"] == "torchattacks"
    assert attack.config()["attack_class"] == "FGSM"


def test_missing_package_or_attack_is_one_clear_line(victim, monkeypatch, fake_torchattacks):
    with pytest.raises(AttackConfigError, match="no attack 'NOPE'"):
        build_attack("torchattacks", victim, {"attack": "NOPE"})
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(AttackConfigError, match=r"pip install 'vlp-robust\[torchattacks\]'"):
        build_attack("torchattacks", victim, {"attack": "PGD"})
