"""The device engine's DSSRA rounds per second against the host loop, in the same run.

Settings: `paper-bert` (N = 3, K = 6, J = 4, L = 12) and N = 16, K = 10, J = 8, L = 24, the
upload budget raised to E_n^max = 1000 J as in bench_dssra (the preset's full-encoder upload
cannot meet 10 J), the paper variant and the drift objective. A "round" is the whole host round
on both sides: draw, DSSRA (Sub-1 fronts + Alg. 4), the system model's charge, the queue update.

Host: `schedule` on the host solvers, wall time per round over a few seeds' rounds. Device:
`run_schedules` over a batch of B seeds of T rounds each (B·T rounds); the marginal cost is the
second call's wall time (the first compiles), in float64 (the host's precision: the equivalence
mode) and float32. The goal on the 2-core CPU is ≥ 30× the host loop at B = 4,096; on an
accelerator ≥ 10^6 rounds per second for paper-bert. Measured by `make bench` on the 2-core CPU
with nothing else running (2026-12-04): 11,121 float64 rounds/s at B = 4,096 and 6,500 at B = 64,
against 147 for the host loop (76×); at N = 16, K = 10, J = 8, L = 24 127 against 24 (5.3×).
For paper-bert most of a round is Sub-1's paper greedy (two m-solves per cluster under vmap, where
95% of clusters need one), then one Sub-2 solve. Then the time per round against N, K and J
(the paper states O(K³ + J³ + N) for Alg. 4).

The targets (`TARGETS`, docs/design.md §8), each row beside the host loop in the same run, the
device's compile (first call minus the marginal call) reported apart, float64:
* N = 16, K = 10, J = 8, L = 24, batch 4,096: device ≥ 30× the host loop;
* N = 64, J = 32, K = 10 (paper-bert, lora:8): device ≥ 10× the host, host ≤ 100 ms a round;
* N = 128, J = 64, K = 10 (paper-bert, lora:8): 256 seeds × 10 rounds within 10 minutes, first
  call included;
* the first call's compile ≤ 30 s at each of them;
* on an accelerator only: rounds/s at N = 3 (≥ 10^6) and N = 64 (≥ 10^4); "not measured" on a CPU.
The output says of each target whether it is met, or short and by how much.
`COLLAPIPE_BENCH_QUICK=1` runs every row at small sizes (N/16, J/16, 64 seeds × 2 rounds; paper-bert
at one batch, no growth table) to check the bench itself: its targets are then not judged, and
the record goes to engine-quick.json.
"""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.common import device, device_sized, on_accelerator, write_record


def host_rounds_per_s(scenario, rounds: int, seeds: int = 2) -> float:
    from collapipe_jax.scheduling.schedule import ScheduleConfig, run_schedule

    run_schedule(scenario, ScheduleConfig(rounds=1, progress=False, include_inputs=False))  # caches, imports
    start = time.perf_counter()
    for seed in range(seeds):
        run_schedule(scenario, ScheduleConfig(rounds=rounds, seed=seed, progress=False, include_inputs=False))
    return seeds * rounds / (time.perf_counter() - start)


def device_rounds_per_s(scenario, batch: int, rounds: int, dtype: str) -> tuple[float, float]:
    """(marginal rounds per second, compile + first call seconds)."""
    from collapipe_jax.scheduling.device.run import run_schedules

    seeds = np.arange(batch)
    start = time.perf_counter()
    run_schedules(scenario, "dssra", seeds, rounds, dtype=dtype)
    first = time.perf_counter() - start
    start = time.perf_counter()
    run_schedules(scenario, "dssra", seeds + batch, rounds, dtype=dtype)
    return batch * rounds / (time.perf_counter() - start), first


QUICK = os.environ.get("COLLAPIPE_BENCH_QUICK", "") not in ("", "0")
CPU_ROWS = (  # name, scenario changes, seeds, rounds, host rounds timed, goals of the row
    ("N=16 K=10 J=8 L=24", dict(N=16, K=10, J=8, L=24, E_max_n_j=1e3), 4096, 2, 3, {"vs_host": 30.0}),
    ("N=64 K=10 J=32 lora:8", dict(N=64, K=10, J=32, tunable="lora:8"), 256, 5, 2,
     {"vs_host": 10.0, "host_ms_per_round": 100.0}),
    ("N=128 K=10 J=64 lora:8", dict(N=128, K=10, J=64, tunable="lora:8"), 256, 10, 1, {"first_call_s": 600.0}),
)
TARGETS = {"compile_s": 30.0, "rows": {name: goals for name, *_, goals in CPU_ROWS},
           "accelerator_rounds_per_s": {"N=3": 1e6, "N=64": 1e4}}


