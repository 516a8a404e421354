"""The `robust` command: parses arguments, calls library functions, prints results.

Each module registers its commands on the shared typer app; every command is a thin wrapper.
"""

from robust.cli import (  # noqa: F401  (each registers its commands)
    anyattack,
    bias,
    core,
    patch,
    report,
    specs,
    zeroshot,
)
from robust.cli.common import app


def main() -> None:
    """Entry point for `python -m robust`."""
    app()


__all__ = ["app", "main"]
