"""Evaluate an AnyAttack decoder on a dataset and record it in a run directory.

Rows go into the run's `ResultStore` with `attack="anyattack"`, `seed` = the seed of the
drawn (clean, target) pairs, `source` = the encoder victim, `victim` = `target` = the evaluated
victim. Metric names:
- retrieval victims: `{gallery}_{m}` for gallery in adv/floor/ceiling (see
  `robust.eval.targeted`) and `m` in tr_r1/5/10, ir_r1/5/10, r_mean;
- captioners: `{gallery}_vs_{target|clean}_{m}` for `m` in bleu1, bleu4, rouge_l, cider,
  emb_sim_mean (text embeddings from the encoder's text tower) and, on datasets with world
  scene labels, claims_true and all_true (the caption's claims checked against the target's
  and the clean image's scenes), plus `{gallery}_caption_readable` (see
  `robust.eval.targeted.caption_claim_scores`).
Rows are written by the matrix's `MatrixWriter` (scoring "itc", no per-query ranks).
The galleries are adversarial-cache entries (`cache/`, one per gallery and victim geometry,
crafted with the decoder saved under `decoder/`), so a second run into the same directory
crafts nothing.
A few example quadruples are written to `anyattack_examples/` in the run directory:
clean, noise (mapped from [-eps, eps] to [0, 1]), adversarial and target PNGs per pair, and
`examples.json` with the pairs' reference captions and any generated captions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from robust.attacks.anyattack import AnyAttack, NoiseDecoder, save_decoder
from robust.data.dataset import ArrayImages, CaptionDataset
from robust.data.images import cross_resolution, load_images, to_uint8_array
from robust.errors import RobustError
from robust.eval.retrieval import RetrievalResult
from robust.eval.targeted import (
    GALLERIES,
    TargetPairs,
    pair_images,
    target_captions,
    targeted_caption_scores,
    targeted_claim_scores,
)
from robust.harness.cells import CellRunner, ExperimentSettings
from robust.harness.evaluate import dataset_key
from robust.harness.executors import EvalCell, LocalExecutor, TargetedCell, Tasks
from robust.harness.results import ANYATTACK as ATTACK
from robust.harness.results import ANYATTACK_EXAMPLES_DIR as EXAMPLES_DIR
from robust.harness.results import ANYATTACK_QUADRUPLE as QUADRUPLE
from robust.harness.results import CACHE_DIRNAME, ITC
from robust.harness.store import ResultStore
from robust.harness.writer import MatrixWriter
from robust.progress import Progress, ensure_progress
from robust.resources import ZOO_DIR
from robust.victims.base import Victim
from robust.victims.registry import load_victim, resolve_spec

WORLD_DECODER = ZOO_DIR / "anyattack-world" / "decoder.pt"  # toy-clip-vit, eps 16/255


@dataclass
class AnyAttackEvaluation:
    """What one evaluation produced: pairs, per-victim results, and where it was stored."""

    run_dir: Path
    run_id: int
    pairs: TargetPairs
    retrieval: dict[str, dict[str, RetrievalResult]] = field(default_factory=dict)
    captioning: dict[str, dict[str, float]] = field(default_factory=dict)
    generated: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """One table row per (victim, gallery): the retrieval recalls as fractions."""
        return [
            {"victim": victim, "gallery": gallery, **result.metrics()}
            for victim, results in self.retrieval.items()
            for gallery, result in results.items()
        ]


@dataclass(frozen=True)
class PairImages:
    """The pairs' pixels: cleans and adversarials at the decoder's size, targets at the
    encoder's, and the bounded noise."""

    clean: torch.Tensor
    target: torch.Tensor
    noise: torch.Tensor
    adversarial: torch.Tensor


