"""`collapipe compare`: several policies on the same seeds, each change paired seed by seed
(docs/design.md §6).

Every policy runs one independent schedule per seed of `--seeds A:B` (`schedule.run_schedule_seeds`,
on the host or the device engine); two policies on the same seed meet the same draws, so the
change of a policy against the first (the baseline) is taken per seed, (policy − first)/first ×
100, over the seeds feasible for both, and summarised by its mean and Student-t 95% interval
(`sweep.seeded.paired_change`, as the sweeps pair seeds). Each policy's own mean Σ_t τ(t) and
its interval are over its feasible seeds (`schedule.seeds_summary`). A seed counts as infeasible
by its `infeasible` report, never by the value of its total. On the device engine, policies of
the same shapes reuse the compiled programs (`random`, `loss-only` and `delay-only` share one).

JSON (stable): {"baseline", "engine", "device", "seconds", "n", "policies": [{"policy",
"mean_total_latency_s", "ci95", "infeasible_seeds", "vs_baseline_pct": {"mean", "ci95", "n"}}]}
with `vs_baseline_pct` null for the first policy and `mean_total_latency_s`, `ci95` (and the
change's) null where no seed is feasible; plus "scenario", "tunable", "seeds", "rounds_per_run".

This module imports no JAX (the command's help is built from `CompareConfig`).
"""

from __future__ import annotations

import dataclasses
import time

from collapipe_jax.choices import LYAPUNOV_VARIANTS, SCHEDULER_POLICIES, TUNABLE_HELP, VARIANTS
from collapipe_jax.errors import ValidationError
from collapipe_jax.options import check_fields, check_float, check_int, option
from collapipe_jax.scheduling.schedule import ENGINES, ScheduleConfig, check_policy_name, parse_seeds


def parse_policies(text: str) -> list[str]:
    """'A,B,...' → the policy names (registry names or FILE.py:FUNCTION specs), the first the
    baseline; at least one, none twice."""
    names = [p.strip() for p in str(text).split(",")]
    if not names or any(not p for p in names):
        raise ValidationError("policies", "must be a comma-separated list of policies, the first the baseline", text)
    for name in names:
        check_policy_name(name)
    repeated = sorted({p for p in names if names.count(p) > 1})
    if repeated:
        raise ValidationError("policies", f"must name each policy once ({', '.join(repeated)} repeated)", text)
    return names


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    policies: str = option("dssra,random", f"comma-separated policies, the first the baseline: "
                                           f"{'|'.join(SCHEDULER_POLICIES)} or FILE.py:FUNCTION / "
                                           "package.module:function (docs/extending.md)")
    seeds: str = option("0:8", "one independent schedule per seed in [A, B), the same seeds for every policy")
    rounds: int = option(100, "number of rounds T")
    engine: str = option("device", "the device engine (JAX: every seed at once) or the host solvers (the "
                                   "reference)", choices=ENGINES)
    V: float | None = option(None, "Lyapunov weight V (default: the scenario's)")
    variant: str = option("paper", "system model: Eq. 15 as printed (paper) or b̂-scaled with the exact GPipe "
                                   "makespan (consistent)", choices=VARIANTS)
    lyapunov: str = option("drift", "per-round objective: V τ + Σ Y Γ (drift) or Eq. 32's V τ + Σ Y (S + p) (paper)",
                           choices=LYAPUNOV_VARIANTS)
    tunable: str | None = option(None, TUNABLE_HELP)
    dtype: str = option("float64", "device engine precision", choices=("float64", "float32"))

    def __post_init__(self):
        check_fields(self)
        parse_policies(self.policies)
        parse_seeds(self.seeds)
        check_int("rounds", self.rounds)
        check_float("V", self.V, low=0.0, optional=True)
        if self.tunable is not None:
            from collapipe_jax.scenario import tunable_rank

            tunable_rank(self.tunable)


