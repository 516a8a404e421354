"""Bias and defense commands: `robust bias cache|pairs|caption`, `robust defenses list|show`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from robust.cli.common import RichProgress, app, console, progress_bar, user_errors

if TYPE_CHECKING:
    from robust.harness.results import DefenseRow

bias_app = typer.Typer(
    help="Bias effects: relevance bias (clean vs adversarial, real vs generated) and captions.",
    no_args_is_help=True,
)
defenses_app = typer.Typer(help="Input defenses and their results.", no_args_is_help=True)
app.add_typer(bias_app, name="bias")
app.add_typer(defenses_app, name="defenses")

RunDir = Annotated[Path, typer.Argument(help="A matrix run directory (holds cache/ and store).")]
Attack = Annotated[str, typer.Option(help="Attack label of the cached examples.")]
Source = Annotated[str, typer.Option(help="Source victim the examples were crafted on.")]
Seed = Annotated[int, typer.Option(help="Attack seed of the cache entry.")]
Device = Annotated[str, typer.Option(help="torch device.")]


def _percent(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}"


def _print_relevance(report, source_a: str, source_b: str) -> None:
    metrics = report.metrics
    table = Table(
        title=f"{report.victim}: relevance bias, {source_a} (A) vs {source_b} (B)",
        caption="Relative Delta = 2(A-B)/(A+B) in %: negative = prefers B; RankDiff > 0: B "
        "ranks higher; preference = share of queries scoring B above A",
    )
    for column in ("metric", "A", "B", "Relative Delta"):
        table.add_column(column, justify="right")
    for name in ("r1", "r3", "r5", "ndcg1", "ndcg3", "ndcg5"):
        delta = metrics[f"delta_{name}"]
        table.add_row(
            name.upper().replace("R", "R@").replace("NDCG", "NDCG@").replace("@@", "@"),
            f"{metrics[f'{name}_a']:.3f}",
            f"{metrics[f'{name}_b']:.3f}",
            "-" if delta != delta else f"{delta:+.1f}",
        )
    console.print(table)
    console.print(
        f"RankDiff {metrics['rank_diff']:+.2f}   preference for B "
        f"{_percent(metrics['preference_rate'])}%",
        highlight=False,
    )


@bias_app.command("cache")
@user_errors
def bias_cache_command(
    run_dir: RunDir,
    attack: Attack,
    source: Source,
    victim: Annotated[str, typer.Option(help="Victim whose retrieval is measured.")],
    seed: Seed = 0,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Device = "cpu",
) -> None:
    """Clean vs adversarial copies in one gallery: does the victim prefer the attacked ones,
    and (world) does the attack pull retrieval toward a colour, shape or position?"""
    from robust.harness.bias import cache_relevance_bias

    with progress_bar() as bar:
        report = cache_relevance_bias(
            run_dir,
            attack,
            source,
            victim,
            seed=seed,
            batch_size=batch_size,
            device=device,
            progress=RichProgress(bar),
        )
    _print_relevance(report, "clean", "adversarial")
    if report.attribute_shifts:
        table = Table(title="Top-1 retrieval by world attribute (% of caption queries)")
        for column in ("attribute", "value", "clean", "attacked", "shift"):
            table.add_column(column, justify="right")
        ordered = sorted(report.attribute_shifts, key=lambda s: -abs(s.shift))
        for shift in ordered:
            table.add_row(
                shift.attribute,
                shift.value,
                _percent(shift.clean_share),
                _percent(shift.attacked_share),
                f"{100 * shift.shift:+.1f}",
            )
        console.print(table)
    console.print(f"results: {run_dir / 'results.sqlite'} (run {report.run_id})", highlight=False)


@bias_app.command("pairs")
@user_errors
def bias_pairs_command(
    pairs: Annotated[Path, typer.Argument(help="Real vs generated pairs json (see README).")],
    victim: Annotated[str, typer.Option(help="Victim whose retrieval is measured.")],
    out: Annotated[Path, typer.Option(help="Run directory for the results store.")] = Path(
        "runs/bias"
    ),
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Device = "cpu",
) -> None:
    """Invisible relevance bias: does the victim rank generated images above real ones?"""
    from robust.harness.bias import pairs_relevance_bias

    with progress_bar() as bar:
        report = pairs_relevance_bias(
            pairs, victim, out, batch_size=batch_size, device=device, progress=RichProgress(bar)
        )
    _print_relevance(report, "real", "generated")
    console.print(f"results: {out / 'results.sqlite'} (run {report.run_id})", highlight=False)


@bias_app.command("caption")
@user_errors
def bias_caption_command(
    run_dir: RunDir,
    attack: Attack,
    source: Source,
    captioner: Annotated[str, typer.Option(help="Captioner, e.g. toy-blip-cap.")],
    seed: Seed = 0,
    target_concept: Annotated[
        str | None, typer.Option(help="Concept a targeted attack tries to insert.")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per generate call.")] = 32,
    device: Device = "cpu",
) -> None:
    """Caption change, world-attribute insertions/deletions and metric drop under attack."""
    from robust.harness.bias import cache_caption_bias

    with progress_bar() as bar:
        report = cache_caption_bias(
            run_dir,
            attack,
            source,
            captioner,
            seed=seed,
            target_concept=target_concept,
            batch_size=batch_size,
            device=device,
            progress=RichProgress(bar),
        )
    table = Table(title=f"{captioner}: captions on clean vs adversarial images")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in report.metrics.items():
        table.add_row(name, f"{value:.3f}")
    console.print(table)
    console.print(f"results: {run_dir / 'results.sqlite'} (run {report.run_id})", highlight=False)


@defenses_app.command("list")
@user_errors
def defenses_list_command() -> None:
    """The defense names a spec's `defenses.names` accepts."""
    from robust.defenses import parse_defense

    table = Table(title="Input defenses")
    for column in ("example", "differentiable", "randomized", "adaptive attack uses"):
        table.add_column(column)
    for example in ("jpeg-q75", "bits-4", "gauss-5", "median-3", "resize-pad-1.15"):
        defense = parse_defense(example)
        uses = "BPDA" if not defense.differentiable else "gradients"
        if defense.randomized:
            uses += " + EOT"
        table.add_row(example, str(defense.differentiable), str(defense.randomized), uses)
    console.print(table)


