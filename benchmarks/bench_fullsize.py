"""SGA and retrieval speed of ALBEF- and CLIP-shaped victims: toy size always, full on CUDA.

Speed depends on the architecture, not the weights, so every victim here has random
weights. Configurations:

- toy (every machine): the toy zoo's sizes, i.e. a random ALBEF at 64 px (ViT width 96 x 4,
  BERT hidden 64 x 4) and the toy CLIP ViT at 64 px, SGA's masked LM the toy one;
- full (only where CUDA is present; run on the GPU): ALBEF as released (ViT-B/16 at 384 px +
  BERT-base, `AlbefConfig()`), CLIP ViT-B/16 from open_clip (`pretrained=None`) and a
  BERT-base masked LM, all over a 30522-entry vocabulary.

Per victim: SGA images/s on one batch, and its ratio to the bare forward+backward passes
of the image encoder its image half needs (steps x (1 + |scales|) copies, timed alone in
the same process); retrieval time over a 1K and a 5K gallery of the world (ITC for CLIP,
ITC + top-k_test ITM re-rank for ALBEF). The device (and GPU model) is recorded; results
go to benchmarks/results/fullsize-<device>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.bench_sga import Timed, bare_passes
from benchmarks.common import TOY_ALBEF, toy_albef_or_stand_in, write_result
from robust.attacks import AttackBatch, build_attack
from robust.data.images import load_images
from robust.data.world import ZOO_WORLD, generate_world
from robust.eval.rerank import ItmReranker
from robust.eval.retrieval import encode_dataset, rank_from_features
from robust.resources import ZOO_DIR
from robust.victims.registry import load_victim

BERT_BASE_VOCAB = 30522
GALLERIES = ("test-1k", "test-5k")


@dataclass(frozen=True)
class SizeConfig:
    """How big the models are and how much work each measurement does."""

    name: str
    sga_batch: int
    k_test: int
    encode_batch: int
    description: str


TOY = SizeConfig(
    "toy",
    sga_batch=8,
    k_test=8,
    encode_batch=256,
    description="toy zoo sizes at 64 px (ALBEF random, CLIP ViT toy), toy masked LM",
)
FULL = SizeConfig(
    "full",
    sga_batch=32,
    k_test=128,
    encode_batch=256,
    description="ALBEF ViT-B/16@384 + BERT-base, CLIP ViT-B/16@224, BERT-base masked LM",
)


def bert_base_vocab(folder: Path) -> Path:
    """The world WordPiece vocabulary padded with [unused] entries to BERT-base's size."""
    from robust.zoo.vocab import build_world_vocab

    vocab = build_world_vocab(folder / "vocab.txt", train_images=2000)
    words = vocab.read_text().splitlines()
    padding = [f"[unused{index}]" for index in range(BERT_BASE_VOCAB - len(words))]
    vocab.write_text("\n".join([*words, *padding]) + "\n")
    return vocab


def full_albef(vocab: Path):
    from robust.victims.albef import AlbefConfig, AlbefModel, AlbefVictim

    torch.manual_seed(0)
    model = AlbefModel(AlbefConfig())  # the released ViT-B/16 @ 384 + BERT-base sizes
    return AlbefVictim("ALBEF-size (random weights)", model, vocab).eval()


def full_clip():
    import open_clip

    from robust.victims.openclip import OpenClipVictim

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    preprocess = {
        "size": 224,
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
    }
    return OpenClipVictim(
        "CLIP ViT-B/16 (random weights)", model, open_clip.get_tokenizer("ViT-B-16"), preprocess
    )


