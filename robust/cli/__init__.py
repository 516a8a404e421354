"""The `robust` command: parses arguments, calls library functions, prints results.

Each module registers its commands on the shared typer app; every command is a thin wrapper.
"""

import robust.cli.anyattack  # noqa: F401  (registers its commands)
from robust.cli import core  # noqa: F401  (registers its commands)
from robust.cli.common import app


def main() -> None:
    """Entry point for `python -m robust`."""
    app()


__all__ = ["app", "main"]
