"""The linear attribute probe (tools/world_attribute_probe.py) finds an attribute an
embedding holds and finds nothing in one that does not."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from robust.data.world import generate_world
from robust.zoo.scene_attributes import prior_loss, scene_attribute_targets, top_k_precision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import world_attribute_probe as attribute_probe  # noqa: E402


def test_the_probe_reads_a_linearly_held_attribute_and_not_noise():
    scenes = generate_world("train", count=600, version="world-v3", size=32)
    targets = scene_attribute_targets(scenes.labels, "world-v3", ["shape"])
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(targets.shape[1], 16, generator=generator)
    holding = targets @ mixing + 0.1 * torch.randn(len(targets), 16, generator=generator)
    noise = torch.randn(len(targets), 16, generator=generator)
    fit, held_out = slice(0, 500), slice(500, 600)
    scores = {}
    for name, embeddings in (("holding", holding), ("noise", noise)):
        head = attribute_probe.probe(embeddings[fit], targets[fit], steps=300, seed=0)
        with torch.no_grad():
            logits = head(embeddings[held_out])
        loss = float(F.binary_cross_entropy_with_logits(logits, targets[held_out]))
        scores[name] = (loss, top_k_precision(logits, targets[held_out]))
    guessing = prior_loss(targets[held_out])
    assert scores["holding"][1] > 0.9 and scores["holding"][0] < guessing / 2
    assert scores["noise"][1] < 0.3 and scores["noise"][0] > guessing
