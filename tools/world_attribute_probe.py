"""Which scene attributes a victim's image embedding holds: a linear probe per kind.

A toy that reads colours and not shapes loses whole captions to one colour swap
(`tools/world_word_cost.py` measures that side); this measures the image side. For each kind
of attribute it fits a linear multi-label head (binary cross-entropy, Adam, full batch) on
the frozen image embeddings of `--train` world train scenes, then scores it on `--val`
world val scenes: the loss against guessing each attribute's frequency and the top-k
precision (`robust.zoo.scene_attributes`). A fusion toy is probed through its ITC embedding.

    python tools/world_attribute_probe.py toy-clip-vit
    python tools/world_attribute_probe.py albef:DIR/checkpoint.pth --kinds shape,color
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import robust
from robust.data.images import load_images
from robust.data.world import ZOO_WORLD, generate_world
from robust.errors import RobustError
from robust.zoo.scene_attributes import prior_loss, scene_attribute_targets, top_k_precision

# Embeddings are unit vectors; scaling them lets a small head reach confident logits.
EMBEDDING_SCALE = 10.0


def embed(victim, dataset) -> torch.Tensor:
    """The victim's image embeddings of every scene of `dataset`, in chunks."""
    chunks = []
    with torch.no_grad():
        for start in range(0, dataset.num_images, 100):
            indices = range(start, min(start + 100, dataset.num_images))
            chunks.append(
                victim.encode_image(load_images(dataset.images, indices, victim.image_size))
            )
    return torch.cat(chunks) * EMBEDDING_SCALE


def probe(train: torch.Tensor, targets: torch.Tensor, steps: int, seed: int) -> torch.nn.Linear:
    """A linear head fitted to `targets` from the frozen `train` embeddings."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(train.shape[1], targets.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(head(train), targets).backward()
        optimizer.step()
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("victim", help="a zoo name or victim spec")
    parser.add_argument("--world", default=ZOO_WORLD, help=f"world version (default: {ZOO_WORLD})")
    parser.add_argument("--kinds", default="shape,color", help="attribute kinds, comma-separated")
    parser.add_argument("--train", type=int, default=3000, help="world train scenes fitted on")
    parser.add_argument("--val", type=int, default=500, help="world val scenes scored")
    parser.add_argument("--steps", type=int, default=500, help="full-batch Adam steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's start")
    args = parser.parse_args()
    try:
        victim = robust.load_victim(args.victim)
    except RobustError as error:
        parser.error(str(error))
    train = generate_world("train", count=args.train, version=args.world)
    val = generate_world("val", count=args.val, version=args.world)
    train_embeddings, val_embeddings = embed(victim, train), embed(victim, val)
    print(
        f"{args.victim} on {args.world}: linear probes, {args.train} train / {args.val} val scenes"
    )
    print(f"{'kind':<12}{'val loss':>10}{'guessing':>10}{'top-k precision':>17}")
    for kind in args.kinds.split(","):
        train_targets = scene_attribute_targets(train.labels, args.world, [kind])
        val_targets = scene_attribute_targets(val.labels, args.world, [kind])
        head = probe(train_embeddings, train_targets, args.steps, args.seed)
        with torch.no_grad():
            logits = head(val_embeddings)
        loss = float(F.binary_cross_entropy_with_logits(logits, val_targets))
        precision = top_k_precision(logits, val_targets)
        print(f"{kind:<12}{loss:>10.3f}{prior_loss(val_targets):>10.3f}{precision:>17.3f}")


if __name__ == "__main__":
    main()
