"""Settings measured over many seeds on the device engine (`scheduling/device/run.py`).

Every seed is an independent schedule of the same setting (its own draws, (seed, t)); two rules
run on the same seeds meet the same draws, so a change between them is taken seed by seed (a
paired comparison) and summarised by its mean and the Student-t 95% interval of that mean
(`stats.mean_ci95`). A seed on which either rule met a round with no feasible decision is left
out of a comparison (and counted).
"""

from __future__ import annotations

import jax
import numpy as np

from collapipe_jax.scheduling.device.problem import EngineConfig
from collapipe_jax.scheduling.device.run import ACCELERATOR_CHUNK, CPU_CHUNK, run_schedules
from collapipe_jax.stats import mean_ci95

# quick: 128 seeds, which keeps every claim's n ≥ 100. The claims are changes paired seed by seed;
# over 256 seeds the widest 95% intervals relative to their change were fig7-vs-vanillafl's
# +0.035 ± 0.010% and the abstract's (lora, paper) −0.84 ± 0.16%; half the seeds widen an interval
# by about √2, which still excludes zero, and every claim's mean sits many half-widths from the
# factor-two rule's bounds. Seeds 0…127 are a subset of those 256, with the same values.
SEEDS = {"quick": 128, "paper": 10_000}
DTYPE = "float64"  # the host solvers' precision: decisions equal the reference's
# the per-round arrays every seeded sweep keeps: one set, so that sweeps running the same rule on
# the same shape share its compiled program
KEEP = ("charged", "tau_round_s", "round_cmp_s", "round_up_s", "Y_next", "Gamma", "S", "m", "broken")


def block_of(count: int, chunk: int | None = None, devices: int | None = None) -> tuple[int, int]:
    """(seeds per call, seeds per chunk) for a batch of `count` seeds: one chunk per device per
    call. A compiled program's input shape is its number of chunks, so a rule run on 64, 256 or
    768 seeds (3 V values tiled) would compile once per count; in calls of one fixed block it
    compiles once. The chunk is the engine's (64 on a CPU, 8,192 on an accelerator), on an
    accelerator shrunk to the power of two that holds the batch, so that a small batch does not
    pay for 8,192 seeds and batches of nearby sizes still share a program."""
    devices = devices or len(jax.devices())
    if chunk is None:
        chunk = CPU_CHUNK if jax.default_backend() == "cpu" else ACCELERATOR_CHUNK
    per_device = -(-max(count, 1) // devices)
    chunk = min(chunk, 1 << (per_device - 1).bit_length())
    return devices * chunk, chunk


def run_seeds(scenario, policy: str, seeds, rounds: int, V=None, keep=KEEP, chunk: int | None = None,
              **config) -> dict:
    """Every seed's schedule of one rule: `run_schedules` with the engine configured from the
    scenario and `config` (variant, lyapunov, uploads_model, …), in calls of one block of seeds
    (`block_of`; the last block padded with its last seed, whose copies are cut off)."""
    engine = EngineConfig.of(scenario, **config)
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    count = seeds.size
    V = np.broadcast_to(np.asarray(scenario.V if V is None else V, np.float64), (count,))
    block, chunk = block_of(count, chunk)
    parts = []
    for start in range(0, count, block):
        rows = np.minimum(np.arange(start, start + block), count - 1)
        part = run_schedules(scenario, policy, seeds[rows], rounds, engine, V=V[rows], per_round=tuple(keep),
                             dtype=DTYPE, chunk=chunk)
        part.pop("violation_names", None)  # a user rule's constraint names (strings, not per seed)
        parts.append(part)
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:count], *parts)


def feasible(result: dict) -> np.ndarray:
    """Per seed: every round had a feasible decision."""
    return np.asarray(result["totals"]["code"]) == 0


def interval(name: str, values) -> dict:
    """{name: mean, name_lo, name_hi} of per-seed values (NaN-free)."""
    values = np.asarray(values, float)
    if values.size == 0:
        return {name: float("nan"), f"{name}_lo": float("nan"), f"{name}_hi": float("nan")}
    mean, lo, hi = mean_ci95(values)
    return {name: mean, f"{name}_lo": lo, f"{name}_hi": hi}


def paired_change(value, base, ok) -> dict:
    """The per-seed change (value − base)/base in % over the seeds in `ok`: n, mean, lo, hi."""
    value, base, ok = (np.asarray(x) for x in (value, base, ok))
    change = 100.0 * (value[ok] / base[ok] - 1.0)
    return {"n": int(ok.sum()), **interval("change_pct", change)}


def accumulated(tau_round, charged) -> dict:
    """Per round: the mean accumulated latency Σ_{s ≤ t} τ(s) over the seeds that were charged
    through round t, with its 95% interval ({cum_latency_s, _lo, _hi} arrays [T] and n [T])."""
    tau = np.where(charged, np.asarray(tau_round, float), 0.0)
    cum = np.cumsum(tau, axis=1)
    alive = np.cumprod(charged, axis=1).astype(bool)
    T = tau.shape[1]
    out = {"cum_latency_s": np.full(T, np.nan), "cum_latency_lo": np.full(T, np.nan),
           "cum_latency_hi": np.full(T, np.nan), "n": alive.sum(axis=0)}
    for t in range(T):
        if alive[:, t].any():
            out["cum_latency_s"][t], out["cum_latency_lo"][t], out["cum_latency_hi"][t] = mean_ci95(cum[alive[:, t], t])
    return out
