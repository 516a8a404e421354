"""Timing, peak-memory and result-writing helpers shared by the benchmarks."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robust.provenance import collect_provenance

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOY_ALBEF = "toy-albef"
TOY_ALBEF_STAND_IN = "toy-albef architecture (random weights)"


def toy_albef_or_stand_in():
    """The shipped toy-albef, or until it ships a seeded random ALBEF of its recipe's
    architecture and vocab: speed and memory do not depend on the weights."""
    import tempfile

    import torch

    from robust.victims.albef import AlbefModel, AlbefVictim
    from robust.victims.registry import KNOWN_VICTIMS, load_victim, weights_present
    from robust.zoo.train_albef import albef_recipe_for
    from robust.zoo.warm_start import masked_lm_state

    if weights_present(KNOWN_VICTIMS[TOY_ALBEF]):
        return load_victim(TOY_ALBEF)
    recipe = albef_recipe_for(TOY_ALBEF)
    _, tokens = masked_lm_state(recipe.text_init)
    vocab = Path(tempfile.mkdtemp()) / "vocab.txt"
    vocab.write_text("".join(f"{token}\n" for token in tokens))
    torch.manual_seed(0)
    return AlbefVictim(TOY_ALBEF_STAND_IN, AlbefModel(recipe.model_config()), vocab).eval()


def best_time(function: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of `repeats` wall-clock runs, in seconds (least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def peak_memory_delta(function: Callable[[], Any], interval: float = 0.005) -> tuple[Any, int]:
    """Run `function` and return (its result, peak resident memory above the start, bytes)."""
    baseline = _rss_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = function()
    finally:
        done.set()
        sampler.join()
    return result, max(0, max(peak, _rss_bytes()) - baseline)


def peak_memory_in_fresh_process(target: str, *args: str) -> float:
    """Peak resident-memory growth (MB) of `module:function(*args)` run in a new interpreter.

    A fresh process keeps earlier allocations (which the allocator would silently reuse)
    out of the measurement. The function runs once to set up; the probe measures the call
    of the callable it returns.
    """
    command = [sys.executable, "-m", "benchmarks.memory_probe", target, *args]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(json.loads(output.strip().splitlines()[-1])["peak_mb"])


def write_result(name: str, payload: dict) -> Path:
    """Write one benchmark's JSON (with provenance) to benchmarks/results/NAME.json."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {"benchmark": name, "provenance": collect_provenance(), **payload}
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path
