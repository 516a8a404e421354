"""The `robust` command: parses arguments, calls library functions, prints results.

Each module registers its commands on the shared typer app; every command is a thin wrapper.
"""

from robust.cli import anyattack, bias, core, patch, report  # noqa: F401  (each registers its commands)
from robust.cli.common import app


def main() -> None:
    """Entry point for `python -m robust`."""
    app()


__all__ = ["app", "main"]
