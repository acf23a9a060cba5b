"""DSSRA per-round solve time (docs/design.md §7: ≤ 50 ms for N = 3, K = 6, J = 4, L = 12 on the CPU).

Settings: `paper-bert` (N = 3, K = 6, J = 4, L = 12) and a larger one (N = 16, K = 10, J = 8,
L = 24). The presets' model-derived upload (θ^enc ≈ 2.7 Gbit for BERT-base) cannot meet
E_n^max = 10 J at any power (C11' infeasible, reported as such), so the timed scenarios raise
E_n^max to 1000 J; everything else is the preset's. Times are host wall-clock per round
(Sub-1 fronts + Alg. 4 alternation + constraint check), over fresh random draws, with the
queues evolving as in a real run; the first round (imports, caches) is excluded.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import write_record


def time_rounds(scenario, rounds: int, seed: int = 0, **kw) -> dict:
    from collapipe_jax.scenario import draw_state, round_key
    from collapipe_jax.scheduling import dssra as ds
    from collapipe_jax.scheduling import lyapunov as lyap

    lyapunov = kw.pop("lyapunov", "drift")
    variant = kw.pop("variant", "paper")
    states = [draw_state(scenario, round_key(seed, t)) for t in range(rounds + 1)]
    Y = np.zeros(scenario.N)
    times, sub1 = [], []
    for t, state in enumerate(states):
        problem = ds.round_problem(scenario, state, variant, lyapunov=lyapunov)
        start = time.perf_counter()
        fronts = ds.solve_fronts(problem, kw.get("solver", "exact"), kw.get("m_rule", "stationary"))
        mid = time.perf_counter()
        res = ds.dssra_round(problem, Y, fronts=fronts, **kw)
        end = time.perf_counter()
        if t > 0:
            times.append(end - start)
            sub1.append(mid - start)
        Y = lyap.update_queues(Y, res.Gamma, scenario.Gamma_max)
    ms = 1e3 * np.asarray(times)
    return {
        "rounds": rounds,
        "median_ms": float(np.median(ms)), "mean_ms": float(np.mean(ms)), "p90_ms": float(np.percentile(ms, 90)),
        "max_ms": float(np.max(ms)), "sub1_median_ms": float(np.median(1e3 * np.asarray(sub1))),
    }


def main() -> None:
    from collapipe_jax.scenario import scenario_from_model, scenario_preset

    bert = scenario_preset("paper-bert").replace(E_max_n_j=1e3)
    large = bert.replace(N=16, K=10, J=8, L=24)
    # the model's own per-TEB FLOPs (≈ 0.9 GFLOP per sample) instead of Table II's 2e6: compute
    # matters, m > 1 pays off and Alg. 2 explores more micro-batch counts (the harder case)
    compute = scenario_from_model("paper-bert", o_from_model=True, E_max_n_j=1e3)
    record = {"note": "paper-bert with E_max_n = 1000 J (the preset's C11' is infeasible); host CPU wall time; "
                      "'model FLOPs' also uses o_l, o'_l from the model config"}
    cases = [
        ("paper-bert", bert, 30, {}),
        ("paper-bert lyapunov=paper", bert, 15, {"lyapunov": "paper"}),
        ("paper-bert model FLOPs", compute, 30, {}),
        ("paper-bert model FLOPs variant=consistent", compute, 30, {"variant": "consistent"}),
        ("paper-bert solver=milp", bert, 3, {"solver": "milp"}),
        ("large N=16 K=10 J=8 L=24", large, 3, {}),
        ("large N=16 K=10 J=8 L=24 variant=consistent", large, 3, {"variant": "consistent"}),
    ]
    for name, scenario, rounds, kw in cases:
        result = time_rounds(scenario, rounds, **dict(kw))
        record[name] = result
        print(f"{name:44s} median {result['median_ms']:9.2f} ms  p90 {result['p90_ms']:9.2f} ms  "
              f"(Sub-1 {result['sub1_median_ms']:.2f} ms) over {rounds} rounds", flush=True)
    target = record["paper-bert"]["median_ms"]
    record["target_ms"] = 50.0
    record["meets_target"] = bool(target <= 50.0)
    print(f"paper-bert median {target:.2f} ms per round, target <= 50 ms: "
          f"{'met' if target <= 50 else 'NOT met'}")
    write_record("dssra", record)


if __name__ == "__main__":
    main()
