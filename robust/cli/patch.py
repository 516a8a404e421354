"""`robust patch train|apply|eval`: the AdvCLIP universal patch from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from robust.cli.common import (
    ZOO_TRAIN,
    DatasetOption,
    RichProgress,
    app,
    console,
    progress_bar,
    user_errors,
)
from robust.data.world import ZOO_WORLD
from robust.errors import RobustError

patch_app = typer.Typer(help="Universal adversarial patches (AdvCLIP).", no_args_is_help=True)
app.add_typer(patch_app, name="patch")

LimitOption = Annotated[int | None, typer.Option(help="Use the first N images.")]


@patch_app.command("train")
@user_errors
def train_command(
    victim: Annotated[str, typer.Option("--victim", help="Source victim (image encoder).")],
    out: Annotated[Path, typer.Option(help="Patch PNG to write (a .json sidecar goes beside).")],
    dataset: DatasetOption = ZOO_TRAIN,
    limit: LimitOption = 2048,
    area: Annotated[float, typer.Option(help="Patch area as a fraction of the image.")] = 0.03,
    placement: Annotated[str, typer.Option(help="fixed (bottom-right) or random (EOT).")] = (
        "fixed"
    ),
    steps: Annotated[int, typer.Option(help="Training steps.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of noise, initialisation and batches.")] = 0,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Fit a universal patch against a victim's image encoder; save PNG + JSON sidecar."""
    from robust.attacks.advclip import AdvCLIPParams
    from robust.data import load_dataset
    from robust.harness.patch import train_patch

    params = {"area_fraction": area, "placement": placement, "steps": steps}
    params["batch_size"] = batch_size
    AdvCLIPParams(**params)  # bad values fail before the victim and data load
    if out.suffix.lower() != ".png":
        raise RobustError(f"--out {out}: a patch is saved as a .png file; change the name")
    data = load_dataset(dataset, limit=limit)
    with progress_bar() as bar:
        artifact = train_patch(
            victim, data, out, params=params, seed=seed, device=device, progress=RichProgress(bar)
        )
    final = artifact.curve[-1] if artifact.curve else {}
    console.print(
        f"patch {artifact.side}x{artifact.side} px ({artifact.area_fraction:.1%} of "
        f"{artifact.source_image_size} px, {artifact.placement}) on {artifact.source}; final "
        f"cosine to clean {final.get('cosine_to_clean', float('nan')):.3f}; saved {out} and "
        f"{out.with_suffix('.json')}",
        highlight=False,
    )


@patch_app.command("apply")
@user_errors
def apply_command(
    patch: Annotated[Path, typer.Argument(help="Patch PNG (with its .json sidecar).")],
    out: Annotated[Path, typer.Option(help="Folder for the patched PNGs.")],
    dataset: DatasetOption = ZOO_WORLD,
    limit: LimitOption = None,
    image_size: Annotated[
        int | None, typer.Option(help="Output resolution (default: the patch's source).")
    ] = None,
    resize_mode: Annotated[str, typer.Option(help="crop (CLIP) or squash (ALBEF/BLIP).")] = (
        "crop"
    ),
    seed: Annotated[int, typer.Option(help="Seed of random placements.")] = 0,
) -> None:
    """Paste a saved patch on every image of a dataset and write the results as PNGs."""
    from robust.attacks.patch_artifact import load_patch
    from robust.data import load_dataset
    from robust.harness.patch import apply_patch_files

    if resize_mode not in ("crop", "squash"):
        raise RobustError(f"--resize-mode must be crop or squash, got {resize_mode!r}")
    if image_size is not None and image_size <= 0:
        raise RobustError(f"--image-size must be positive, got {image_size}")
    artifact = load_patch(patch)  # a bad patch fails before the dataset is built
    data = load_dataset(dataset, limit=limit)
    paths = apply_patch_files(
        artifact, data, out, image_size=image_size, resize_mode=resize_mode, seed=seed
    )
    console.print(f"wrote {len(paths)} patched images to {out}", highlight=False)


@patch_app.command("eval")
@user_errors
def eval_command(
    patch: Annotated[Path, typer.Argument(help="Patch PNG (with its .json sidecar).")],
    victim: Annotated[list[str], typer.Option("--victim", help="Target victim (repeat).")],
    dataset: DatasetOption = ZOO_WORLD,
    limit: LimitOption = None,
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/patch"),
    seed: Annotated[int, typer.Option(help="Seed of the control patch and placements.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Retrieval, zero-shot, k-NN and captioning under the patch and a random-patch control."""
    from robust.attacks.patch_artifact import load_patch
    from robust.data import load_dataset
    from robust.harness.patch import run_patch_evaluation

    if batch_size <= 0:
        raise RobustError(f"--batch-size must be positive, got {batch_size}")
    artifact = load_patch(patch)
    data = load_dataset(dataset, limit=limit)
    with progress_bar() as bar:
        evaluation = run_patch_evaluation(
            artifact,
            victim,
            data,
            out,
            control_seed=seed,
            placement_seed=seed,
            batch_size=batch_size,
            device=device,
            progress=RichProgress(bar),
        )
    print_patch_tables(evaluation)
    console.print(f"results: {out / 'results.sqlite'} (run {evaluation.run_id})", highlight=False)


# World runs: the same over images whose captioned objects the patch does not cover
_UNOCCLUDED = ("images_unoccluded", "tr_r1_unoccluded", "ir_r1_unoccluded",
               "tr_asr_r1_unoccluded", "ir_asr_r1_unoccluded")  # fmt: skip
# (scoring, title, metrics shown; clean rows show the first column's metric)
_TABLES = (
    ("itc", "Retrieval (ITC)", ("tr_r1", "ir_r1", "tr_asr_r1", "ir_asr_r1", "tr_drop_r1")),
    ("rerank", "Retrieval (ITM re-ranked)", ("tr_r1", "ir_r1", "tr_asr_r1", "ir_asr_r1")),
    ("itc", "Retrieval (ITC) of images the patch leaves whole", _UNOCCLUDED),
    ("rerank", "Retrieval (ITM re-ranked) of images the patch leaves whole", _UNOCCLUDED),
    ("zero-shot", "Zero-shot (world labels)", ("shape_acc", "color_acc", "background_acc")),
    ("knn", "k-NN on frozen features", ("shape_acc", "color_acc", "background_acc")),
    ("caption", "Captioning", ("bleu4", "cider", "caption_change_rate", "cider_drop")),
)


def print_patch_tables(evaluation) -> None:
    """One table per task: clean, patch and random-patch control rows, in percent."""
    for scoring, title, metrics in _TABLES:
        rows = evaluation.table(scoring)
        if not any(metric in row for row in rows for metric in metrics):
            continue
        extra = ("fooling_rate",) if scoring in ("zero-shot", "knn") else ()
        table = Table(title=f"{title}: patch from {evaluation.source} (%)")
        table.add_column("target", style="bold")
        table.add_column("images", no_wrap=True)
        shown = [*metrics, *(f"{m.removesuffix('_acc')}_{e}" for m in metrics for e in extra)]
        for metric in shown:
            table.add_column(metric, justify="right")
        for row in rows:
            cells = [_cell(row, m) for m in shown]
            table.add_row(row["target"], row["attack"] or "clean", *cells)
        console.print(table)


def _cell(row: dict, metric: str) -> str:
    """A metric in percent; image counts as they are; "-" where the row has none."""
    if metric not in row:
        return "-"
    value = row[metric]
    return f"{value:.0f}" if metric.startswith("images") else f"{100 * value:.1f}"
