"""`robust report RUN_DIR -o report.pdf`: the robustness report of a finished run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robust.cli.common import app, console, user_errors


@app.command("report")
@user_errors
def report_command(
    run_dir: Annotated[
        Path, typer.Argument(help="Run directory (of robust matrix, eval or demo).")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="PDF to write.")] = Path(
        "report.pdf"
    ),
) -> None:
    """Write the robustness report PDF of a run directory (reads only its stores and cache)."""
    from robust.report import build_report

    summary = build_report(run_dir, output)
    console.print(
        f"wrote {summary.path} ({summary.pages} pages; sections: {', '.join(summary.sections)})",
        highlight=False,
    )
    for _title, note in summary.omitted:
        console.print(f"  {note}", highlight=False)
