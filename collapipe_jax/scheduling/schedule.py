"""`collapipe schedule`: run DSSRA or a baseline policy for T rounds (docs/design.md §6).

Each round is `host_round.run_host_round` (draw → policy → charge → queues). JSON keys (stable):
`rounds[T]` each with `inputs` (that round's draws and decision, the keys of `latency`),
per-cluster lists `S, m, delta, order, channel, p_n_w, tau_pipe_s, tau_up_s`, the split of
τ^pipe into on-device computation and D2D `tau_pipe_cmp_s, tau_pipe_dd_s` with the round's
largest of each part `round_cmp_s, round_dd_s, round_up_s` (system.report.time_split),
`violations` (constraints the decision breaks: only the fixed `default` rule can), and
`tau_round_s, Y` (the queues the decision was made with), `Y_next, Gamma, solve_ms`;
and `total_latency_s`, `total_cmp_s` (Σ_t round_cmp_s: the accumulated on-device computation
time of Fig. 7/8), `total_up_s` (Σ_t round_up_s) and `violating_rounds`.

With `--seeds A:B` (or `--engine device`) one independent schedule runs per seed in [A, B)
(`run_schedule_seeds`), on the host (a loop over `run_schedule`) or on the device engine
(`scheduling/device/run.py`: every seed at once, the rounds scanned): `{"runs": [{"seed",
"total_latency_s", "total_cmp_s", "total_dd_s", "total_up_s", "final_Y", "max_Y", "violations",
"infeasible"}], "engine", "device", "seconds", "summary"}`, each run's `rounds` with
`--per-round`. A seed whose round has no feasible decision reports `infeasible` (constraint,
cluster, round) and the others go on.

`--policy FILE.py:FUNCTION` (or package.module:function) runs a user's JAX rule on either engine
(`user_policy.py`, docs/extending.md): what its decisions break is reported in `violations`,
checked against C1–C11' on every round.

`ScheduleConfig` is read without JAX (`collapipe schedule --help` is built from it):
`run_schedule` imports the scheduler.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from collapipe_jax.choices import (LYAPUNOV_VARIANTS, M_RULES, SCHEDULER_POLICIES, SEGMENT_SOLVERS, TUNABLE_HELP,
                                   VARIANTS)
from collapipe_jax.errors import InfeasibleError, ValidationError
from collapipe_jax.options import FLOAT32_MAX, SEED_MAX, check_fields, check_float, check_int, check_seed, option
from collapipe_jax.stats import mean_ci95

if TYPE_CHECKING:
    from collapipe_jax.scenario import Scenario


ENGINES = ("host", "device")
MAX_SEEDS = 1 << 24  # a batch of seeds is held whole in memory (per seed: totals and final queues)
MAX_SEED_ROUNDS = 1_000_000  # --per-round keeps seeds × rounds records


def parse_seeds(text: str) -> range:
    """'A:B' → range(A, B): 0 <= A < B <= SEED_MAX + 1, at most MAX_SEEDS seeds."""
    parts = str(text).split(":")
    ok = len(parts) == 2 and all(p.isascii() and p.isdigit() and len(p) <= 12 for p in parts)
    if ok:
        a, b = int(parts[0]), int(parts[1])
        ok = 0 <= a < b <= SEED_MAX + 1 and b - a <= MAX_SEEDS
    if not ok:
        raise ValidationError("seeds", f"must be A:B with integers 0 <= A < B <= {SEED_MAX + 1} and at most "
                                       f"{MAX_SEEDS} seeds", text)
    return range(a, b)


def check_policy_name(policy: str) -> None:
    """A registry name or a user rule's FILE.py:FUNCTION / package.module:function (loaded when
    the run starts: this module imports no JAX)."""
    if policy not in SCHEDULER_POLICIES and ":" not in policy:
        raise ValidationError("policy", f"must be one of {list(SCHEDULER_POLICIES)}, or a rule of yours as "
                                        "FILE.py:FUNCTION or package.module:function", policy)


def host_policy(policy: str, scenario: Scenario, variant: str = "paper", lyapunov: str = "drift"):
    """The host context's policy: the registry name, or the user's rule loaded and its shapes
    and dtypes checked on the scenario before the first round (`user_policy`)."""
    if ":" not in policy:
        return policy
    from collapipe_jax.scheduling.device.problem import EngineConfig
    from collapipe_jax.scheduling.user_policy import check_policy_shapes, load_policy

    rule = load_policy(policy)
    check_policy_shapes(rule, scenario, EngineConfig.of(scenario, variant=variant, lyapunov=lyapunov))
    return rule


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    rounds: int = option(100, "number of rounds T")
    V: float | None = option(None, "Lyapunov weight V (default: the scenario's)")
    policy: str = option("dssra", f"scheduling policy: {'|'.join(SCHEDULER_POLICIES)} (uniform = CollaPipe w/o "
                                  "segment scheduling, default = no optimisation), or your own JAX rule as "
                                  "FILE.py:FUNCTION or package.module:function (docs/extending.md)")
    variant: str = option("paper", "system model: Eq. 15 as printed (paper) or b̂-scaled with the exact GPipe "
                                   "makespan (consistent)", choices=VARIANTS)
    lyapunov: str = option("drift", "per-round objective: V τ + Σ Y Γ (drift) or Eq. 32's V τ + Σ Y (S + p) (paper)",
                           choices=LYAPUNOV_VARIANTS)
    solver: str = option("exact", "Sub-1 segment solver: exact enumeration/DP or the paper's MILP (HiGHS)",
                         choices=SEGMENT_SOLVERS)
    m_rule: str = option("stationary", "micro-batches by Eq. 38's stationary point (Alg. 2) or by trying every m",
                         choices=M_RULES)
    tunable: str | None = option(None, TUNABLE_HELP)
    seed: int = option(0, "seed of the random draws", cli=False)
    engine: str = option("host", "where the decisions are made: the host solvers (NumPy/cvxpy, the reference) or "
                                 "the device engine (JAX: every seed at once, rounds scanned)", choices=ENGINES)
    seeds: str | None = option(None, "run one independent schedule per seed in [A, B), as A:B (replaces --seed)")
    per_round: bool = option(False, "with --seeds or --engine device: each run's rounds in the JSON")
    dtype: str = option("float64", "device engine precision: float64 equals the host solvers, float32 is "
                                   "what accelerators run fastest", choices=("float64", "float32"))
    progress: bool = option(True, "progress bar on stderr (shown from 20 rounds)", off_help="hide the progress bar")
    include_inputs: bool = option(True, "each round's resolved inputs in the result", cli=False)

    def __post_init__(self):
        check_fields(self)
        check_policy_name(self.policy)
        check_int("rounds", self.rounds)
        check_float("V", self.V, low=0.0, optional=True)
        check_seed("seed", self.seed)
        if self.tunable is not None:
            from collapipe_jax.scenario import tunable_rank

            tunable_rank(self.tunable)
        if self.seeds is not None:
            parse_seeds(self.seeds)
        if self.engine != "device" and self.dtype != "float64":  # the host solvers compute in float64 only
            raise ValidationError("dtype", "applies to the device engine only (--engine device); the host engine "
                                           "computes in float64", self.dtype)

    def seed_range(self) -> range:
        return parse_seeds(self.seeds) if self.seeds is not None else range(self.seed, self.seed + 1)


def run_schedule(scenario: Scenario, cfg: ScheduleConfig = ScheduleConfig(), losses=None) -> dict:
    """Run `cfg.policy` for `cfg.rounds` rounds of seed `cfg.seed` on the host; returns the
    JSON-able result of `collapipe schedule`: per round the decision, τ(t) (Eq. 26), Γ_n (Eq. 28)
    and the queues Y(t) → Y(t+1) (Eq. 29); `total_latency_s` = Σ_t τ(t).

    `losses`: fixed per-cluster losses handed to the policy every round (loss-only), else none.
    """
    from collapipe_jax.scenario import check_rounds
    from collapipe_jax.scheduling.host_round import HostContext, run_host_round
    from collapipe_jax.system.report import inputs_dict

    check_rounds(scenario, cfg.rounds)
    if cfg.tunable is not None:
        scenario = scenario.replace(tunable=cfg.tunable)
    policy = host_policy(cfg.policy, scenario, cfg.variant, cfg.lyapunov)
    ctx = HostContext(scenario, policy, cfg.seed, cfg.variant, cfg.lyapunov, cfg.V, cfg.solver, cfg.m_rule)
    Y = np.zeros(scenario.N)
    out_rounds = []
    bar = tqdm(range(cfg.rounds), desc=f"schedule {cfg.policy}", file=sys.stderr,
               disable=True if not cfg.progress or cfg.rounds < 20 else None)
    for t in bar:
        hr = run_host_round(ctx, t, Y, losses)
        res, metrics = hr.result, hr.metrics
        record = {
            "round": t,
            "S": [p.S for p in res.plans],
            "m": [p.m for p in res.plans],
            "delta": [list(p.delta) for p in res.plans],
            "order": [list(p.order) for p in res.plans],
            "channel": [int(c) if c >= 0 else None for c in res.channel],
            "p_n_w": [float(p) for p in res.p_n_w],
            "tau_pipe_s": np.asarray(metrics.tau_pipe_s, float).tolist(),
            "tau_up_s": np.asarray(metrics.tau_up_s, float).tolist(),
            **hr.split,  # tau_pipe_cmp_s, tau_pipe_dd_s [N]; round_cmp_s, round_dd_s, round_up_s
            "tau_round_s": float(metrics.tau_round_s),
            "Y": hr.Y.tolist(),
            "Y_next": hr.Y_next.tolist(),
            "Gamma": np.asarray(metrics.Gamma, float).tolist(),
            "objective": res.objective,
            "iterations": res.iterations,
            "fallback": bool(res.fallback),
            "solve_ms": res.solve_ms,
            "violations": hr.violations,
        }
        if cfg.include_inputs:
            record["inputs"] = inputs_dict(scenario, hr.state, hr.decision)
        out_rounds.append(record)
        Y = hr.Y_next
    V = scenario.V if cfg.V is None else float(cfg.V)
    return {
        "policy": cfg.policy, "tunable": scenario.tunable,
        "variant": cfg.variant, "lyapunov": cfg.lyapunov, "solver": cfg.solver,
        "m_rule": cfg.m_rule, "V": V, "seed": cfg.seed, "scenario": scenario.name, "rounds": out_rounds,
        "total_latency_s": float(sum(r["tau_round_s"] for r in out_rounds)),
        "total_cmp_s": float(sum(r["round_cmp_s"] for r in out_rounds)),
        "total_dd_s": float(sum(r["round_dd_s"] for r in out_rounds)),
        "total_up_s": float(sum(r["round_up_s"] for r in out_rounds)),
        "violating_rounds": sum(1 for r in out_rounds if r["violations"]),
        "mean_solve_ms": float(np.mean([r["solve_ms"] for r in out_rounds])),
        "max_Y": float(max(max(r["Y_next"]) for r in out_rounds)),
    }


def run_schedule_seeds(scenario: Scenario, cfg: ScheduleConfig, device_label: str = "") -> dict:
    """One independent schedule per seed of `cfg.seed_range()` on `cfg.engine` (module docstring):
    per seed Σ_t τ(t) (Eq. 26), the final queues (Eq. 29), the constraints broken and the
    infeasible round if any; `summary` the mean Σ_t τ(t) over the feasible seeds with its
    Student-t 95% interval."""
    import time

    from collapipe_jax.scenario import check_rounds

    seeds = cfg.seed_range()
    check_rounds(scenario, cfg.rounds)
    if cfg.per_round and len(seeds) * cfg.rounds > MAX_SEED_ROUNDS:
        raise ValidationError("per-round", f"keeps seeds x rounds records: at most {MAX_SEED_ROUNDS}",
                              len(seeds) * cfg.rounds)
    if cfg.tunable is not None:
        scenario = scenario.replace(tunable=cfg.tunable)
    started = time.perf_counter()
    if cfg.engine == "device":
        runs, device = _device_runs(scenario, cfg, seeds)
    else:
        runs = _host_runs(scenario, cfg, seeds)
        device = "host (NumPy float64)" if ":" not in cfg.policy else "host (the rule jitted on the CPU, float64)"
    totals = [r["total_latency_s"] for r in runs if r["infeasible"] is None]
    V = scenario.V if cfg.V is None else float(cfg.V)
    return {"policy": cfg.policy, "tunable": scenario.tunable, "variant": cfg.variant, "lyapunov": cfg.lyapunov,
            "V": V, "scenario": scenario.name, "rounds_per_run": cfg.rounds, "engine": cfg.engine,
            "device": device_label or device, "seconds": time.perf_counter() - started,
            "summary": seeds_summary(totals, len(runs)), "runs": runs}


def seeds_summary(totals: list[float], n_runs: int) -> dict:
    """Mean total latency over the feasible seeds with its 95% interval (Student-t)."""
    out = {"seeds": n_runs, "feasible": len(totals)}
    if totals:
        mean, lo, hi = mean_ci95(totals)
        out.update(mean_total_latency_s=mean, ci95=[lo, hi])
    return out


def _host_runs(scenario: Scenario, cfg: ScheduleConfig, seeds: range) -> list[dict]:
    runs = []
    for seed in tqdm(seeds, desc=f"schedule {cfg.policy} (host)", file=sys.stderr, unit="seed",
                     disable=True if not cfg.progress or len(seeds) < 4 else None):
        one = dataclasses.replace(cfg, seed=seed, seeds=None, progress=False, include_inputs=False)
        try:
            r = run_schedule(scenario, one)
        except InfeasibleError as err:
            runs.append({"seed": seed, "total_latency_s": None, "total_cmp_s": None, "total_dd_s": None,
                         "total_up_s": None, "final_Y": None, "max_Y": None, "violations": [],
                         "infeasible": {key: err.report.get(key) for key in ("constraint", "cluster", "round")}})
            continue
        counts: dict[str, int] = {}
        for record in r["rounds"]:
            for name in sorted({v["constraint"] for v in record["violations"]}):
                counts[name] = counts.get(name, 0) + 1
        run = {"seed": seed, **{k: r[k] for k in ("total_latency_s", "total_cmp_s", "total_dd_s", "total_up_s",
                                                   "max_Y")},
               "final_Y": r["rounds"][-1]["Y_next"], "violations": [{"constraint": k, "rounds": n}
                                                                    for k, n in counts.items()],
               "infeasible": None}
        if cfg.per_round:
            run["rounds"] = r["rounds"]
        runs.append(run)
    return runs


# Below this V, V·τ overflows float32 only for a round longer than 1e20 s: the check is skipped
OVERFLOW_CHECK_V = FLOAT32_MAX * 1e-20
PROBE_V = 1.0  # a V whose objective cannot overflow: the probe run's


def check_objective_range(scenario: Scenario, cfg: ScheduleConfig, seeds: range, config, result: dict) -> None:
    """In float32 the device rules' objective V·τ + Σ Y Γ is inf once V·τ passes float32's range,
    and an inf objective reads as "no feasible decision": a large V would report feasible seeds
    as infeasible, a wrong result. V enters no constraint (C7, C9', C11'), so a seed infeasible
    at V but feasible at PROBE_V (the same compiled program: V is data) overflowed: refused,
    naming the largest V that seed's latency allows (docs/design.md §8: representable inputs)."""
    from collapipe_jax.scheduling.device import constraints
    from collapipe_jax.scheduling.device.run import run_schedules

    V = scenario.V if cfg.V is None else float(cfg.V)
    infeasible = result["totals"]["code"] != constraints.FEASIBLE
    if cfg.dtype != "float32" or V < OVERFLOW_CHECK_V or not infeasible.any():
        return
    probe = run_schedules(scenario, cfg.policy, np.arange(seeds.start, seeds.stop), cfg.rounds, config, V=PROBE_V,
                          dtype=cfg.dtype)["totals"]
    overflowed = np.flatnonzero(infeasible & (probe["code"] == constraints.FEASIBLE))
    if overflowed.size:
        i = int(overflowed[0])
        total = float(probe["total_latency_s"][i])
        raise ValidationError("V", f"V x round latency overflows float32 in the device engine's objective (seed "
                                   f"{seeds.start + i}: {total:.4g} s over {cfg.rounds} rounds allows V <= "
                                   f"{FLOAT32_MAX / total:.3g}): give a smaller V or --dtype float64", V)


def _device_runs(scenario: Scenario, cfg: ScheduleConfig, seeds: range):
    import jax

    from collapipe_jax.scheduling.device.problem import EngineConfig
    from collapipe_jax.scheduling.device.run import run_schedules, runs_json

    config = EngineConfig.of(scenario, variant=cfg.variant, lyapunov=cfg.lyapunov, m_rule=cfg.m_rule)
    if cfg.solver != "exact":
        raise ValidationError("solver", "the device engine solves Sub-1 exactly (the MILP is host-only)", cfg.solver)
    result = run_schedules(scenario, cfg.policy, np.arange(seeds.start, seeds.stop), cfg.rounds, config,
                           V=cfg.V, per_round=cfg.per_round, dtype=cfg.dtype)
    check_objective_range(scenario, cfg, seeds, config, result)
    devices = jax.devices()
    label = f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), {cfg.dtype}"
    return runs_json(result, seeds, scenario, cfg.per_round), label
