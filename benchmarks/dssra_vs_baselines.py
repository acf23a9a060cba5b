"""DSSRA's total latency over T rounds against each baseline (paper §VI claims), as JSON.

    python -m benchmarks.dssra_vs_baselines [--rounds 100] [--out results/dssra_vs_baselines.json]

For each preset (paper-bert, paper-transformer) and V ∈ {0.01, 10, 100}, every policy runs the
same seeded draws (`collapipe schedule` semantics: queues start at 0 and follow Eq. 29). The
paper reports DSSRA's latency −7.12 % vs random, −15.48 % vs delay-only and −46.44 % vs
loss-only; the measured change (DSSRA − baseline)/baseline is written next to them, whatever
it is.

The presets as they stand are first tried as they are: with model-derived θ^enc (BERT-base
≈ 2.7 Gbit, Transformer ≈ 0.6 Gbit) no transmit power meets E_n^max = 10 J (C11'), which is
recorded. The comparison then runs on the preset with E_n^max raised (default 1000 J, the only
change), and additionally ("compute-bound") with the model's own per-TEB FLOPs instead of
Table II's o_l = 2e6 and a 1 Mbit upload, where segment scheduling matters more, and for
paper-bert once more with Γ^max = 0.027 (instead of 0.03) so that the queues grow and V
matters. Every override is written into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

PAPER_CLAIMS_PCT = {"random": -7.12, "delay-only": -15.48, "loss-only": -46.44}
POLICIES = ("dssra", "random", "delay-only", "loss-only", "uniform")
V_VALUES = (0.01, 10.0, 100.0)


def scenarios(e_max_n: float):
    from collapipe_jax.scenario import scenario_from_model, scenario_preset

    for preset in ("paper-bert", "paper-transformer"):
        yield preset, "as-is", scenario_preset(preset), {}
        over = {"E_max_n_j": e_max_n}
        yield preset, "E_max_n raised", scenario_preset(preset).replace(**over), over
        over = {"E_max_n_j": e_max_n, "o_from_model": True, "theta_enc_bits": 1e6, "z_enc_bits": 0.0}
        yield preset, "compute-bound", scenario_from_model(preset, name=preset, **over), over
        if preset == "paper-bert":
            # a tighter convergence budget makes the queues bite, so V trades latency against Γ
            over = dict(over, Gamma_max=0.027)
            yield preset, "compute-bound, Gamma_max 0.027", scenario_from_model(preset, name=preset, **over), over


def run(rounds: int, e_max_n: float, seed: int = 0) -> dict:
    from collapipe_jax.errors import InfeasibleError
    from collapipe_jax.scheduling.schedule import ScheduleConfig, run_schedule

    out = {"rounds": rounds, "seed": seed, "paper_claims_pct": PAPER_CLAIMS_PCT, "results": []}
    for preset, label, scenario, overrides in scenarios(e_max_n):
        entry = {"preset": preset, "setting": label, "overrides": overrides}
        if label == "as-is":
            try:
                run_schedule(scenario, ScheduleConfig(rounds=1, policy="dssra", seed=seed, include_inputs=False))
                entry["feasible"] = True
            except InfeasibleError as err:
                entry["feasible"] = False
                entry["infeasible"] = err.report
            out["results"].append(entry)
            print(f"{preset} as-is: {'feasible' if entry['feasible'] else entry['infeasible']['message']}", flush=True)
            if not entry["feasible"]:
                continue
        entry["by_V"] = {}
        for V in V_VALUES:
            row = {}
            for policy in POLICIES:
                start = time.perf_counter()
                res = run_schedule(scenario, ScheduleConfig(rounds=rounds, V=V, policy=policy, seed=seed, include_inputs=False))
                row[policy] = {
                    "total_latency_s": res["total_latency_s"],
                    "mean_Gamma": sum(sum(r["Gamma"]) for r in res["rounds"]) / (rounds * scenario.N),
                    "max_Y": res["max_Y"],
                    "mean_solve_ms": res["mean_solve_ms"],
                    "mean_S": sum(sum(r["S"]) for r in res["rounds"]) / (rounds * scenario.N),
                    "violations": sum(len(r["violations"]) for r in res["rounds"]),
                    "wall_s": time.perf_counter() - start,
                }
            d = row["dssra"]["total_latency_s"]
            row["dssra_change_pct"] = {p: 100.0 * (d - row[p]["total_latency_s"]) / row[p]["total_latency_s"]
                                       for p in POLICIES if p != "dssra"}
            entry["by_V"][str(V)] = row
            print(f"{preset:18s} {label:15s} V={V:<6g} DSSRA {d:12.6g} s  change vs "
                  + ", ".join(f"{p} {c:+.2f}%" for p, c in row["dssra_change_pct"].items()), flush=True)
        out["results"].append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--E-max-n", dest="e_max_n", type=float, default=1000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/dssra_vs_baselines.json")
    args = parser.parse_args(argv)
    result = run(args.rounds, args.e_max_n, args.seed)
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
