"""Core commands: victims, world, zoo, eval, caption, matrix, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from robust.cli.common import (
    DatasetOption,
    RichProgress,
    app,
    console,
    error_console,
    print_asr_matrix,
    print_calibration_bands,
    print_retrieval_table,
    progress_bar,
    user_errors,
)
from robust.data.world import ZOO_WORLD
from robust.errors import RobustError

world_app = typer.Typer(help="The embedded synthetic world.", no_args_is_help=True)
zoo_app = typer.Typer(help="The toy zoo of tiny victims.", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(zoo_app, name="zoo")


@app.command("victims")
@user_errors
def victims_command() -> None:
    """List every registered victim with its family, resolution, capabilities and weights."""
    from robust.victims.registry import list_victims, weights_present

    table = Table(title="Registered victims")
    table.add_column("name", no_wrap=True)
    for column in ("family", "resolution", "capabilities", "weights"):
        table.add_column(column)
    table.add_column("spec", overflow="fold")
    for entry in list_victims():
        present = "[green]present[/]" if weights_present(entry) else "[yellow]missing[/]"
        table.add_row(
            entry.name,
            entry.family,
            "?" if entry.image_size is None else str(entry.image_size),
            ",".join(entry.capabilities),
            present,
            entry.spec,
        )
    console.print(table)
    console.print(
        "Any other model: open_clip:ARCH@TAG|FILE, open_clip:local-dir:DIR, hf-clip:ID|DIR",
        highlight=False,
    )


@world_app.command("export")
@user_errors
def world_export_command(
    directory: Annotated[Path, typer.Argument(help="Folder to write images + json into.")],
    split: Annotated[str, typer.Option(help="World split to export.")] = "test-1k",
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    size: Annotated[
        int | None, typer.Option(help="Image side in pixels (default: the version's own).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Export only the first N images.")] = None,
    version: Annotated[
        str, typer.Option(help="World version: world, world-v2 or world-v3 (the zoo's).")
    ] = ZOO_WORLD,
) -> None:
    """Write a world split as PNGs plus a Karpathy-style json (readable as karpathy:DIR:JSON)."""
    from robust.data.karpathy import export_dataset
    from robust.data.world import generate_world

    try:
        dataset = generate_world(split, seed=seed, size=size, count=count, version=version)
    except ValueError as error:
        raise RobustError(str(error)) from None
    with progress_bar() as bar:
        annotation = export_dataset(dataset, directory, progress=RichProgress(bar))
    console.print(
        f"wrote {dataset.num_images} images and {dataset.num_captions} captions; read it back "
        f"with --dataset karpathy:{directory}:{annotation}",
        highlight=False,
    )


@zoo_app.command("train")
@user_errors
def zoo_train_command(
    name: Annotated[str, typer.Argument(help="Zoo member, e.g. toy-clip-vit.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the shipped zoo).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Override the recipe's seed.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    train_images: Annotated[
        int | None,
        typer.Option(help="Train on the first N world-train images (above 20,000: fresh scenes)."),
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Override the recipe's peak learning rate.")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(help="CLIP toys: fine-tune from this member or open_clip folder."),
    ] = None,
    world: Annotated[
        str | None,
        typer.Option(help=f"World version to train on (default: the zoo's, {ZOO_WORLD})."),
    ] = None,
    vision_init: Annotated[
        str | None,
        typer.Option(help="Fusion toys: warm-start the ViT from this CLIP ViT member or folder."),
    ] = None,
    text_init: Annotated[
        str | None,
        typer.Option(help="Fusion toys, captioner: warm-start the text from this masked LM."),
    ] = None,
    attribute_epochs: Annotated[
        int | None,
        typer.Option(help="CLIP toys: epochs of supervised scene-attribute start first."),
    ] = None,
    attribute_weight: Annotated[
        float | None,
        typer.Option(help="CLIP, ALBEF, TCL toys: weight of the attribute loss beside InfoNCE."),
    ] = None,
    attribute_text: Annotated[
        bool | None,
        typer.Option(
            "--attribute-text/--no-attribute-text",
            help="CLIP, ALBEF, TCL toys: the attribute head also reads caption embeddings.",
        ),
    ] = None,
    attribute_kinds: Annotated[
        str | None,
        typer.Option(help="The attribute kinds the head learns, e.g. shape,color."),
    ] = None,
) -> None:
    """Train a toy victim on world train with the project's own recipe and save it."""
    from robust.zoo.train import train_zoo_member

    with progress_bar() as bar:
        report = train_zoo_member(
            name,
            out,
            seed=seed,
            epochs=epochs,
            train_images=train_images,
            learning_rate=learning_rate,
            init=init,
            world=world,
            vision_init=vision_init,
            text_init=text_init,
            attribute_epochs=attribute_epochs,
            attribute_weight=attribute_weight,
            attribute_text=attribute_text,
            attribute_kinds=None
            if attribute_kinds is None
            else tuple(kind.strip() for kind in attribute_kinds.split(",")),
            progress=RichProgress(bar),
        )
    console.print(
        f"trained {report.name}: {report.steps} steps in {report.seconds:.0f}s, "
        f"final loss {report.final_loss:.3f}; saved to {report.output_dir}",
        highlight=False,
    )


