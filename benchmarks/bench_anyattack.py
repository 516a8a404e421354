"""AnyAttack pre-training throughput on the world, against the passes a step needs.

A pre-training step with B targets and K shuffled copies needs one no-grad encoder forward
over the B targets, a decoder forward and backward, and K encoder forward+backward passes
over B adversarial images. We time full optimiser steps (`pretrain` itself, data drawing
included) and each of those parts alone in the same process, and report images per second
and the step's cost over the encoder passes and over encoder + decoder passes.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import best_time, write_result
from robust.attacks.anyattack import NoiseDecoder
from robust.attacks.anyattack_train import PretrainConfig, new_state, pretrain
from robust.data.world import ZOO_WORLD
from robust.victims.registry import load_victim

ENCODER = "toy-clip-vit"
BATCH = 32
CHUNKS = 2
STEPS = 5
DECODER = {"embed_dim": 64, "image_size": 64, "channels": 64, "bound": "tanh"}


def encoder_passes(encoder, images: torch.Tensor) -> None:
    """The encoder work of one step: a no-grad forward, then K forward+backward passes."""
    with torch.no_grad():
        encoder.encode_image(images)
    for _ in range(CHUNKS):
        pixels = images.clone().requires_grad_(True)
        encoder.encode_image(pixels).sum().backward()


def decoder_pass(decoder: NoiseDecoder, embeddings: torch.Tensor) -> None:
    decoder.zero_grad(set_to_none=True)
    decoder(embeddings).sum().backward()


def run() -> dict:
    torch.manual_seed(0)
    encoder = load_victim(ENCODER)
    encoder.requires_grad_(False)
    config = PretrainConfig(
        encoder=ENCODER,
        data=f"{ZOO_WORLD}:val",
        limit=256,
        batch_size=BATCH,
        chunks=CHUNKS,
        steps=1 + STEPS,
        lr=3e-3,
        decoder=DECODER,
    )
    state = pretrain(config, until=1, encoder=encoder)  # warm-up step, data loaded
    start = time.perf_counter()
    pretrain(state, encoder=encoder)
    step_seconds = (time.perf_counter() - start) / STEPS

    images = torch.rand(BATCH, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    decoder = new_state(config).decoder
    embeddings = torch.randn(BATCH, DECODER["embed_dim"])
    encoder_seconds = best_time(lambda: encoder_passes(encoder, images))
    decoder_seconds = best_time(lambda: decoder_pass(decoder, embeddings))
    return {
        "threads": torch.get_num_threads(),
        "encoder": ENCODER,
        "batch_targets": BATCH,
        "chunks": CHUNKS,
        "decoder": DECODER,
        "decoder_parameters": sum(p.numel() for p in decoder.parameters()),
        "step_seconds": step_seconds,
        "targets_per_second": BATCH / step_seconds,
        "adversarial_images_per_second": BATCH * CHUNKS / step_seconds,
        "encoder_passes_seconds": encoder_seconds,
        "decoder_pass_seconds": decoder_seconds,
        "step_over_encoder_passes": step_seconds / encoder_seconds,
        "step_over_encoder_and_decoder_passes": step_seconds / (encoder_seconds + decoder_seconds),
    }


def main() -> None:
    print(write_result("anyattack", run()))


if __name__ == "__main__":
    main()