@defenses_app.command("show")
@user_errors
def defenses_show_command(run_dir: RunDir) -> None:
    """Clean cost beside undefended, non-adaptive and adaptive R@1 ASR of a matrix run."""
    from robust.harness.results import stored_defense_table

    layout, rows = stored_defense_table(run_dir)
    print_defense_tables(layout.dataset, layout.defenses, rows)


def print_defense_tables(dataset: str, defenses: Sequence[str], rows: Sequence[DefenseRow]) -> None:
    """One table per defense: clean cost, undefended, non-adaptive and adaptive R@1 ASR."""
    for defense in defenses:
        table = Table(
            title=f"{defense} on {dataset}: R@1 %, TR / IR",
            caption="cost = undefended - defended clean R@1; ASR (SGA convention) on the "
            "undefended target, then on the defended one with the undefended source's examples "
            "(non-adapt) and with examples crafted through the defense (adaptive)",
        )
        table.add_column("attack: source -> target", no_wrap=True)
        for column in ("clean", "cost", "ASR", "non-adapt", "adaptive"):
            table.add_column(column, justify="right")
        for row in rows:
            if row.defense != defense:
                continue
            table.add_row(
                f"{row.attack}: {row.source} -> {row.target}",
                f"{_percent(row.clean_tr_r1)} / {_percent(row.clean_ir_r1)}",
                f"{_percent(row.cost_tr_r1)} / {_percent(row.cost_ir_r1)}",
                f"{_percent(row.undefended_tr_asr)} / {_percent(row.undefended_ir_asr)}",
                f"{_percent(row.tr_asr)} / {_percent(row.ir_asr)}",
                f"{_percent(row.adaptive_tr_asr)} / {_percent(row.adaptive_ir_asr)}",
            )
        console.print(table)
