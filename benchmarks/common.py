"""Helpers shared by the benchmarks: timing and result records."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time


def best_time(fn, repeat: int = 5, number: int = 1) -> float:
    """Best wall time of `number` calls of fn(), over `repeat` tries (seconds per call)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def machine() -> dict:
    import jax

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
    }


def write_record(name: str, record: dict) -> pathlib.Path:
    """Write results/bench/<name>.json atomically."""
    out = pathlib.Path(os.environ.get("COLLAPIPE_BENCH_DIR", "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **record}, indent=2))
    os.replace(tmp, path)
    return path
