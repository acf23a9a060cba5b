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
from collapipe_jax.options import check_fields, check_float, check_int, check_seed, option

if TYPE_CHECKING:
    from collapipe_jax.scenario import Scenario


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    rounds: int = option(100, "number of rounds T")
    V: float | None = option(None, "Lyapunov weight V (default: the scenario's)")
    policy: str = option("dssra", "scheduling policy (uniform = CollaPipe w/o segment scheduling, "
                                  "default = no optimisation)", choices=SCHEDULER_POLICIES)
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
    progress: bool = option(True, "progress bar on stderr (shown from 20 rounds)", off_help="hide the progress bar")
    include_inputs: bool = option(True, "each round's resolved inputs in the result", cli=False)

    def __post_init__(self):
        check_fields(self)
        check_int("rounds", self.rounds)
        check_float("V", self.V, low=0.0, optional=True)
        check_seed("seed", self.seed)
        if self.tunable is not None:
            from collapipe_jax.scenario import tunable_rank

            tunable_rank(self.tunable)


def run_schedule(scenario: Scenario, cfg: ScheduleConfig = ScheduleConfig(), losses=None) -> dict:
    """Run `cfg.policy` for `cfg.rounds` rounds; returns the JSON-able result of `collapipe schedule`.

    `losses`: fixed per-cluster losses handed to the policy every round (loss-only), else none.
    """
    from collapipe_jax.scenario import check_rounds
    from collapipe_jax.scheduling.host_round import HostContext, run_host_round
    from collapipe_jax.system.report import inputs_dict

    check_rounds(scenario, cfg.rounds)
    if cfg.tunable is not None:
        scenario = scenario.replace(tunable=cfg.tunable)
    ctx = HostContext(scenario, cfg.policy, cfg.seed, cfg.variant, cfg.lyapunov, cfg.V, cfg.solver, cfg.m_rule)
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
        "total_up_s": float(sum(r["round_up_s"] for r in out_rounds)),
        "violating_rounds": sum(1 for r in out_rounds if r["violations"]),
        "mean_solve_ms": float(np.mean([r["solve_ms"] for r in out_rounds])),
        "max_Y": float(max(max(r["Y_next"]) for r in out_rounds)),
    }
