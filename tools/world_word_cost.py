"""What one wrong attribute word costs a retrieval victim on the world, by kind of word.

BERT-Attack on the world takes the worst one-word swap of each caption; whether that breaks
retrieval depends on how far a single wrong colour, shape, size or fill word moves a caption
away from its image. For the first caption of every `--stride`-th test image, this swaps each
attribute word for every other value of its attribute (`robust.data.world.confusable_words`,
`robust.data.world.attribute_swaps`) and prints the median and the largest drop of
the image-caption cosine per kind of word, beside the margin the swap has to beat (own caption
against the best other caption of the same images):

    python tools/world_word_cost.py toy-clip-vit
    python tools/world_word_cost.py open_clip:local-dir:DIR --world world-v3

A victim that reads every attribute should pay for every kind; one that pays only for colours
reads colours alone, and one colour swap then removes most of what it knows of a caption.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch

import robust
from robust.data import load_dataset
from robust.data.images import load_images
from robust.data.world import ZOO_WORLD, attribute_swaps, caption_vocabulary, confusable_words


def word_kinds(version: str) -> dict[str, str]:
    """Each attribute word's kind: colour and shape from the caption vocabulary, and every
    other confusable word (sizes, fills) by the word list that holds it."""
    kinds = {
        word: kind
        for kind, values in caption_vocabulary(version).items()
        for words in values.values()
        for word in words
    }
    return {word: kinds.get(word, "size or fill") for word in confusable_words(version)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("victim", help="a zoo name or victim spec")
    parser.add_argument("--world", default=ZOO_WORLD, help=f"world version (default: {ZOO_WORLD})")
    parser.add_argument("--images", type=int, default=100, help="test-1k images read")
    parser.add_argument("--stride", type=int, default=2, help="score every N-th image")
    args = parser.parse_args()
    victim = robust.load_victim(args.victim)
    dataset = load_dataset(f"{args.world}:test-1k", limit=args.images)
    kinds = word_kinds(args.world)
    drops: dict[str, list[float]] = defaultdict(list)
    margins = []
    with torch.no_grad():
        pixels = load_images(dataset.images, range(args.images), victim.image_size)
        images = victim.encode_image(pixels)
        first = [dataset.captions[dataset.image_captions[i][0]] for i in range(args.images)]
        clean = victim.encode_text(first)
        similarity = images @ clean.T
        for i in range(0, args.images, args.stride):
            others = torch.cat([similarity[i, :i], similarity[i, i + 1 :]])
            margins.append(float(similarity[i, i] - others.max()))
            swaps = attribute_swaps(first[i], args.world)
            if not swaps:
                continue
            scores = victim.encode_text([text for _, text in swaps]) @ images[i]
            for (word, _), score in zip(swaps, scores.tolist(), strict=True):
                drops[kinds[word]].append(float(similarity[i, i]) - score)
    print(
        f"{args.victim} on {args.world}: {len(margins)} images, own caption minus best other "
        f"(first captions of the {args.images} images): median {np.median(margins):.3f}"
    )
    print(f"{'word kind':<14}{'swaps':>7}{'median drop':>13}{'largest drop':>14}")
    for kind in sorted(drops):
        values = np.asarray(drops[kind])
        print(f"{kind:<14}{len(values):>7}{np.median(values):>13.3f}{values.max():>14.3f}")


if __name__ == "__main__":
    main()