def compare(scenario, policies, seeds="0:8", rounds: int = 100, engine: str = "device", **options) -> dict:
    """Every policy of `policies` (a list, or "A,B,...") on the same seeds ("A:B" or a range);
    per policy the mean Σ_t τ(t) over its feasible seeds with its 95% interval and its infeasible
    seeds, and for each policy after the first the per-seed change against the first in %
    (mean and Student-t 95% interval over the seeds feasible for both). `options`: V, variant,
    lyapunov, tunable, dtype (as `CompareConfig`). Returns the `compare --json` object."""
    if isinstance(seeds, range):
        if seeds.step != 1 or len(seeds) == 0:
            raise ValidationError("seeds", "must be a non-empty range of consecutive seeds", seeds)
        seeds = f"{seeds.start}:{seeds.stop}"
    if not isinstance(policies, str):
        policies = ",".join(policies)
    cfg = CompareConfig(policies=policies, seeds=seeds, rounds=rounds, engine=engine, **options)
    return run_compare(scenario, cfg)


def run_compare(scenario, cfg: CompareConfig) -> dict:
    """`compare` for a parsed `CompareConfig` (module docstring)."""
    import numpy as np

    from collapipe_jax.programs import bound_maps
    from collapipe_jax.scheduling.schedule import run_schedule_seeds, seeds_summary
    from collapipe_jax.sweep.seeded import paired_change

    started = time.perf_counter()
    names = parse_policies(cfg.policies)
    runs, device = {}, ""
    for name in names:
        one = ScheduleConfig(rounds=cfg.rounds, V=cfg.V, policy=name, variant=cfg.variant, lyapunov=cfg.lyapunov,
                             tunable=cfg.tunable, engine=cfg.engine, seeds=cfg.seeds, dtype=cfg.dtype, progress=False)
        result = run_schedule_seeds(scenario, one)
        runs[name], device, tunable = result["runs"], result["device"], result["tunable"]
        bound_maps()  # between policies: release compiled programs once they hold too many memory maps

    def totals(name):  # per seed: the total where feasible (by its flag), NaN elsewhere
        return np.array([np.nan if r["infeasible"] is not None else float(r["total_latency_s"]) for r in runs[name]])

    def feasible(name):
        return np.array([r["infeasible"] is None for r in runs[name]])

    base = names[0]
    out = []
    for name in names:
        ok = feasible(name)
        summary = seeds_summary(totals(name)[ok].tolist(), len(ok))
        record = {"policy": name, "mean_total_latency_s": summary.get("mean_total_latency_s"),
                  "ci95": summary.get("ci95"), "feasible": int(ok.sum()),
                  "infeasible_seeds": [r["seed"] for r in runs[name] if r["infeasible"] is not None],
                  "vs_baseline_pct": None}
        if name != base:
            both = ok & feasible(base)
            change = paired_change(np.nan_to_num(totals(name)), np.nan_to_num(totals(base), nan=1.0), both)
            n = change["n"]
            record["vs_baseline_pct"] = {"mean": change["change_pct"] if n else None,
                                         "ci95": [change["change_pct_lo"], change["change_pct_hi"]] if n else None,
                                         "n": n}
        out.append(record)
    seeds = parse_seeds(cfg.seeds)
    return {"baseline": base, "engine": cfg.engine, "device": device, "seconds": time.perf_counter() - started,
            "n": len(seeds), "scenario": scenario.name, "tunable": tunable, "seeds": cfg.seeds,
            "rounds_per_run": cfg.rounds, "policies": out}


def format_compare(result: dict, format_table) -> str:
    """The table of `collapipe compare`: one row per policy."""
    def interval(ci, fmt):
        return "-" if ci is None else f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]"

    rows = []
    for p in result["policies"]:
        change = p["vs_baseline_pct"]
        rows.append([p["policy"], "-" if p["mean_total_latency_s"] is None else f"{p['mean_total_latency_s']:.6g}",
                     interval(p["ci95"], "{:.6g}"), len(p["infeasible_seeds"]),
                     "baseline" if change is None else "-" if change["mean"] is None else f"{change['mean']:+.3g}",
                     "-" if change is None else interval(change["ci95"], "{:+.3g}")])
    table = format_table(["policy", "mean total latency [s]", "95% interval", "infeasible seeds",
                          "vs baseline [%]", "95% interval [%]"], rows)
    head = (f"scenario {result['scenario']}, tunable {result['tunable']}, seeds {result['seeds']} ({result['n']}), "
            f"{result['rounds_per_run']} rounds per seed, engine {result['engine']} on {result['device']}")
    tail = (f"vs baseline: per seed (policy - {result['baseline']}) / {result['baseline']} x 100, mean and Student-t "
            f"95% interval over the seeds feasible for both; {result['seconds']:.3g} s wall time")
    return "\n".join([head, table, tail])