def quick_sized(changes: dict, seeds: int, rounds: int):
    """A row at the quick check's sizes: N and J a sixteenth (at least 3 and 2), 64 seeds × 2 rounds."""
    changes = dict(changes, N=max(3, changes["N"] // 16), J=max(2, changes["J"] // 16))
    changes.pop("L", None)
    return changes, 64, 2


def verdict(name: str, value: float, goal: float, at_most: bool, unit: str) -> dict:
    """Whether `value` meets `goal` (at most / at least), and if not by how much, in one line."""
    met = value <= goal if at_most else value >= goal
    if met:
        text = f"met ({value:.3g}{unit} {'<=' if at_most else '>='} {goal:g}{unit})"
    elif at_most:
        text = f"SHORT by {value - goal:.3g}{unit} ({value:.3g}{unit}, {value / goal:.2f}x the goal {goal:g}{unit})"
    else:
        text = f"SHORT by {goal / value:.2f}x ({value:.3g}{unit} of {goal:g}{unit})"
    if QUICK:
        text = f"not judged (quick sizes): {value:.3g}{unit} against {goal:g}{unit}"
    print(f"  target {name}: {text}", flush=True)
    return {"target": name, "value": value, "goal": goal, "at_most": at_most, "met": bool(met) and not QUICK,
            "verdict": text}


def target_rows(bert) -> tuple[dict, list]:
    """The target rows of the module docstring: host and device in the same run, and verdicts."""
    rows, verdicts = {}, []
    for name, changes, seeds, rounds, host_rounds, goals in CPU_ROWS:
        if QUICK:
            changes, seeds, rounds = quick_sized(changes, seeds, rounds)
            host_rounds = 1
            name = f"{name} at quick sizes N={changes['N']} J={changes['J']}"
        scenario = bert.replace(**changes)
        host = host_rounds_per_s(scenario, host_rounds, seeds=1)
        start = time.perf_counter()
        rate, first = device_rounds_per_s(scenario, seeds, rounds, "float64")
        marginal = seeds * rounds / rate
        row = {"N": scenario.N, "K": scenario.K, "J": scenario.J, "L": scenario.L, "tunable": scenario.tunable,
               "seeds": seeds, "rounds": rounds, "dtype": "float64", "host_rounds_timed": host_rounds,
               "host_ms_per_round": 1e3 / host, "host_rounds_per_s": host, "device_rounds_per_s": rate,
               "device_first_call_s": first, "device_marginal_call_s": marginal,
               "compile_s": max(first - marginal, 0.0), "vs_host": rate / host,
               "wall_s": time.perf_counter() - start}
        rows[name] = row
        print(f"{name}: host {row['host_ms_per_round']:9.1f} ms/round ({host_rounds} rounds), device "
              f"{rate:10.1f} rounds/s ({seeds} seeds x {rounds} rounds) = {rate / host:7.1f}x host; first call "
              f"{first:.1f} s, of which compile ~{row['compile_s']:.1f} s", flush=True)
        if "vs_host" in goals:
            verdicts.append(verdict(f"{name}: device vs host", rate / host, goals["vs_host"], False, "x"))
        if "host_ms_per_round" in goals:
            verdicts.append(verdict(f"{name}: host ms per round", row["host_ms_per_round"],
                                    goals["host_ms_per_round"], True, " ms"))
        if "first_call_s" in goals:
            verdicts.append(verdict(f"{name}: {seeds} seeds x {rounds} rounds, first call", first,
                                    goals["first_call_s"], True, " s"))
        verdicts.append(verdict(f"{name}: compile", row["compile_s"], TARGETS["compile_s"], True, " s"))
    print_table(rows)
    return rows, verdicts


def print_table(rows: dict) -> None:
    """The target rows side by side: the host's and the device's cost, their ratio, the compile."""
    head = ("row", "seeds x rounds", "host ms/round", "device rounds/s", "device/host", "first call s", "compile s")
    cells = [(name, f"{r['seeds']} x {r['rounds']}", f"{r['host_ms_per_round']:.1f}", f"{r['device_rounds_per_s']:.1f}",
              f"{r['vs_host']:.1f}x", f"{r['device_first_call_s']:.1f}", f"{r['compile_s']:.1f}") for name, r in rows.items()]
    widths = [max(len(c[i]) for c in [head] + cells) for i in range(len(head))]
    for line in [head] + cells:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)), flush=True)


