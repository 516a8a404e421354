"""The WordPiece vocabulary the toy fusion victims share, built from world captions."""

from __future__ import annotations

from pathlib import Path

from robust.data.world import DEFAULT_WORLD, generate_world

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_SIZE = 256


def build_world_vocab(
    path: Path, *, train_images: int | None = None, version: str = DEFAULT_WORLD
) -> Path:
    """Train a BERT WordPiece vocab on world-train captions and write it as vocab.txt.

    The special tokens come first in BERT's order ([PAD]=0 ... [MASK]=4), so BERT-style
    code that assumes those ids works; every world word ends up a whole token.
    """
    from tokenizers import BertWordPieceTokenizer

    captions = generate_world("train", count=train_images, version=version).captions
    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(
        captions,
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    path.write_text("".join(f"{token}\n" for token, _ in vocabulary))
    return path
