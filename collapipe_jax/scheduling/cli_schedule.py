"""`collapipe schedule`: run DSSRA or a baseline policy for T rounds (DESIGN.md §6).

Per round t: draw the channel state (`round_key(seed, t)`), build the host problem, run the
policy with the current queues Y(t), evaluate the decision with the system model
(`collapipe_jax.system.evaluate`), and update the queues with Eq. 29. JSON keys (stable):
`rounds[T]` each with `inputs` (that round's draws and decision, the keys of `latency`),
per-cluster lists `S, m, delta, order, channel, p_n_w, tau_pipe_s, tau_up_s`, and
`tau_round_s, Y` (the queues the decision was made with), `Y_next, Gamma, solve_ms`;
and `total_latency_s`.
"""

from __future__ import annotations

import sys

import numpy as np

from collapipe_jax.errors import InfeasibleError, ValidationError

POLICY_NAMES = ("dssra", "random", "loss-only", "delay-only", "uniform")


def add_arguments(parser) -> None:
    parser.add_argument("--rounds", type=int, default=100, help="number of rounds T (default 100)")
    parser.add_argument("--V", type=float, default=None, help="Lyapunov weight V (default: the scenario's)")
    parser.add_argument("--policy", default="dssra", choices=POLICY_NAMES, help="scheduling policy")
    parser.add_argument("--variant", default="paper", choices=["paper", "consistent"],
                        help="Eq. 15 literally (paper) or with b̂-scaled backward and D2D (consistent)")
    parser.add_argument("--lyapunov", default="drift", choices=["drift", "paper"],
                        help="per-round objective: V τ + Σ Y Γ (drift) or Eq. 32's V τ + Σ Y (S + p) (paper)")
    parser.add_argument("--solver", default="exact", choices=["exact", "milp"],
                        help="Sub-1 segment solver: exact enumeration/DP or the paper's MILP (HiGHS)")
    parser.add_argument("--m-rule", dest="m_rule", default="stationary", choices=["stationary", "exhaustive"],
                        help="micro-batches by Eq. 38's stationary point (Alg. 2) or by trying every m")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")


def run(args) -> tuple[dict, str]:
    from collapipe_jax.scenario import load_scenario

    scenario = load_scenario(args.preset, args.scenario)
    result = run_schedule(scenario, rounds=args.rounds, V=args.V, policy=args.policy, variant=args.variant,
                          lyapunov=args.lyapunov, solver=args.solver, m_rule=args.m_rule, seed=args.seed,
                          progress=args.progress)
    return result, format_schedule(result)


def run_schedule(scenario, rounds: int = 100, V: float | None = None, policy: str = "dssra",
                 variant: str = "paper", lyapunov: str = "drift", solver: str = "exact",
                 m_rule: str = "stationary", seed: int = 0, progress: bool = False, losses=None,
                 include_inputs: bool = True) -> dict:
    """Run `policy` for `rounds` rounds; returns the JSON-able result of `collapipe schedule`."""
    from tqdm import tqdm

    from collapipe_jax.scenario import draw_state, round_key
    from collapipe_jax.scheduling import lyapunov as lyap
    from collapipe_jax.scheduling.baselines import POLICIES
    from collapipe_jax.scheduling.dssra import round_problem
    from collapipe_jax.system import evaluate
    from collapipe_jax.system.report import constraint_violations, inputs_dict

    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValidationError("rounds", "must be an integer >= 1", rounds)
    if policy not in POLICIES:
        raise ValidationError("policy", f"must be one of {list(POLICIES)}", policy)
    if V is not None and not (np.isfinite(V) and V >= 0):
        raise ValidationError("V", "must be a finite number >= 0", V)
    V = scenario.V if V is None else float(V)
    solver_kw = {} if policy == "random" else {"solver": solver, "m_rule": m_rule}
    if policy == "uniform":
        solver_kw = {}
    Y = np.zeros(scenario.N)
    out_rounds = []
    total = 0.0
    bar = tqdm(range(rounds), desc=f"schedule {policy}", file=sys.stderr, disable=True if not progress or rounds < 20 else None)
    for t in bar:
        state = draw_state(scenario, round_key(seed, t))
        problem = round_problem(scenario, state, variant, lyapunov, V)
        rng = np.random.default_rng([seed, t])
        try:
            res = POLICIES[policy](problem, Y, rng, losses, **solver_kw)
        except InfeasibleError as err:
            report = dict(err.report, round=t, policy=policy)
            report["message"] = f"round {t}: {err.report.get('message', err)}"
            raise InfeasibleError(report) from None
        metrics = evaluate(state, res.decision, variant)
        violations = constraint_violations(state, res.decision, metrics)
        gamma = np.asarray(metrics.Gamma, dtype=np.float64)
        Y_next = lyap.update_queues(Y, gamma, scenario.Gamma_max)
        tau_round = float(metrics.tau_round_s)
        total += tau_round
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
            "tau_round_s": tau_round,
            "Y": Y.tolist(),
            "Y_next": Y_next.tolist(),
            "Gamma": gamma.tolist(),
            "objective": res.objective,
            "iterations": res.iterations,
            "fallback": bool(res.fallback),
            "solve_ms": res.solve_ms,
            "violations": violations,
        }
        if include_inputs:
            record["inputs"] = inputs_dict(scenario, state, res.decision)
        out_rounds.append(record)
        Y = Y_next
    return {
        "policy": policy, "variant": variant, "lyapunov": lyapunov, "solver": solver, "m_rule": m_rule,
        "V": V, "seed": seed, "scenario": scenario.name, "rounds": out_rounds, "total_latency_s": total,
        "mean_solve_ms": float(np.mean([r["solve_ms"] for r in out_rounds])),
        "max_Y": float(max(max(r["Y_next"]) for r in out_rounds)),
    }


def format_schedule(result: dict) -> str:
    from collapipe_jax.system.report import format_table

    def join(values, fmt="{}"):
        return ",".join("-" if v is None else fmt.format(v) for v in values)

    rows = [[r["round"], r["tau_round_s"], join(r["S"]), join(r["m"]), join(r["channel"]),
             join(r["p_n_w"], "{:.3g}"), max(r["Y"]), sum(r["Gamma"]), r["solve_ms"]] for r in result["rounds"]]
    table = format_table(["round", "tau[s]", "S", "m", "channel", "p_n[W]", "max Y", "sum Gamma", "solve[ms]"], rows)
    head = (f"scenario {result['scenario']}, policy {result['policy']}, variant {result['variant']}, "
            f"lyapunov {result['lyapunov']}, solver {result['solver']}, V = {result['V']:g}, seed {result['seed']}")
    tail = (f"total latency over {len(result['rounds'])} rounds: {result['total_latency_s']:.6g} s; "
            f"mean solve time {result['mean_solve_ms']:.3g} ms")
    return "\n".join([head, table, tail])
