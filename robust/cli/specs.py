"""`robust specs [NAME]`: the experiment specs and zero-shot prompt files shipped in the package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from robust.cli.common import app, console, user_errors
from robust.errors import RobustError

SUMMARY_CHARS = 100


def _summary(path: Path) -> str:
    """The start of a shipped file's leading comment, which says what it is for."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 3].rstrip() + "..."


@app.command("specs")
@user_errors
def specs_command(
    name: Annotated[
        str | None,
        typer.Argument(help="Print this shipped file (copy it: robust specs NAME > mine.yaml)."),
    ] = None,
) -> None:
    """List the shipped experiment specs (`robust matrix NAME`) and zero-shot prompt files
    (`robust zeroshot --task NAME`), or print one of them."""
    from robust.resources import PROMPTS, SPECS, shipped_files

    if name is not None:
        shipped = {**shipped_files(SPECS), **shipped_files(PROMPTS)}
        path = shipped.get(name.replace("_", "-"))
        if path is None:
            raise RobustError(
                f"no shipped spec or prompt file is named {name!r}; shipped: {', '.join(shipped)}"
            )
        typer.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    for kind, title, use in (
        (SPECS, "Shipped experiment specs", "robust matrix NAME"),
        (PROMPTS, "Shipped zero-shot prompt files", "robust zeroshot --task NAME"),
    ):
        table = Table(title=f"{title} ({use})")
        for column in ("name", "what", "file"):
            table.add_column(column, overflow="fold")
        for shipped, path in shipped_files(kind).items():
            table.add_row(shipped, _summary(path), str(path))
        console.print(table)