def full_masked_lm(folder: Path, vocab: Path) -> Path:
    """A random BERT-base masked LM saved as SGA's text attack loads one."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=BERT_BASE_VOCAB))
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text(vocab.read_text())
    return folder


def victims_and_mlm(config: SizeConfig, workdir: Path, device: str):
    """{label: victim} and the masked-LM folder for `config`, on `device`."""
    if config is TOY:
        victims = {"albef": toy_albef_or_stand_in(), "clip": load_victim("toy-clip-vit")}
        mlm = ZOO_DIR / "toy-mlm"
    else:
        vocab = bert_base_vocab(workdir)
        victims = {"albef": full_albef(vocab), "clip": full_clip()}
        mlm = full_masked_lm(workdir / "mlm", vocab)
    return {label: victim.to(device) for label, victim in victims.items()}, mlm


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def sga_speed(victim, mlm: Path, dataset, batch: int, device: str) -> dict:
    """SGA on one batch against the bare image-encoder passes its image half needs."""
    groups = tuple(tuple(group) for group in dataset.captions_of(range(batch)))
    # Warm up on other captions: BERT-Attack reuses its work while the same captions return.
    warm_groups = tuple(tuple(group) for group in dataset.captions_of(range(batch, 2 * batch)))
    images = load_images(dataset.images, range(batch), victim.image_size, victim.resize_mode).to(
        device
    )
    attack = build_attack("sga", victim, {}, mlm=mlm, seed=0)
    attack.image_attack = Timed(attack.image_attack)
    attack.text_attack = Timed(attack.text_attack)
    attack.craft(AttackBatch(images, warm_groups))  # warm-up: allocations, kernels, MLM load
    synchronize(device)
    attack.image_attack.seconds = attack.text_attack.seconds = 0.0
    start = time.perf_counter()
    attack.craft(AttackBatch(images, groups), torch.Generator().manual_seed(1))
    synchronize(device)
    total = time.perf_counter() - start
    params = attack.image_attack.function.params()
    copies = 1 + len(params.scales)
    bare_passes(victim, images, 1, copies)  # warm-up
    synchronize(device)
    bare = bare_passes(victim, images, params.steps, copies)
    synchronize(device)
    return {
        "batch_images": batch,
        "captions": sum(len(group) for group in groups),
        "sga_seconds": total,
        "images_per_second": batch / total,
        "image_attack_seconds": attack.image_attack.seconds,
        "text_attack_seconds": attack.text_attack.seconds,
        "bare_passes": params.steps,
        "copies_per_pass": copies,
        "bare_passes_seconds": bare,
        "sga_over_bare": total / bare,
        "image_attack_over_bare": attack.image_attack.seconds / bare,
    }


def retrieval_speed(victim, dataset, config: SizeConfig, device: str) -> dict:
    """Seconds to encode and rank one gallery; fusion victims also re-rank top-k_test by ITM."""
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        image_features, text_features = encode_dataset(
            victim, dataset, batch_size=config.encode_batch
        )
        reranker = None
        if "itm" in victim.capabilities:
            reranker = ItmReranker.build(
                victim, dataset, image_features, text_features, batch_size=config.encode_batch
            )
        result = rank_from_features(
            image_features,
            text_features,
            dataset.caption_image,
            k_test=config.k_test if reranker is not None else None,
            reranker=reranker,
        )
    synchronize(device)
    return {
        "images": dataset.num_images,
        "captions": dataset.num_captions,
        "scoring": "rerank" if reranker is not None else "itc",
        "k_test": config.k_test if reranker is not None else None,
        "seconds": time.perf_counter() - start,
        "tr_r1": result.metrics()["tr_r1"],
    }


def measure(config: SizeConfig, device: str) -> dict:
    datasets = {split: generate_world(split, version=ZOO_WORLD) for split in GALLERIES}
    sga_data = datasets["test-1k"]
    with tempfile.TemporaryDirectory() as folder:
        victims, mlm = victims_and_mlm(config, Path(folder), device)
        results = {}
        for label, victim in victims.items():
            results[label] = {
                "victim": victim.name,
                "image_size": victim.image_size,
                "parameters": sum(p.numel() for p in victim.parameters()),
                "sga": sga_speed(victim, mlm, sga_data, config.sga_batch, device),
                "retrieval": {
                    split: retrieval_speed(victim, dataset, config, device)
                    for split, dataset in datasets.items()
                },
            }
        albef_ips = results["albef"]["sga"]["images_per_second"]
    return {
        "description": config.description,
        "toy_albef_config": TOY_ALBEF if config is TOY else None,
        "victims": results,
        # Flickr30k 1K test at the measured rate (ALBEF source); the GPU target: < 120 s
        "flickr_1k_sga_seconds_at_this_rate": 1000 / albef_ips,
    }


def run(sizes: list[str] | None = None) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if sizes is None:
        sizes = ["toy", "full"] if device == "cuda" else ["toy"]
    torch.manual_seed(0)
    configs = {config.name: config for config in (TOY, FULL)}
    return {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "sizes": {name: measure(configs[name], device) for name in sizes},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        action="append",
        choices=("toy", "full"),
        help="measure only these sizes (default: toy, plus full where CUDA is present)",
    )
    arguments = parser.parse_args(argv)
    payload = run(arguments.size)
    print(write_result(f"fullsize-{payload['device']}", payload))


if __name__ == "__main__":
    main()
