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


def device() -> dict:
    """The default JAX backend's devices: kind (e.g. 'NVIDIA H100 80GB HBM3' or 'cpu'), platform, count."""
    import jax

    first = jax.devices()[0]
    return {"kind": first.device_kind, "platform": first.platform, "count": jax.device_count()}


def on_accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def device_sized(cpu: int, accelerator: int) -> int:
    """A batch size for the default backend: `accelerator` on a GPU/TPU, `cpu` on the CPU.

    An accelerator needs far more work per launch to be busy; a CPU-sized batch there measures
    the dispatch overhead, not the device.
    """
    return accelerator if on_accelerator() else cpu


def machine() -> dict:
    import jax

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "device": device(),
        "devices": [str(d) for d in jax.devices()],
    }


def write_record(name: str, record: dict) -> pathlib.Path:
    """Write results/bench/<name>.json atomically, with the machine and its JAX devices."""
    out = pathlib.Path(os.environ.get("COLLAPIPE_BENCH_DIR", "results/bench"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **record}, indent=2))
    os.replace(tmp, path)
    return path
