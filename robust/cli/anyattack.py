"""`robust anyattack`: pre-train, fine-tune, attack with, evaluate and inspect noise decoders."""

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

anyattack_app = typer.Typer(
    help="AnyAttack: targeted noise from a target image's embedding.", no_args_is_help=True
)
app.add_typer(anyattack_app, name="anyattack")

EncoderOption = Annotated[str, typer.Option(help="Victim whose image embedding drives the noise.")]
EpsOption = Annotated[str, typer.Option(help="L-inf budget in [0,1] pixels, e.g. 16/255.")]
StepsOption = Annotated[int, typer.Option(help="Optimiser steps in the whole run.")]
ChannelsOption = Annotated[
    int, typer.Option(help="Decoder width at the lowest resolution (released: 256; world: 64).")
]
ResumeOption = Annotated[
    bool, typer.Option(help="Continue the run saved in --out (its config wins).")
]


def _train(stage: str, config, out: Path, resume: bool) -> None:
    from robust.attacks.anyattack_train import (
        finetune,
        load_checkpoint,
        loss_summary,
        pretrain,
    )

    run = pretrain if stage == "pretrain" else finetune
    start = load_checkpoint(out) if resume else config
    if not resume and out.exists():
        raise RobustError(
            f"{out} already exists; pass --resume to continue it or choose another --out"
        )
    with progress_bar() as bar:
        state = run(start, checkpoint=out, progress=RichProgress(bar))
    summary = loss_summary(state.losses)
    console.print(
        f"{stage}: step {state.step}/{state.config.steps}, loss {summary['loss_first']:.3f} "
        f"(first steps) -> {summary['loss_last']:.3f} (last steps); checkpoint {out}",
        highlight=False,
    )


def _decoder_sizes(encoder: str, channels: int, image_size: int | None) -> dict[str, int]:
    from robust.attacks.anyattack import decoder_config_for
    from robust.victims.registry import load_victim

    victim = load_victim(encoder)
    return decoder_config_for(victim, channels=channels, image_size=image_size).to_dict()


@anyattack_app.command("pretrain")
@user_errors
def pretrain_command(
    out: Annotated[Path, typer.Option(help="Checkpoint file (written every --checkpoint-every).")],
    encoder: EncoderOption = "toy-clip-vit",
    data: Annotated[str, typer.Option(help=f"Image folder or dataset ({ZOO_TRAIN}, ...).")] = (
        ZOO_TRAIN
    ),
    limit: Annotated[int | None, typer.Option(help="Use the first N images.")] = None,
    eps: EpsOption = "16/255",
    steps: StepsOption = 1000,
    batch_size: Annotated[int, typer.Option(help="Images per step (the InfoNCE batch).")] = 64,
    chunks: Annotated[int, typer.Option(help="K shuffled clean copies per target.")] = 5,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    tau_decay_steps: Annotated[int, typer.Option(help="Steps for tau to go 1.0 -> 0.07.")] = 10_000,
    restart_steps: Annotated[int, typer.Option(help="Cosine warm-restart period.")] = 5000,
    channels: ChannelsOption = 256,
    image_size: Annotated[int | None, typer.Option(help="Noise size (default: encoder's).")] = None,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the initialisation and the batches.")] = 0,
    resume: ResumeOption = False,
) -> None:
    """Self-supervised pre-training on unlabeled images (InfoNCE, K-augmentation)."""
    from robust.attacks.anyattack import parse_eps
    from robust.attacks.anyattack_train import PretrainConfig

    config = None
    if not resume:
        config = PretrainConfig(
            encoder=encoder,
            data=data,
            limit=limit,
            eps=parse_eps(eps),
            steps=steps,
            batch_size=batch_size,
            chunks=chunks,
            lr=lr,
            tau_decay_steps=tau_decay_steps,
            restart_steps=restart_steps,
            checkpoint_every=checkpoint_every,
            seed=seed,
            decoder=_decoder_sizes(encoder, channels, image_size),
        )
    _train("pretrain", config, out, resume)


