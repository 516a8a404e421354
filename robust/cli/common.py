"""What every command shares: the typer app, consoles, progress bars, error handling, tables.

User-facing errors (`RobustError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgressBar
from rich.table import Table

from robust.data.world import ZOO_WORLD
from robust.errors import RobustError

if TYPE_CHECKING:
    from robust.harness.calibration import Band
    from robust.harness.results import MatrixTables

app = typer.Typer(
    help="vlp-robust: adversarial-robustness evaluation for vision-language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Piped output (make demo's log, CI) has no terminal width; rich would assume 80 columns and
# truncate victim names, so tables get room for them there.
PIPED_WIDTH = 140
console = Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)
error_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DatasetOption = Annotated[
    str,
    typer.Option(
        help=f"{ZOO_WORLD} (the zoo's world; its test-1k), VERSION:SPLIT, or karpathy:ROOT:JSON."
    ),
]
# the split the shipped zoo was trained on: the default for what fits or trains on images
ZOO_TRAIN = f"{ZOO_WORLD}:train"


class RichProgress:
    """Renders library progress tasks as rich progress bars on stderr."""

    def __init__(self, bar: RichProgressBar) -> None:
        self._bar = bar

    def task(self, description: str, total: int) -> _RichTask:
        return _RichTask(self._bar, description, total)


class _RichTask:
    def __init__(self, bar: RichProgressBar, description: str, total: int) -> None:
        self._bar = bar
        self._description = description
        self._total = total
        self._id: Any = None

    def __enter__(self) -> _RichTask:
        self._id = self._bar.add_task(self._description, total=self._total)
        return self

    def advance(self, amount: int = 1) -> None:
        self._bar.advance(self._id, amount)

    def __exit__(self, *exc_info: object) -> None:
        self._bar.remove_task(self._id)


def progress_bar() -> RichProgressBar:
    """Bars for work that takes more than a second; transient so tables stay readable.

    Off when stderr is not a terminal: there a transient bar draws nothing but leaves an
    empty line, which would stand before a one-line error.
    """
    return RichProgressBar(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=error_console,
        transient=True,
        disable=not error_console.is_terminal,
    )


def user_errors(command: F) -> F:
    """Turn a RobustError into one clear line and exit code 2; nothing else is swallowed."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except RobustError as error:
            error_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def print_retrieval_table(title: str, rows: list[dict]) -> None:
    """Print per-victim R@K rows as percentages."""
    from robust.eval.retrieval import METRIC_NAMES

    table = Table(title=title)
    table.add_column("victim", style="bold")
    table.add_column("scoring")
    for metric in METRIC_NAMES:
        table.add_column(metric.replace("_", " ").upper(), justify="right")
    for row in rows:
        scoring = "ITC" if row["scoring"] == "itc" else "ITM re-ranked"
        table.add_row(row["victim"], scoring, *(f"{100 * row[m]:.1f}" for m in METRIC_NAMES))
    console.print(table)


def print_asr_matrix(result: MatrixTables, label: str) -> None:
    """One attack's transfer matrix: sources x targets, "TR / IR" R@1 ASR in %, white-box
    cells and headline scorings as `robust.harness.results` decided them."""

    def percent(value: float, spread: float = float("nan")) -> str:
        if value != value:  # nan: no clean-correct query
            return "-"
        return f"{100 * value:.1f}" if spread != spread else f"{100 * value:.1f}±{100 * spread:.1f}"

    scorings = {"itc": "ITC", "rerank": "ITM re-ranked"}
    spread = any(value == value for value in result.tr_asr_spread[label].flat)  # not all nan
    table = Table(
        title=f"{label}: R@1 ASR, TR / IR (%)",
        caption="SGA convention; * white-box; - no query right on clean data; "
        + ("mean ± standard deviation over seeds; " if spread else "")
        + ", ".join(f"{t}: {scorings.get(s, s)}" for t, s in result.headline_scoring.items()),
    )
    table.add_column("source \\ target", style="bold")
    for target in result.targets:
        table.add_column(target, justify="right")
    for s, source in enumerate(result.sources):
        cells = []
        for t in range(len(result.targets)):
            tr = percent(result.tr_asr[label][s, t], result.tr_asr_spread[label][s, t])
            ir = percent(result.ir_asr[label][s, t], result.ir_asr_spread[label][s, t])
            text = f"{tr} / {ir}"
            cells.append(f"[bold]{text}*[/]" if result.white_box[s, t] else text)
        table.add_row(source, *cells)
    console.print(table)


def print_calibration_bands(result: MatrixTables, bands: list[Band]) -> None:
    """Each band of the published attack pattern beside the worst cell the matrix measured."""
    table = Table(title=f"World calibration ({result.dataset}:{result.split}, TR R@1 ASR %)")
    for column in ("band", "measured", "where", "verdict"):
        table.add_column(column)
    for band in bands:
        verdict = "[green]holds[/]" if band.passed else "[red]missed[/]"
        table.add_row(band.rule, f"{band.measured:g}", band.where, verdict)
    console.print(table)
