"""Run every benchmark and write its JSON under benchmarks/results/."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def main() -> None:
    package = Path(__file__).resolve().parent
    for module in sorted(m.name for m in pkgutil.iter_modules([str(package)])):
        if module.startswith("bench_"):
            importlib.import_module(f"benchmarks.{module}").main()


if __name__ == "__main__":
    main()