@anyattack_app.command("finetune")
@user_errors
def finetune_command(
    out: Annotated[Path, typer.Option(help="Checkpoint file (written every --checkpoint-every).")],
    init: Annotated[
        Path | None, typer.Option(help="Decoder to start from (a pre-trained checkpoint).")
    ] = None,
    encoder: EncoderOption = "toy-clip-vit",
    data: Annotated[str, typer.Option(help="Target images: folder or dataset.")] = ZOO_TRAIN,
    clean: Annotated[str, typer.Option(help="Clean images: folder or dataset.")] = ZOO_TRAIN,
    limit: Annotated[int | None, typer.Option(help="Use the first N images of each.")] = None,
    aux: Annotated[
        list[str] | None,
        typer.Option(help="Auxiliary victim as NAME or NAME=WEIGHT (repeat; default: encoder)."),
    ] = None,
    criterion: Annotated[str, typer.Option(help="contrastive or cosine.")] = "cosine",
    eps: EpsOption = "16/255",
    steps: StepsOption = 1000,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    restart_steps: Annotated[int, typer.Option(help="Cosine warm-restart period.")] = 5000,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the pairs drawn every step.")] = 0,
    resume: ResumeOption = False,
) -> None:
    """Fine-tune a decoder with auxiliary victims; clean/target pairs re-drawn every step."""
    from robust.attacks.anyattack import load_decoder, parse_eps
    from robust.attacks.anyattack_train import FinetuneConfig

    config = None
    if not resume:
        if init is None:
            raise RobustError("pass --init with a pre-trained decoder (or --resume a run)")
        sizes = load_decoder(init).config.to_dict()
        config = FinetuneConfig(
            encoder=encoder,
            data=data,
            clean=clean,
            limit=limit,
            auxiliaries=_parse_auxiliaries(aux or [encoder]),
            criterion=criterion,
            eps=parse_eps(eps),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            restart_steps=restart_steps,
            checkpoint_every=checkpoint_every,
            seed=seed,
            init=str(init),
            decoder=sizes,
        )
    _train("finetune", config, out, resume)


def _parse_auxiliaries(values: list[str]) -> dict[str, float]:
    from robust.victims.registry import resolve_spec

    weights: dict[str, float] = {}
    for value in values:
        name, sep, weight = value.partition("=")
        resolve_spec(name)
        try:
            weights[name] = float(weight) if sep else 1.0
        except ValueError:
            raise RobustError(f"--aux {value!r}: the weight after '=' must be a number") from None
    return weights


def _decoder_file(argument: Path | None, option: Path | None) -> Path:
    """The decoder named as the argument or with --decoder (the same file if both)."""
    if argument is not None and option is not None and argument != option:
        raise RobustError(
            f"two decoders given ({argument} and --decoder {option}); name one of them"
        )
    decoder = argument or option
    if decoder is None:
        raise RobustError("name the decoder checkpoint: --decoder PATH (or as the argument)")
    return decoder


def _open_attack(decoder: Path, encoder: str | None, eps: str | None, device: str = "cpu"):
    """The decoder, the encoder it was trained with, and the budget it was trained for."""
    from robust.attacks.anyattack import AnyAttack, describe_checkpoint, load_decoder, parse_eps
    from robust.victims.registry import load_victim

    info = describe_checkpoint(decoder)
    encoder = encoder or info["encoder"]
    if encoder is None:
        raise RobustError(
            f"{decoder} does not record its encoder; pass --encoder (the released AnyAttack "
            "decoders use clip-vit-b32)"
        )
    budget = parse_eps(eps) if eps is not None else (info["eps"] or parse_eps("16/255"))
    victim = load_victim(encoder, device=device)
    return AnyAttack(victim, load_decoder(decoder).to(device), eps=budget)


DecoderArgument = Annotated[
    Path | None, typer.Argument(help="Decoder checkpoint (.pt); or pass it as --decoder.")
]
DecoderFileOption = Annotated[
    Path | None,
    typer.Option("--decoder", help="Decoder checkpoint (.pt), e.g. a released coco_cos.pt."),
]
EncoderOverride = Annotated[
    str | None, typer.Option(help="Encoder victim (default: the one the checkpoint records).")
]
DeviceOption = Annotated[str, typer.Option(help="torch device.")]
EpsOverride = Annotated[
    str | None, typer.Option(help="Budget, e.g. 16/255 (default: the checkpoint's).")
]
PairsOption = Annotated[int, typer.Option(help="Clean/target pairs to craft.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the clean/target pairing.")]