def craft_pair_images(
    attack: AnyAttack,
    dataset: CaptionDataset,
    pairs: TargetPairs,
    *,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> PairImages:
    """Every pair's clean, target, noise and adversarial images, batch by batch (in memory:
    each victim crosses the float adversarials to its own resolution, `victim_galleries`)."""
    encoder, size = attack.encoder, attack.decoder.config.image_size
    parts: dict[str, list[torch.Tensor]] = {
        name: [] for name in ("clean", "target", "noise", "adv")
    }
    progress = ensure_progress(progress)
    with progress.task("anyattack: crafting", len(pairs)) as task:
        for start in range(0, len(pairs), batch_size):
            stop = min(start + batch_size, len(pairs))
            clean = load_images(dataset.images, pairs.clean[start:stop], size, encoder.resize_mode)
            target = load_images(
                dataset.images, pairs.target[start:stop], encoder.image_size, encoder.resize_mode
            )
            with torch.no_grad():
                noise = attack.noise(target.to(encoder.device)).cpu()
            parts["clean"].append(clean)
            parts["target"].append(target)
            parts["noise"].append(noise)
            parts["adv"].append((clean + noise).clamp(0.0, 1.0))
            task.advance(stop - start)
    joined = {name: torch.cat(tensors) for name, tensors in parts.items()}
    return PairImages(joined["clean"], joined["target"], joined["noise"], joined["adv"])


def victim_galleries(images: PairImages, victim: Victim) -> dict[str, torch.Tensor]:
    """The three galleries as the victim receives them: same resize and uint8 rounding."""
    size, mode = victim.image_size, victim.resize_mode
    return {
        "adv": cross_resolution(images.adversarial, size, mode),
        "floor": cross_resolution(images.clean, size, mode),
        "ceiling": cross_resolution(images.target, size, mode),
    }


def evaluate_anyattack(
    decoder: NoiseDecoder,
    encoder: str,
    victims: Sequence[str],
    dataset: CaptionDataset,
    run_dir: Path | str,
    *,
    pairs: int = 500,
    eps: float | None = None,
    seed: int = 0,
    examples: int = 4,
    decoder_source: str | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> AnyAttackEvaluation:
    """Craft targeted examples with `decoder`, score every victim, and record everything.

    Retrieval victims get the targeted R@K of the adversarial images beside their clean
    floor and target ceiling; captioners get BLEU/ROUGE-L/CIDEr/embedding similarity of
    their captions against the target's and the clean image's references.

    The run goes through the matrix's machinery: the decoder is saved in the run directory
    (`decoder/`), each gallery is a `TargetedCell` per victim geometry whose images land in
    the adversarial cache (`cache/`), each victim's galleries are `EvalCell`s computed by
    the same `CellRunner`, and `MatrixWriter` writes the rows; a second run into the same
    directory reads every entry back instead of crafting it again.
    """
    from robust.attacks.anyattack import DEFAULT_EPS

    for name in (encoder, *victims):
        resolve_spec(name)
    if not victims:
        raise RobustError("name at least one victim to evaluate (e.g. --victim toy-clip-vit)")
    if examples < 0:
        raise RobustError(f"examples must be 0 or more, got {examples}")
    try:
        chosen = pair_images(dataset, pairs, seed)
    except ValueError as exc:
        raise RobustError(f"--pairs: {exc}") from None
    run_dir = Path(run_dir)
    decoder_file = save_run_decoder(decoder, run_dir)
    settings = ExperimentSettings(dataset=dataset.name, eval_batch_size=64, device=device)
    runner = CellRunner(settings, run_dir / CACHE_DIRNAME, dataset=dataset, progress=progress)
    executor = LocalExecutor()
    attack = AnyAttack(runner.victim(encoder), decoder, eps=DEFAULT_EPS if eps is None else eps)

    def cell(gallery: str, at: tuple[int, str]) -> TargetedCell:
        label = f"{ATTACK}-{gallery}"
        return TargetedCell(
            label, encoder, seed, str(decoder_file), attack.eps, pairs, gallery, *at
        )

    encoder_at = runner.geometry(encoder)
    decoder_at = (decoder.config.image_size, encoder_at[1])
    count = min(examples, len(chosen))
    shown = {"clean": ("floor", decoder_at), "noise": ("noise", decoder_at)}
    shown |= {"adversarial": ("adv", decoder_at), "target": ("ceiling", encoder_at)}
    example_cells = {kind: cell(*shown[kind]) for kind in QUADRUPLE} if count else {}
    geometries = {name: runner.geometry(name) for name in victims}
    crafts = [cell(gallery, at) for at in geometries.values() for gallery in GALLERIES]
    for _ in executor.map(runner, dict.fromkeys([*example_cells.values(), *crafts])):
        pass

    dataset_name, split = dataset_key(dataset)
    spec = {
        "command": "anyattack eval",
        "attack": attack.config(),
        "decoder_source": decoder_source,
        "victims": list(victims),
        "dataset": dataset.name,
        "pairs": pairs,
        "examples": examples,
    }
    tasks = Tasks(captions=True, where_supported=True, targeted=True)
    references = [dataset.captions_of(ids.tolist()) for ids in (chosen.target, chosen.clean)]
    scenes = None  # the target's and the clean image's scene labels, where the dataset has them
    if dataset.labels is not None:
        scenes = [[dataset.labels[int(i)] for i in ids] for ids in (chosen.target, chosen.clean)]
    encode_text = None  # the encoder's text tower, loaded for the first captioner
    with ResultStore.in_run_dir(run_dir) as store:
        run_id = store.start_run(spec, seeds={"pairs": seed, "world": 0})
        writer = MatrixWriter(store, run_id, dataset_name, split)
        evaluation = AnyAttackEvaluation(run_dir, run_id, chosen)
        for name, at in geometries.items():
            cells = [EvalCell(f"{ATTACK}-{g}", encoder, name, seed, tasks, at) for g in GALLERIES]
            results = dict(zip(GALLERIES, executor.map(runner, cells), strict=True))
            metrics: dict[str, float] = {}
            if all(ITC in result.results for result in results.values()):
                retrieval = {gallery: result.results[ITC] for gallery, result in results.items()}
                evaluation.retrieval[name] = retrieval
                for gallery, result in retrieval.items():
                    metrics.update({f"{gallery}_{m}": v for m, v in result.metrics().items()})
            if all(result.outputs.captions is not None for result in results.values()):
                generated = {g: list(r.outputs.captions or ()) for g, r in results.items()}
                if encode_text is None:
                    encode_text = load_victim(encoder, device=device).encode_text
                scores = targeted_caption_scores(generated, *references, encode_text)
                if scenes is not None:
                    scores |= targeted_claim_scores(generated, *scenes)
                evaluation.captioning[name] = scores
                evaluation.generated[name] = generated
                metrics.update(scores)
            writer.write_scores(name, encoder, ATTACK, seed, {ITC: metrics}, {})
    pictures = {kind: runner.entry(c.attack_label, encoder, seed, c.at).load().images[:count]
                for kind, c in example_cells.items()}  # fmt: skip
    write_examples(
        run_dir / EXAMPLES_DIR, pictures, attack.eps, chosen, dataset, evaluation.generated
    )
    return evaluation


def save_run_decoder(decoder: NoiseDecoder, run_dir: Path) -> Path:
    """The decoder saved under `run_dir/decoder/`, named by a hash of its weights and sizes,
    so cache entries crafted with other weights are never reused."""
    digest = hashlib.sha256(json.dumps(decoder.config.to_dict(), sort_keys=True).encode())
    for name, tensor in decoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    path = run_dir / "decoder" / f"decoder-{digest.hexdigest()[:16]}.pt"
    return path if path.is_file() else save_decoder(decoder, path)


def targeted_caption_dataset(
    images: PairImages, pairs: TargetPairs, dataset: CaptionDataset
) -> CaptionDataset:
    """The adversarial images captioned with their *targets'* captions (and target labels).

    Retrieval on this dataset is targeted retrieval; exported with
    `robust.data.karpathy.export_dataset` it is the adversarial annotation file that the
    reference pipeline builds but never writes.
    """
    texts, caption_pair = target_captions(dataset, pairs)
    labels = None
    if dataset.labels is not None:
        labels = tuple(dataset.labels[int(t)] for t in pairs.target)
    image_ids = tuple(
        f"adv{i:05d}-{dataset.image_ids[int(c)]}-to-{dataset.image_ids[int(t)]}"
        for i, (c, t) in enumerate(zip(pairs.clean, pairs.target, strict=True))
    )
    return CaptionDataset(
        name=f"anyattack:{dataset.name}",
        images=ArrayImages(to_uint8_array(images.adversarial)),
        image_ids=image_ids,
        captions=tuple(texts),
        caption_image=caption_pair,
        labels=labels,
    )


def export_adversarial(
    attack: AnyAttack,
    dataset: CaptionDataset,
    folder: Path | str,
    *,
    pairs: int = 500,
    seed: int = 0,
    progress: Progress | None = None,
) -> Path:
    """Craft adversarial images and write them in the Karpathy layout; returns the json.

    `pairs.json` beside it records which clean and target image each one came from.
    """
    from robust.data.karpathy import export_dataset

    try:
        chosen = pair_images(dataset, pairs, seed)
    except ValueError as exc:
        raise RobustError(f"--pairs: {exc}") from None
    images = craft_pair_images(attack, dataset, chosen, progress=progress)
    folder = Path(folder)
    annotation = export_dataset(targeted_caption_dataset(images, chosen, dataset), folder)
    record = {
        "attack": attack.config(),
        "dataset": dataset.name,
        "seed": seed,
        "clean": [dataset.image_ids[int(i)] for i in chosen.clean],
        "target": [dataset.image_ids[int(i)] for i in chosen.target],
    }
    (folder / "pairs.json").write_text(json.dumps(record, indent=2))
    return annotation


def write_examples(
    folder: Path,
    pictures: dict[str, np.ndarray],
    eps: float,
    pairs: TargetPairs,
    dataset: CaptionDataset,
    generated: dict[str, dict[str, list[str]]],
) -> list[dict[str, Any]]:
    """The pairs of `pictures` (uint8 `[N,H,W,3]` per kind of `QUADRUPLE`, the noise mapped
    to [0, 1]) as PNG quadruples plus `examples.json` (paths and captions)."""
    count = len(pictures["clean"]) if pictures else 0
    if count == 0:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        record: dict[str, Any] = {
            "pair": index,
            "clean_image": dataset.image_ids[pairs.clean[index]],
            "target_image": dataset.image_ids[pairs.target[index]],
            "clean_captions": dataset.captions_of([int(pairs.clean[index])])[0],
            "target_captions": dataset.captions_of([int(pairs.target[index])])[0],
            "files": {},
            "generated": {
                victim: {gallery: captions[index] for gallery, captions in by_gallery.items()}
                for victim, by_gallery in generated.items()
            },
        }
        for kind in QUADRUPLE:
            file_name = f"{index:02d}_{kind}.png"
            Image.fromarray(pictures[kind][index]).save(folder / file_name)
            record["files"][kind] = file_name
        records.append(record)
    (folder / "examples.json").write_text(json.dumps({"eps": eps, "examples": records}, indent=2))
    return records


__all__ = [
    "ATTACK",
    "EXAMPLES_DIR",
    "WORLD_DECODER",
    "AnyAttackEvaluation",
    "PairImages",
    "craft_pair_images",
    "evaluate_anyattack",
    "export_adversarial",
    "save_run_decoder",
    "targeted_caption_dataset",
    "write_examples",
]
