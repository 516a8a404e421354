"""How much of one-word BERT-Attack a world version allows, read off its scene labels.

A victim that scores an image-caption pair additively, one point for every claim of the
caption that the scene makes true and `--penalty` points off for every false one, is the
"bag of claims" real retrieval models come close to. Against it, the worst one-word attribute
swap of every caption (each colour, shape, size or fill name replaced by every other value of
its attribute, the swap that costs the most kept, as BERT-Attack keeps its best substitute) is
scored here by TR R@1 in SGA's convention on the first `--images` test-1k images. If even this
reader loses most images, no toy can meet the calibration band for BERT-Attack on that world:
the world's captions leave too little besides the swapped word, or its galleries hold captions
that fit other scenes as well.

    python tools/world_claims_bound.py --world world --penalty 1
    python tools/world_claims_bound.py --world world-v3 --penalty 3
"""

from __future__ import annotations

import argparse

import numpy as np

from robust.data.world import (
    ZOO_WORLD,
    CaptionClaim,
    attribute_swaps,
    generate_world,
    parse_caption,
)

Claims = frozenset[tuple[str, ...]]


def caption_claims(claim: CaptionClaim) -> Claims:
    """A parsed caption as a set of claims: each object's colour-and-shape, and its size,
    position and fill where the caption names them (tied to that object), and the background."""
    textures = claim.textures or (None,) * len(claim.objects)
    found: set[tuple[str, ...]] = {("background", claim.background)} if claim.background else set()
    for (size, color, shape, position), texture in zip(claim.objects, textures, strict=True):
        found.add(("object", color, shape))
        for kind, value in (("size", size), ("position", position), ("fill", texture)):
            if value is not None:
                found.add((kind, value, color, shape))
    return frozenset(found)


def scene_claims(label: dict) -> Claims:
    """Every claim a caption could truthfully make of a scene (its `label()`)."""
    found: set[tuple[str, ...]] = {("background", label["background"])}
    for obj in label["objects"]:
        color, shape = obj["color"], obj["shape"]
        found.add(("object", color, shape))
        found.add(("size", obj["size"], color, shape))
        found.add(("position", obj["position"], color, shape))
        found.add(("fill", obj.get("texture", "plain"), color, shape))
    return frozenset(found)


def additive_score(caption: Claims, scene: Claims, penalty: float) -> float:
    """True claims count one each, false ones `penalty` each against."""
    true = len(caption & scene)
    return true - penalty * (len(caption) - true)


def worst_swap(caption: str, scene: Claims, penalty: float, version: str) -> Claims:
    """The claims of the one-word attribute swap of `caption` that the reader scores lowest
    against its own scene (the caption itself when no swap lowers it)."""
    worst = caption_claims(parse_caption(caption))
    worst_score = additive_score(worst, scene, penalty)
    for _, swapped in attribute_swaps(caption, version):
        claims = caption_claims(parse_caption(swapped))
        score = additive_score(claims, scene, penalty)
        if score < worst_score:
            worst, worst_score = claims, score
    return worst


def tr_r1_correct(
    captions: list[Claims], owner: np.ndarray, scenes: list[Claims], penalty: float
) -> np.ndarray:
    """Per image: is one of its own captions scored strictly above every other caption?"""
    correct = np.zeros(len(scenes), dtype=bool)
    for image, scene in enumerate(scenes):
        scores = np.array([additive_score(c, scene, penalty) for c in captions])
        correct[image] = scores[owner == image].max() > scores[owner != image].max()
    return correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default=ZOO_WORLD, help=f"world version (default: {ZOO_WORLD})")
    parser.add_argument("--images", type=int, default=200, help="first test-1k images")
    parser.add_argument("--penalty", type=float, default=1.0, help="points off per false claim")
    args = parser.parse_args()
    dataset = generate_world("test-1k", version=args.world, count=args.images)
    scenes = [scene_claims(label) for label in dataset.labels]
    owner = np.array([i for i in range(args.images) for _ in dataset.image_captions[i]])
    texts = [dataset.captions[c] for i in range(args.images) for c in dataset.image_captions[i]]
    clean = [caption_claims(parse_caption(t)) for t in texts]
    attacked = [
        worst_swap(text, scenes[image], args.penalty, args.world)
        for text, image in zip(texts, owner, strict=True)
    ]
    before = tr_r1_correct(clean, owner, scenes, args.penalty)
    after = tr_r1_correct(attacked, owner, scenes, args.penalty)
    asr = 100 * (1 - after[before].mean()) if before.any() else float("nan")
    print(
        f"{args.world}, additive reader (penalty {args.penalty:g}), first {args.images} "
        f"test-1k images: clean TR R@1 {100 * before.mean():.1f}, after the worst one-word "
        f"swap {100 * after.mean():.1f}, TR R@1 ASR {asr:.1f}"
    )


if __name__ == "__main__":
    main()