@zoo_app.command("calibrate")
@user_errors
def zoo_calibrate_command(
    spec_file: Annotated[
        str, typer.Argument(help="Calibration spec: a YAML file or a shipped spec name.")
    ] = "world-calibration",
    output_dir: Annotated[
        Path | None, typer.Option(help="Run directory; overrides the spec's output_dir.")
    ] = None,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Where to write the bands (default: RUN_DIR/calibration.json)."
        ),
    ] = None,
) -> None:
    """Run the calibration matrix and check the zoo against the published attack pattern.

    Resumes like `robust matrix`; exits 1 when a band is missed.
    """
    from robust.harness.calibration import (
        calibration_bands,
        check_calibration_labels,
        write_calibration,
    )
    from robust.harness.matrix import run_matrix
    from robust.harness.spec import load_spec

    spec = load_spec(spec_file)
    check_calibration_labels([attack.label for attack in spec.attacks])
    if output_dir is not None:
        spec = spec.model_copy(update={"output_dir": output_dir})
    with progress_bar() as bar:
        result = run_matrix(spec, progress=RichProgress(bar))
    for label in result.labels:
        print_asr_matrix(result, label)
    bands = calibration_bands(result)
    print_calibration_bands(result, bands)
    written = write_calibration(json_path or spec.run_dir / "calibration.json", result, bands)
    console.print(f"bands written to {written}", highlight=False)
    if not all(band.passed for band in bands):
        raise typer.Exit(code=1)


@zoo_app.command("refine-itm")
@user_errors
def zoo_refine_itm_command(
    name: Annotated[str, typer.Argument(help="Fusion toy: toy-albef, toy-tcl or toy-blip.")],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the shipped zoo, in place).")
    ] = None,
    init: Annotated[
        Path | None, typer.Option(help="Folder to start from (default: the shipped member).")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Passes over every world-train caption (default 2).")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate (default 1e-3).")
    ] = None,
    negatives_from_top: Annotated[
        int | None,
        typer.Option(help="Draw negatives from each query's N ITC-nearest non-matches (128)."),
    ] = None,
    train_images: Annotated[
        int | None, typer.Option(help="Refine on the first N world-train images.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the negative draws (default 0).")] = (
        None
    ),
    world: Annotated[
        str | None,
        typer.Option(help=f"World version the member was trained on (default: {ZOO_WORLD})."),
    ] = None,
) -> None:
    """Fine-tune a fusion toy's ITM (not its ITC) on the ITC-hard negatives re-ranking faces."""
    from robust.zoo.itm_refine import ItmRefineRecipe, refine_zoo_member

    requested = {
        "epochs": epochs,
        "learning_rate": learning_rate,
        "negatives_from_top": negatives_from_top,
        "train_images": train_images,
        "seed": seed,
        "world": world,
    }
    recipe = ItmRefineRecipe(**{k: v for k, v in requested.items() if v is not None})
    with progress_bar() as bar:
        report = refine_zoo_member(name, out, init=init, recipe=recipe, progress=RichProgress(bar))
    console.print(
        f"refined {report.name}'s ITM: {report.steps} steps in {report.seconds:.0f}s, "
        f"final loss {report.final_loss:.3f}; saved to {report.output_dir}",
        highlight=False,
    )