def accelerator_rows(bert) -> dict:
    """Rounds/s at N = 3 and N = 64 on an accelerator (float32, a batch that fills it), against
    their goals; "not measured" on a CPU."""
    if not on_accelerator():
        print("accelerator rows (N=3, N=64): not measured (no accelerator in this run)", flush=True)
        return {"N=3": "not measured (no accelerator in this run)", "N=64": "not measured (no accelerator in this run)"}
    out = {}
    for name, scenario, batch in (("N=3", bert, 65536), ("N=64", bert.replace(N=64, K=10, J=32, tunable="lora:8"), 8192)):
        rate, first = device_rounds_per_s(scenario, batch if not QUICK else 1024, 2, "float32")
        out[name] = {"rounds_per_s": rate, "first_call_s": first, "batch": batch,
                     **verdict(f"accelerator {name}", rate, TARGETS["accelerator_rounds_per_s"][name], False, " rounds/s")}
    return out


def main() -> None:
    import jax

    from collapipe_jax.scenario import scenario_preset

    jax.config.update("jax_enable_compilation_cache", False)  # first calls compile: what the bench measures

    bert = scenario_preset("paper-bert").replace(E_max_n_j=1e3)
    record = {"device": device(), "quick": QUICK,
              "note": "rounds per second, whole rounds (draw, DSSRA, charge, queues); device: marginal (second call), "
                      "compile (first call minus the marginal call) reported apart; the host and device of a row "
                      "measured in the same run"}
    rows, verdicts = target_rows(scenario_preset("paper-bert"))
    record["targets"], record["target_rows"], record["verdicts"] = TARGETS, rows, verdicts
    record["accelerator"] = accelerator_rows(scenario_preset("paper-bert"))
    short = [v["target"] for v in verdicts if not v["met"]]
    print(("targets not judged (quick sizes)" if QUICK else
           f"{len(verdicts) - len(short)} of {len(verdicts)} targets met" + (f"; short: {'; '.join(short)}" if short else "")),
          flush=True)
    batches = (64,) if QUICK else (1, 64, 4096, 65536)
    host = host_rounds_per_s(bert, 5 if QUICK else 20)
    paper = {"host_rounds_per_s": host}
    print(f"paper-bert: host loop {host:10.1f} rounds/s", flush=True)
    for dtype in ("float64",) if QUICK else ("float64", "float32"):
        for batch in batches:
            rounds = 2 if batch >= 4096 else 4
            rate, first = device_rounds_per_s(bert, batch, rounds, dtype)
            paper[f"{dtype} batch {batch}"] = {"rounds_per_s": rate, "vs_host": rate / host, "first_call_s": first}
            print(f"  device {dtype} batch {batch:6d}: {rate:12.1f} rounds/s = {rate / host:8.1f}x host "
                  f"(first call {first:.1f} s)", flush=True)
    record["paper-bert"] = paper
    if not QUICK:
        goal = paper["float64 batch 4096"]["vs_host"]
        record["goal_cpu_vs_host_at_4096"] = 30.0
        print(f"paper-bert, batch 4096, float64: {goal:.1f}x the host loop (goal >= 30x on the CPU): "
              f"{'met' if goal >= 30 else 'NOT met'}")
    # growth with N, K, J at a fixed batch (the paper: O(K^3 + J^3 + N) per round)
    scaling = {}
    batch = device_sized(256, 16384)
    for axis, values in () if QUICK else (("N", (3, 6, 12)), ("K", (4, 6, 10)), ("J", (2, 4, 8))):
        for v in values:
            s = bert.replace(**{axis: v})
            if axis == "J":
                s = s.replace(N=max(s.N, v))
            rate, _ = device_rounds_per_s(s, batch, 2, "float32")
            scaling[f"{axis}={v}"] = {"us_per_round": 1e6 / rate, "N": s.N, "K": s.K, "J": s.J}
            print(f"  scaling {axis}={v:3d} (N={s.N}, K={s.K}, J={s.J}): {1e6 / rate:10.1f} us per round "
                  f"(float32, batch {batch})", flush=True)
    record["scaling"] = scaling
    print(f"record: {write_record('engine' if not QUICK else 'engine-quick', record)}")


if __name__ == "__main__":
    main()
