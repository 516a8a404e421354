"""What a world scene holds, as the multi-hot targets of an image tower's supervised start.

Trained contrastively from scratch, every toy tower learns a scene's colours and nothing of
its shapes (robust/zoo/README.md, "World calibration pilots"): colour alone wins the
contrastive game on the world, so one wrong colour word decides a match. Real ALBEF and TCL
start from a DeiT pre-trained with labels; the toys get the same kind of start from the
world's own labels: which shapes, colours, sizes, positions, fills, background and object
count a scene holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from robust.data.world import BACKGROUNDS, COLORS, POSITIONS, SIZES, world_version


def scene_attribute_names(version: str, kinds: Sequence[str] | None = None) -> tuple[str, ...]:
    """Every attribute value a scene of world `version` can hold, as `kind:value`; only
    those of `kinds` (shape, color, size, position, texture, background, count) if given."""
    world = world_version(version)
    names = [f"shape:{shape}" for shape in world.shapes]
    names += [f"color:{color}" for color in COLORS]
    names += [f"size:{size}" for size in SIZES]
    names += [f"position:{position}" for row in POSITIONS for position in row]
    if len(world.textures) > 1:
        names += [f"texture:{texture}" for texture in world.textures]
    names += [f"background:{background}" for background in BACKGROUNDS]
    names += [f"count:{count}" for count in range(1, len(world.object_count_weights) + 1)]
    if kinds is None:
        return tuple(names)
    known = dict.fromkeys(name.split(":", 1)[0] for name in names)
    unknown = [kind for kind in kinds if kind not in known]
    if unknown or not kinds:
        raise ValueError(
            f"unknown attribute kind {unknown[0] if unknown else '(none given)'!r} for "
            f"{version}; choose from {', '.join(known)}"
        )
    return tuple(name for name in names if name.split(":", 1)[0] in kinds)


def scene_attribute_targets(
    labels: Sequence[dict], version: str, kinds: Sequence[str] | None = None
) -> torch.Tensor:
    """A (scenes, attributes) 0/1 matrix: which of `scene_attribute_names(version, kinds)`
    each scene label (`WorldScene.label()`) holds."""
    names = scene_attribute_names(version)
    index = {name: i for i, name in enumerate(names)}
    targets = torch.zeros(len(labels), len(index))
    for row, label in enumerate(labels):
        held = [f"background:{label['background']}", f"count:{label['count']}"]
        for obj in label["objects"]:
            held += [
                f"shape:{obj['shape']}",
                f"color:{obj['color']}",
                f"size:{obj['size']}",
                f"position:{obj['position']}",
            ]
            if obj.get("texture") is not None:
                held.append(f"texture:{obj['texture']}")
        for name in held:
            if name not in index:
                raise ValueError(f"scene label holds {name!r}, which world {version} never draws")
            targets[row, index[name]] = 1.0
    if kinds is None:
        return targets
    chosen = set(scene_attribute_names(version, kinds))
    return targets[:, [i for i, name in enumerate(names) if name in chosen]]


def attribute_loss(
    head: torch.nn.Linear,
    targets: torch.Tensor,
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy of `head` reading the scenes' attributes from their image
    embeddings and, when given, from their captions' embeddings (the mean of both)."""
    loss = F.binary_cross_entropy_with_logits(head(image_embeddings), targets)
    if text_embeddings is None:
        return loss
    return (loss + F.binary_cross_entropy_with_logits(head(text_embeddings), targets)) / 2


def prior_loss(targets: torch.Tensor) -> float:
    """The binary cross-entropy of predicting every attribute's frequency: a tower whose
    attribute loss stays here has learnt nothing of what scenes hold."""
    frequency = targets.mean(dim=0).clamp(1e-6, 1 - 1e-6).expand_as(targets)
    return float(F.binary_cross_entropy(frequency, targets))


def top_k_precision(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The share of each scene's k highest-scored attributes it holds, k being how many it
    holds: 1.0 when the tower ranks every held attribute first."""
    counts = targets.sum(dim=1).long()
    order = logits.argsort(dim=1, descending=True)
    hits = [float(targets[row, order[row, :k]].sum()) for row, k in enumerate(counts.tolist())]
    return sum(hits) / max(1, int(counts.sum()))


def top_k_precision_by_kind(
    logits: torch.Tensor, targets: torch.Tensor, names: Sequence[str]
) -> dict[str, float]:
    """`top_k_precision` within each kind of attribute (shape, color, ...): a tower can
    rank colours perfectly and know nothing of shapes, which the pooled score hides."""
    kinds = dict.fromkeys(name.split(":", 1)[0] for name in names)
    scores = {}
    for kind in kinds:
        columns = [i for i, name in enumerate(names) if name.startswith(kind + ":")]
        scores[kind] = top_k_precision(logits[:, columns], targets[:, columns])
    return scores
