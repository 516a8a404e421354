"""Child process of `peak_memory_in_fresh_process`: set up, then measure one call's peak RSS."""

from __future__ import annotations

import importlib
import json
import sys

from benchmarks.common import peak_memory_delta


def main() -> None:
    module_name, _, function_name = sys.argv[1].partition(":")
    setup = getattr(importlib.import_module(module_name), function_name)
    measured = setup(*sys.argv[2:])
    _, peak = peak_memory_delta(measured)
    print(json.dumps({"peak_mb": peak / 2**20}))


if __name__ == "__main__":
    main()
