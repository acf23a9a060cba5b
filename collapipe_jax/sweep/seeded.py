"""Settings measured over many seeds on the device engine (`scheduling/device/run.py`).

Every seed is an independent schedule of the same setting (its own draws, (seed, t)); two rules
run on the same seeds meet the same draws, so a change between them is taken seed by seed (a
paired comparison) and summarised by its mean and the Student-t 95% interval of that mean
(`stats.mean_ci95`). A seed on which either rule met a round with no feasible decision is left
out of a comparison (and counted).
"""

from __future__ import annotations

import numpy as np

from collapipe_jax.scheduling.device.problem import EngineConfig
from collapipe_jax.scheduling.device.run import run_schedules
from collapipe_jax.stats import mean_ci95

SEEDS = {"quick": 256, "paper": 10_000}
DTYPE = "float64"  # the host solvers' precision: decisions equal the reference's
# the per-round arrays every seeded sweep keeps: one set, so that sweeps running the same rule on
# the same shape share its compiled program
KEEP = ("charged", "tau_round_s", "round_cmp_s", "round_up_s", "Y_next", "Gamma", "S", "m", "broken")


def run_seeds(scenario, policy: str, seeds, rounds: int, V=None, keep=KEEP, **config) -> dict:
    """Every seed's schedule of one rule: `run_schedules` with the engine configured from the
    scenario and `config` (variant, lyapunov, uploads_model, …)."""
    engine = EngineConfig.of(scenario, **config)
    return run_schedules(scenario, policy, seeds, rounds, engine, V=V, per_round=tuple(keep), dtype=DTYPE)


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
