"""torchattacks interop against the real package: classifiers, budgets, recall, labelling."""

from __future__ import annotations

import sys

import pytest
import torch
import torchattacks

import robust
from robust.attacks import AttackConfigError, build_attack
from robust.attacks.interop import CaptionSetClassifier, as_classifier, run_torchattacks
from robust.data import load_dataset
from robust.data.images import load_images
from robust.eval.retrieval import rank_from_features

IMAGES = 16
EPS = 8 / 255
# five steps keep the tests fast; at 8/255 each breaks most of toy-clip-vit's 16 text queries
BOUNDED_ATTACKS = {
    "PGD": {"eps": EPS, "alpha": 2 / 255, "steps": 5},
    "MIFGSM": {"eps": EPS, "alpha": 2 / 255, "steps": 5},
    "APGD": {"eps": EPS, "steps": 5, "loss": "ce"},
}


@pytest.fixture(scope="module")
def victim():
    return robust.load_victim("toy-clip-vit")


@pytest.fixture(scope="module")
def batch(victim):
    """The first world test-1k images at the victim's size and their caption sets."""
    data = load_dataset("world:test-1k", limit=IMAGES)
    images = load_images(
        data.images, range(IMAGES), size=victim.image_size, mode=victim.resize_mode
    )
    return data, images, data.captions_of(range(IMAGES))


def text_r1(victim, images, data) -> float:
    """TR R@1 of `images` against every caption of the batch."""
    with torch.no_grad():
        result = rank_from_features(
            victim.encode_image(images), victim.encode_text(list(data.captions)), data.caption_image
        )
    return float(result.tr_correct(1).mean())


def test_classifier_logits_are_scaled_similarities(tiny_open_clip_dir):
    tiny = robust.load_victim(f"open_clip:local-dir:{tiny_open_clip_dir}")
    gallery = ["a red circle", "a blue square", "a green star"]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    classifier = as_classifier(tiny, gallery, logit_scale=10.0)
    with torch.no_grad():
        expected = 10.0 * tiny.encode_image(images) @ tiny.encode_text(gallery).T
        torch.testing.assert_close(classifier(images), expected)
    with pytest.raises(ValueError, match="empty"):
        as_classifier(tiny, [])


def test_caption_set_classifier_is_right_exactly_where_text_r1_is(victim, batch):
    data, images, caption_sets = batch
    classifier = CaptionSetClassifier(victim, caption_sets)
    with torch.no_grad():
        predicted = classifier(images).argmax(dim=1)
        features = victim.encode_image(images)
        texts = victim.encode_text(list(data.captions))
    right = rank_from_features(features, texts, data.caption_image).tr_correct(1)
    assert classifier.num_classes == IMAGES
    assert (predicted == torch.arange(IMAGES)).numpy().tolist() == right.tolist()
    # the logit of a set is its best caption's scaled similarity
    best_own = (features @ texts.T)[0, list(data.image_captions[0])].max()
    torch.testing.assert_close(classifier(images)[0, 0], classifier.logit_scale * best_own)


@pytest.mark.parametrize("name", sorted(BOUNDED_ATTACKS))
def test_bounded_attacks_through_as_classifier_lower_recall_within_eps(victim, batch, name):
    data, images, caption_sets = batch
    classifier = as_classifier(victim, [captions[0] for captions in caption_sets])
    labels = torch.arange(IMAGES)
    attack = getattr(torchattacks, name)(classifier, **BOUNDED_ATTACKS[name])
    adversarial = run_torchattacks(attack, images, labels, seed=0)
    assert (adversarial - images).abs().max() <= EPS + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    with torch.no_grad():
        clean_right = (classifier(images).argmax(1) == labels).float().mean()
        adv_right = (classifier(adversarial).argmax(1) == labels).float().mean()
    assert adv_right < clean_right
    assert text_r1(victim, adversarial, data) < text_r1(victim, images, data) - 0.5


def test_cw_through_as_classifier_changes_only_images_it_fools(victim, batch):
    """CW bounds no norm; it returns, per image, its smallest successful perturbation or the
    clean image untouched."""
    data, images, caption_sets = batch
    classifier = as_classifier(victim, [captions[0] for captions in caption_sets])
    labels = torch.arange(IMAGES)
    adversarial = torchattacks.CW(classifier, c=1.0, steps=30, lr=0.01)(images, labels)
    changed = (adversarial - images).flatten(1).abs().amax(1) > 0
    with torch.no_grad():
        fooled = classifier(adversarial).argmax(1) != labels
    assert changed.any()
    assert bool(fooled[changed].all())
    assert bool((adversarial[~changed] == images[~changed]).all())
    assert text_r1(victim, adversarial, data) < text_r1(victim, images, data)


@pytest.mark.parametrize("name", sorted(BOUNDED_ATTACKS))
def test_matrix_kind_runs_real_attacks_that_lower_text_r1(victim, batch, name):
    data, images, caption_sets = batch
    attack = build_attack("torchattacks", victim, {"attack": name, **BOUNDED_ATTACKS[name]}, seed=3)
    adversarial = attack(images, caption_sets)
    assert (adversarial - images).abs().max() <= EPS + 1e-6
    assert text_r1(victim, adversarial, data) < text_r1(victim, images, data) - 0.5
    assert torch.equal(adversarial, attack(images, caption_sets))  # seeded, global RNG forked
    config = attack.config()
    assert config["attack_class"] == name and config["labels"] == "caption-set-max"
    assert config["arguments"] == BOUNDED_ATTACKS[name]


def test_matrix_kind_runs_cw(victim, batch):
    data, images, caption_sets = batch
    attack = build_attack("torchattacks", victim, {"attack": "CW", "steps": 30, "lr": 0.01})
    adversarial = attack(images, caption_sets)
    changed = (adversarial - images).flatten(1).abs().amax(1) > 0
    with torch.no_grad():
        fooled = CaptionSetClassifier(victim, caption_sets)(adversarial).argmax(1)
    assert bool((fooled[changed] != torch.arange(IMAGES)[changed]).all())
    assert text_r1(victim, adversarial, data) < text_r1(victim, images, data)


def test_unknown_attack_or_missing_package_is_one_clear_line(victim, monkeypatch):
    with pytest.raises(AttackConfigError, match="no attack 'NOPE'"):
        build_attack("torchattacks", victim, {"attack": "NOPE"})
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # as if it were not installed
    with pytest.raises(AttackConfigError, match=r"pip install --no-deps torchattacks==3\.5\.1"):
        build_attack("torchattacks", victim, {"attack": "PGD"})