@app.command("eval")
@user_errors
def eval_command(
    victim: Annotated[list[str], typer.Option("--victim", help="Victim name or spec (repeat).")],
    dataset: DatasetOption = ZOO_WORLD,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N images.")] = None,
    out: Annotated[Path, typer.Option(help="Run directory for the results store.")] = Path(
        "runs/eval"
    ),
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    k_test: Annotated[
        int | None,
        typer.Option(help="ITM re-ranking depth for fusion victims (default 128, COCO 256)."),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Clean image-text retrieval (TR/IR R@1/5/10) of each victim; writes the store.

    Fusion victims (ALBEF, TCL, BLIP) get two rows: ITC alone and ITM re-ranked.
    """
    from robust.data import load_dataset
    from robust.harness.evaluate import evaluate_victims

    if batch_size <= 0:
        raise RobustError(f"--batch-size must be positive, got {batch_size}")
    if k_test is not None and k_test <= 0:
        raise RobustError(f"--k-test must be positive, got {k_test}")
    data = load_dataset(dataset, limit=limit)
    with progress_bar() as bar:
        evaluation = evaluate_victims(
            victim,
            data,
            out,
            batch_size=batch_size,
            k_test=k_test,
            device=device,
            progress=RichProgress(bar),
        )
    print_retrieval_table(f"Clean retrieval on {data.name} (R@K, %)", evaluation.rows())
    console.print(f"results: {out / 'results.sqlite'} (run {evaluation.run_id})", highlight=False)


@app.command("caption")
@user_errors
def caption_command(
    victim: Annotated[str, typer.Option("--victim", help="Captioner name or spec.")],
    dataset: DatasetOption = ZOO_WORLD,
    limit: Annotated[int | None, typer.Option(help="Caption the first N images.")] = None,
    show: Annotated[int, typer.Option(help="How many captions to print.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Images per generate call.")] = 32,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Generate captions and score them against the references (BLEU-1..4, ROUGE-L, CIDEr)."""
    from robust.data import load_dataset
    from robust.eval.captioning import evaluate_captioning
    from robust.victims.registry import load_victim

    if batch_size <= 0:
        raise RobustError(f"--batch-size must be positive, got {batch_size}")
    data = load_dataset(dataset, limit=limit)
    captioner = load_victim(victim, device=device)
    with progress_bar() as bar:
        evaluation = evaluate_captioning(
            captioner, data, batch_size=batch_size, progress=RichProgress(bar)
        )
    examples = Table(title=f"{captioner.name} on {data.name}")
    examples.add_column("image")
    examples.add_column("generated")
    examples.add_column("first reference")
    for index in range(min(show, data.num_images)):
        examples.add_row(
            data.image_ids[index], evaluation.captions[index], data.captions_of([index])[0][0]
        )
    console.print(examples)
    scores = Table(title="Caption metrics")
    for name in evaluation.metrics:
        scores.add_column(name, justify="right")
    scores.add_row(*(f"{value:.3f}" for value in evaluation.metrics.values()))
    console.print(scores)


@app.command("matrix")
@user_errors
def matrix_command(
    spec_file: Annotated[
        str, typer.Argument(help="Experiment spec: a YAML file or a shipped name (robust specs).")
    ],
    output_dir: Annotated[
        Path | None, typer.Option(help="Run directory; overrides the spec's output_dir.")
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="local (in-process) or ray (cells as Ray tasks); overrides the spec."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join (auto, HOST:PORT, ray://HOST:10001)."),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="fp32 (the reference), tf32 or bf16 (autocast); overrides the spec."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use the first N dataset images; overrides the spec.")
    ] = None,
) -> None:
    """Transfer-attack matrix: craft on every source, evaluate on every target, store it all.

    Re-running the same spec into the same directory resumes where it stopped.
    """
    from robust.harness.executors import make_executor
    from robust.harness.matrix import run_matrix
    from robust.harness.spec import load_spec
    from robust.precision import check_precision

    spec = load_spec(spec_file)
    overrides: dict[str, object] = {}
    if output_dir is not None:
        overrides["output_dir"] = output_dir
    if executor is not None:
        overrides["executor"] = executor
    if precision is not None:
        overrides["precision"] = check_precision(precision)
    if limit is not None:
        if limit <= 0:
            raise RobustError(f"--limit must be a positive number of images, got {limit}")
        overrides["limit"] = limit
    spec = spec.model_copy(update=overrides)
    runner = make_executor(spec.executor, device=spec.device, address=address)
    try:
        with progress_bar() as bar:
            result = run_matrix(spec, progress=RichProgress(bar), executor=runner)
    except KeyboardInterrupt:
        error_console.print(
            f"interrupted; finished cells are kept in {spec.run_dir}, run the same command "
            "again to resume",
            highlight=False,
        )
        raise typer.Exit(code=130) from None
    for label in result.labels:
        print_asr_matrix(result, label)
    console.print(
        f"results: {spec.run_dir / 'results.sqlite'} (run {result.run_id}), adversarial "
        f"examples: {spec.run_dir / 'cache'}; executor {result.executor['name']}, "
        f"precision {spec.precision}",
        highlight=False,
    )


@app.command("demo")
@user_errors
def demo_command(
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
    report: Annotated[
        Path | None, typer.Option(help="Report PDF to write (default: OUT/report.pdf).")
    ] = None,
) -> None:
    """Run the suite's main jobs on the embedded world with the toy zoo, then the report.

    Running it again into the same directory resumes instead of recomputing.
    """
    from robust.cli.bias import print_defense_tables
    from robust.demo import DEFENSE_SPEC, DEMO_SPLIT, run_demo
    from robust.harness.spec import load_spec

    with progress_bar() as bar:
        result = run_demo(out, report_pdf=report, progress=RichProgress(bar))
    print_retrieval_table(
        f"Clean retrieval of the toy zoo on {ZOO_WORLD}:{DEMO_SPLIT} (R@K, %)", result.clean_rows
    )
    for label in result.matrix.labels:
        print_asr_matrix(result.matrix, label)
    print_calibration_bands(result.matrix, result.calibration)
    defense_spec = load_spec(DEFENSE_SPEC)
    print_defense_tables(defense_spec.dataset, defense_spec.defenses.names, result.defense.defenses)
    console.print(
        f"results: {out} (clean/, matrix/, defense/, patch/, anyattack/; matrix executor "
        f"{result.matrix.executor.get('name', '?')}); report: {result.report.path} "
        f"({result.report.pages} pages)",
        highlight=False,
    )