@anyattack_app.command("attack")
@user_errors
def attack_command(
    out: Annotated[Path, typer.Option(help="Folder for the adversarial images and json.")],
    decoder: DecoderArgument = None,
    decoder_file: DecoderFileOption = None,
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            "--victim",
            help="Victim attacked: its image embedding of each target drives the noise "
            "(default: the one the checkpoint records; released decoders: clip-vit-b32).",
        ),
    ] = None,
    eps: EpsOverride = None,
    dataset: DatasetOption = ZOO_WORLD,
    limit: Annotated[int | None, typer.Option(help="Draw pairs from the first N images.")] = None,
    pairs: PairsOption = 500,
    seed: SeedOption = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Craft adversarial images; written as a Karpathy dataset captioned by the targets."""
    from robust.data import load_dataset
    from robust.harness.anyattack_eval import export_adversarial

    decoder = _decoder_file(decoder, decoder_file)
    data = load_dataset(dataset, limit=limit)
    attack = _open_attack(decoder, encoder, eps, device)
    with progress_bar() as bar:
        annotation = export_adversarial(
            attack, data, out, pairs=pairs, seed=seed, progress=RichProgress(bar)
        )
    console.print(
        f"wrote {pairs} adversarial images to {out}; targeted retrieval on them: robust eval "
        f"--dataset karpathy:{out}:{annotation} --victim NAME; beside the clean floor and "
        f"the target ceiling: robust anyattack eval --decoder {decoder} --encoder "
        f"{attack.encoder.name} --victim NAME --dataset {dataset} --pairs {pairs} --seed {seed}"
        + (f" --limit {limit}" if limit is not None else "")
        + (f" --eps {eps}" if eps is not None else ""),
        highlight=False,
        soft_wrap=True,
    )


@anyattack_app.command("eval")
@user_errors
def eval_command(
    victim: Annotated[
        list[str], typer.Option("--victim", help="Victim to evaluate (repeat; any family).")
    ],
    decoder: DecoderArgument = None,
    decoder_file: DecoderFileOption = None,
    encoder: EncoderOverride = None,
    eps: EpsOverride = None,
    dataset: DatasetOption = ZOO_WORLD,
    limit: Annotated[int | None, typer.Option(help="Draw pairs from the first N images.")] = None,
    pairs: PairsOption = 500,
    seed: SeedOption = 0,
    examples: Annotated[int, typer.Option(help="Example quadruples saved as PNGs.")] = 4,
    out: Annotated[Path, typer.Option(help="Run directory for the results store.")] = Path(
        "runs/anyattack"
    ),
    device: DeviceOption = "cpu",
) -> None:
    """Targeted retrieval (vs clean floor and target ceiling) and captioning; writes the store."""
    from robust.data import load_dataset
    from robust.eval.targeted import GALLERIES
    from robust.harness.anyattack_eval import evaluate_anyattack

    decoder = _decoder_file(decoder, decoder_file)
    data = load_dataset(dataset, limit=limit)
    attack = _open_attack(decoder, encoder, eps, device)
    with progress_bar() as bar:
        evaluation = evaluate_anyattack(
            attack.decoder,
            attack.encoder.name,
            victim,
            data,
            out,
            pairs=pairs,
            eps=attack.eps,
            seed=seed,
            examples=examples,
            decoder_source=str(decoder),
            device=device,
            progress=RichProgress(bar),
        )
    if evaluation.retrieval:
        table = Table(title=f"AnyAttack targeted retrieval, {pairs} pairs of {data.name} (%)")
        for column in ("victim", "images", "TR R@1", "TR R@5", "TR R@10", "IR R@1", "IR R@5"):
            table.add_column(column, justify="left" if column in ("victim", "images") else "right")
        for row in evaluation.rows():
            recalls = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5")
            table.add_row(row["victim"], row["gallery"], *(f"{100 * row[m]:.1f}" for m in recalls))
        console.print(table)
    for name, scores in evaluation.captioning.items():
        table = Table(title=f"AnyAttack captioning on {name}: captions vs target / vs clean refs")
        for column in ("images", "BLEU-4 tgt", "CIDEr tgt", "emb tgt", "BLEU-4 cln", "CIDEr cln"):
            table.add_column(column, justify="left" if column == "images" else "right")
        for gallery in GALLERIES:
            keys = ("vs_target_bleu4", "vs_target_cider", "vs_target_emb_sim_mean")
            keys += ("vs_clean_bleu4", "vs_clean_cider")
            table.add_row(gallery, *(f"{scores[f'{gallery}_{k}']:.3f}" for k in keys))
        console.print(table)
        if "adv_caption_readable" in scores:
            console.print(_claim_table(name, scores))
        else:
            console.print(
                f"{name}: no caption target rate ({data.name} has no world scene labels to "
                "check captions against)",
                highlight=False,
            )
    console.print(
        f"results: {out / 'results.sqlite'} (run {evaluation.run_id}); "
        f"examples: {out / 'anyattack_examples'}",
        highlight=False,
    )


def _claim_table(captioner: str, scores: dict[str, float]) -> Table:
    """The caption target rate: what the captions claim, checked against each scene (%)."""
    from robust.eval.targeted import CLAIM_METRICS, GALLERIES

    table = Table(
        title=f"AnyAttack caption target rate on {captioner} (%)",
        caption="share of the captions' object claims (colour + shape), colours and shapes "
        "true of the target's scene; all: captions entirely true of it; objects cln: object "
        "claims true of the clean image's scene",
    )
    columns = ("images", "readable", "objects", "colours", "shapes")
    for column in (*columns, "all", "objects cln"):
        table.add_column(column, justify="left" if column == "images" else "right")
    keys = ("caption_readable", *(f"vs_target_{m}" for m in CLAIM_METRICS))
    for gallery in GALLERIES:
        values = (scores[f"{gallery}_{k}"] for k in (*keys, "vs_clean_objects_true"))
        table.add_row(gallery, *(f"{100 * value:.1f}" for value in values))
    return table


@anyattack_app.command("bound")
@user_errors
def bound_command(
    encoder: EncoderOption = "toy-clip-vit",
    eps: EpsOption = "16/255",
    dataset: DatasetOption = ZOO_WORLD,
    limit: Annotated[
        int | None, typer.Option(help="Draw pairs from the first N images (as eval's --limit).")
    ] = None,
    pool: Annotated[
        str, typer.Option(help="Images the oracle noise is optimised over (not the pairs').")
    ] = f"{ZOO_WORLD}:val",
    pool_limit: Annotated[int, typer.Option(help="Use the first N pool images.")] = 1000,
    pairs: PairsOption = 500,
    optimise: Annotated[
        int, typer.Option(help="Pairs (the first N) whose oracle noise is optimised.")
    ] = 100,
    steps: Annotated[int, typer.Option(help="Sign-gradient steps per target.")] = 200,
    cleans: Annotated[int, typer.Option(help="Pool images drawn per target and step.")] = 8,
    seed: SeedOption = 0,
    out: Annotated[
        Path,
        typer.Option(
            help="Run directory for the results store; eval's, so its report shows the oracle."
        ),
    ] = Path("runs/anyattack"),
) -> None:
    """The best clean-independent noise per target: the ceiling for any AnyAttack decoder."""
    from robust.attacks.anyattack import parse_eps
    from robust.data import load_dataset
    from robust.harness.noise_oracle import evaluate_noise_oracle

    budget = parse_eps(eps)
    data = load_dataset(dataset, limit=limit)
    clean_pool = load_dataset(pool, limit=pool_limit)
    with progress_bar() as bar:
        result = evaluate_noise_oracle(
            encoder,
            data,
            clean_pool,
            out,
            pairs=pairs,
            optimised=optimise,
            steps=steps,
            cleans_per_step=cleans,
            eps=budget,
            seed=seed,
            progress=RichProgress(bar),
        )
    table = Table(
        title="Noise oracle: targeted TR R@1 (%)",
        caption=f"{encoder}; {optimise} of {pairs} pairs of {data.name}",
    )
    for column in ("images", "TR R@1"):
        table.add_column(column, justify="left" if column == "images" else "right")
    for gallery in ("floor", "oracle", "ceiling"):
        table.add_row(gallery, f"{100 * result.tr_r1[gallery]:.1f}")
    console.print(table)
    growth = Table(title="Oracle by steps")
    for column in ("steps", "TR R@1"):
        growth.add_column(column, justify="right")
    for count, value in result.by_step.items():
        growth.add_row(str(count), f"{100 * value:.1f}")
    console.print(growth)
    console.print(f"results: {out / 'results.sqlite'} (run {result.run_id})", highlight=False)


@anyattack_app.command("load")
@user_errors
def load_command(
    decoder: DecoderArgument,
    save_decoder: Annotated[
        Path | None,
        typer.Option(help="Also write a decoder-only copy (no optimiser state) to this file."),
    ] = None,
) -> None:
    """Read a decoder (this project's or a released AnyAttack file) and describe it."""
    from robust.attacks.anyattack import describe_checkpoint, strip_training_state

    info = describe_checkpoint(decoder)
    if save_decoder is not None:
        strip_training_state(decoder, save_decoder)
        console.print(f"decoder-only copy: {save_decoder}", highlight=False)
    sizes = info["decoder"]
    console.print(
        f"{decoder}: AnyAttack decoder, {sizes['embed_dim']}-d embedding -> "
        f"{sizes['image_size']} px noise, {sizes['channels']} channels, "
        f"{info['parameters']:,} parameters; stage {info['stage']}"
        + (f", step {info['step']}/{info['trained_steps']}" if info["step"] is not None else "")
        + (f", encoder {info['encoder']}" if info["encoder"] else ""),
        highlight=False,
    )


__all__ = ["anyattack_app"]
