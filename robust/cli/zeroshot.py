"""`robust zeroshot`: clean and APGD-robust zero-shot classification accuracy (RobustVLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from robust.cli.common import RichProgress, app, console, progress_bar, user_errors


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@app.command("zeroshot")
@user_errors
def zeroshot_command(
    victim: Annotated[list[str], typer.Option("--victim", help="Victim name or spec (repeat).")],
    dataset: Annotated[
        str, typer.Option(help="world:SPLIT (world labels) or folder:ROOT (one folder per class).")
    ] = "world:test-1k",
    task: Annotated[
        list[str] | None,
        typer.Option(
            "--task",
            help="Prompt file or shipped name (repeat); default on the world: world-shape, "
            "world-color, world-background.",
        ),
    ] = None,
    eps: Annotated[str, typer.Option(help="L-inf budgets, comma-separated.")] = "2/255,4/255",
    attack: Annotated[str, typer.Option(help="apgd-ce and/or apgd-t, comma-separated.")] = (
        "apgd-ce,apgd-t"
    ),
    steps: Annotated[int, typer.Option(help="APGD iterations.")] = 100,
    limit: Annotated[int | None, typer.Option(help="Use the first N dataset images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the attacks.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per attack batch.")] = 64,
    out: Annotated[Path, typer.Option(help="Run directory for the results store.")] = Path(
        "runs/zeroshot"
    ),
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Zero-shot accuracy of each victim per task, clean and under APGD at each eps.

    A world image is correctly classified as any class one of its objects has (see the
    prompt file); re-running the same command into the same --out resumes.
    """
    from robust.harness.zeroshot import ZeroShotRequest, run_zeroshot

    request = ZeroShotRequest(
        victims=tuple(victim),
        dataset=dataset,
        tasks=tuple(task or ()),
        eps=_split_list(eps),
        attacks=_split_list(attack),
        steps=steps,
        seed=seed,
        limit=limit,
        batch_size=batch_size,
    )
    with progress_bar() as bar:
        evaluation = run_zeroshot(request, out, device=device, progress=RichProgress(bar))
    print_zeroshot_table(
        f"Zero-shot accuracy on {dataset} (%), APGD {steps} steps",
        evaluation.attack_labels,
        evaluation.rows,
    )
    console.print(f"results: {out / 'results.sqlite'} (run {evaluation.run_id})", highlight=False)


def print_zeroshot_table(title: str, labels: list[str], rows: list[dict[str, Any]]) -> None:
    """One row per (victim, task): image count, clean and robust accuracy in %."""
    table = Table(title=title, caption="n/a: the attack needs more classes than the task has")
    table.add_column("victim", no_wrap=True)
    table.add_column("task")
    for column in ("images", "clean", *labels):
        table.add_column(column.replace("@eps=", "\n"), justify="right")
    for row in rows:
        cells = [row.get(label) for label in ("clean", *labels)]
        table.add_row(
            row["victim"],
            row["task"],
            str(row["images"]),
            *("n/a" if value is None else f"{100 * value:.1f}" for value in cells),
        )
    console.print(table)
