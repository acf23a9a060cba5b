"""How DSSRA's gain over the paper's baselines and its queues change with the number of clusters
N, of devices per cluster K, of uplink channels J and with the Lyapunov weight V (no paper
figure: a study the device engine makes cheap), and what the simulator itself costs as N grows.

Base: paper-bert with LoRA adapters (R = 8) uploaded on Table II as published, the paper variant
of the system model, the drift objective. One axis moves at a time (the others at the base:
N = 6 > J = 4 so that the CU selection matters, K = 6, V = 10). N runs to 128 clusters with
J = ⌈N/2⌉ channels (half the clusters upload each round, as at the base): N ∈ {3, 6, 12, 24,
48, 96, 128} (paper), {3, 12, 48, 128} (quick); K ∈ {4, 6, 8, 10} (paper), {6, 10} (quick); J ∈ {2, 4, 8} and V ∈
{0.01, 1, 10, 100, 1000} (each new size compiles every rule once). Every point runs DSSRA and
the paper's baselines (random, loss-only, delay-only; and the uniform split at paper scale) on
the same seeds (quick 64 seeds of 30 rounds, paper 1,024 of 100; fewer at the large N,
`N_SCALES`, where a round costs far more); DSSRA's change of the total latency against each is
taken seed by seed (mean and 95% interval), and the queues' largest value per seed is averaged.

The simulator's own cost (`scaling-cost`, figure scaling-cost.png), at each N of the N axis:
the device engine's wall time per DSSRA round, marginal (a second call on the same seeds, after
the first call compiled the program or loaded it from the compilation cache; the first call's
time is kept apart), and the host loop's (`schedule` on the host solvers, a whole round: draw,
DSSRA, charge, queues), timed over only a few rounds (`HOST_ROUNDS`: its rounds take seconds
at large N) after one warm-up round at that N. Both are wall times of this machine, run beside whatever else it runs.
"""

from __future__ import annotations

import math
import time

import numpy as np

from collapipe_jax.scenario import scenario_preset
from collapipe_jax.scheduling.policies import PAPER_BASELINES
from collapipe_jax.sweep import plots
from collapipe_jax.sweep.base import Sweep, register
from collapipe_jax.sweep.seeded import interval, paired_change, run_seeds

BASE = dict(N=6, K=6, J=4, V=10.0)
N_VALUES = (3, 6, 12, 24, 48, 96, 128)  # with J = ⌈N/2⌉ (`point_of`)
# the quick sweep spans the same range with four sizes: each size compiles every rule once (18–70 s
# per program on 2 cores), which made the seven sizes 4–5 minutes of a 30-minute `make sweep`
QUICK_N_VALUES = (3, 12, 48, 128)
AXES = {  # every new (N, K, J) compiles each rule's program once (seconds to tens of seconds on a CPU)
    "quick": (("N", QUICK_N_VALUES), ("K", (6, 10)), ("J", (2, 4, 8)), ("V", (0.01, 1.0, 10.0, 100.0, 1000.0))),
    "paper": (("N", N_VALUES), ("K", (4, 6, 8, 10)), ("J", (2, 4, 8)), ("V", (0.01, 1.0, 10.0, 100.0, 1000.0))),
}
RULES = {"quick": ("dssra",) + PAPER_BASELINES, "paper": ("dssra",) + PAPER_BASELINES + ("uniform",)}
# seeds, rounds: the rounds of the policy comparison (policies.py), so that the points at N = 6,
# J = 4 (the K, J and V axes) run the compiled programs of its settings of that shape (in one
# `sweep all`)
SCALES = {"quick": (64, 30), "paper": (1024, 100)}
# fewer seeds and rounds from these N on (a round's cost grows with N and J): the quick sweep
# stays about as cheap as with N ≤ 12, and the bands stay 95% intervals over the seeds run
N_SCALES = {"quick": {24: (16, 10), 48: (8, 10), 96: (8, 5), 128: (8, 5)},
            "paper": {48: (512, 100), 96: (256, 50), 128: (256, 50)}}
# rounds of the host loop timed per N, after one warm-up round at that N (its first round compiles
# the host's jitted system-model functions for the new shapes: 4.5 s at N = 3, 6 and 12 on 2
# loaded cores, against 19–66 ms for each later round): a few only at large N
HOST_ROUNDS = {3: 5, 6: 5, 12: 5, 24: 3, 48: 2, 96: 1, 128: 1}
AXIS_LABELS = {"N": "clusters N", "K": "devices per cluster K", "J": "uplink channels J", "V": "Lyapunov weight V"}


PRESET, TUNABLE = "paper-bert", "lora:8"  # the scenario of every point, named in the figures' titles


def point_scenario(N: int, K: int, J: int):
    return scenario_preset(PRESET).replace(N=N, K=K, J=J, tunable=TUNABLE)


def point_of(axis: str, value) -> dict:
    """The setting of one point: the base with `axis` moved; along N, J = ⌈N/2⌉."""
    point = dict(BASE, **{axis: value})
    if axis == "N":
        point["J"] = math.ceil(value / 2)
    return point


def seeds_rounds(scale: str, axis: str, N: int) -> tuple[int, int]:
    """(seeds, rounds) of a point: the scale's, or fewer at the large N of the N axis."""
    if axis != "N":
        return SCALES[scale]
    smaller = [n for n in N_SCALES[scale] if n <= N]
    return N_SCALES[scale][max(smaller)] if smaller else SCALES[scale]


def host_seconds_per_round(scenario, rounds: int, V: float) -> float:
    """The host loop's wall time per whole round (draw, DSSRA, charge, queues) over `rounds` rounds."""
    from collapipe_jax.scheduling.schedule import ScheduleConfig, run_schedule

    start = time.perf_counter()
    run_schedule(scenario, ScheduleConfig(rounds=rounds, V=V, progress=False, include_inputs=False))
    return (time.perf_counter() - start) / rounds


def compute(scale: str, work_dir, progress) -> dict:
    rules = RULES[scale]
    axes = AXES[scale]
    progress.expect(sum(len(values) for _, values in axes) * len(rules) + len(dict(axes)["N"]))
    rows, gains, cost = [], [], []
    done = {}  # the base point recurs on the K, J and V axes: its runs are reused, not repeated
    for axis, values in axes:
        for value in values:
            point = point_of(axis, value)
            n_seeds, rounds = seeds_rounds(scale, axis, int(point["N"]))
            seeds = np.arange(n_seeds)
            scenario = point_scenario(int(point["N"]), int(point["K"]), int(point["J"]))
            results = {}
            for rule in rules:
                key = (point["N"], point["K"], point["J"], point["V"], rule, n_seeds, rounds)
                start = time.perf_counter()
                if key not in done:
                    done[key] = run_seeds(scenario, rule, seeds, rounds, V=point["V"])
                results[rule] = done[key]
                first = time.perf_counter() - start
                t = results[rule]["totals"]
                ok = t["code"] == 0
                rows.append({"axis": axis, "value": value, **point, "policy": rule, "seeds": n_seeds,
                             "rounds": rounds, "n": int(ok.sum()),
                             **interval("total_latency_s", t["total_latency_s"][ok]),
                             **interval("max_Y", t["max_Y"][ok])})
                progress(1)
                if axis == "N" and rule == "dssra":  # the simulator's cost: the same call again, now compiled
                    start = time.perf_counter()
                    run_seeds(scenario, rule, seeds, rounds, V=point["V"])
                    marginal = time.perf_counter() - start
                    host_seconds_per_round(scenario, 1, point["V"])  # warm-up: compiles for this N (above)
                    host_rounds = HOST_ROUNDS.get(int(point["N"]), 1)
                    cost.append({**point, "seeds": n_seeds, "rounds": rounds,
                                 "device_s_per_round": marginal / (n_seeds * rounds),
                                 "device_first_call_s": first, "device_marginal_call_s": marginal,
                                 "host_rounds": host_rounds,
                                 "host_s_per_round": host_seconds_per_round(scenario, host_rounds, point["V"])})
                    progress(1)
            d = results["dssra"]["totals"]
            for rule in rules[1:]:
                o = results[rule]["totals"]
                gains.append({"axis": axis, "value": value, **point, "baseline": rule,
                              **paired_change(d["total_latency_s"], o["total_latency_s"],
                                              (d["code"] == 0) & (o["code"] == 0))})
    return {"scaling": rows, "scaling-gains": gains, "scaling-cost": cost}


def others_text(axis: str) -> str:
    """The settings held while `axis` moves (along N, J follows it)."""
    held = {k: v for k, v in BASE.items() if k != axis and not (axis == "N" and k == "J")}
    return ", ".join(([f"J = ⌈N/2⌉"] if axis == "N" else []) + [f"{k} = {v:g}" for k, v in held.items()])


def plot(tables: dict, out) -> None:
    """A figure per axis: DSSRA's change of the total latency against each rule (mean and 95%
    band over the seeds), and DSSRA's largest queue."""
    gains, rows = tables["scaling-gains"], tables["scaling"]
    axes_of = list(dict.fromkeys(g["axis"] for g in gains))
    rules = list(dict.fromkeys(g["baseline"] for g in gains))
    for axis in axes_of:
        fig, axes = plots.figure(1, 2, panel=(4.6, 3.4))
        left, right = axes[0]
        for i, rule in enumerate(rules):
            sel = [g for g in gains if g["axis"] == axis and g["baseline"] == rule]
            x = [g["value"] for g in sel]
            # nested markers: the rules' changes can coincide (random and loss-only at every V)
            line = left.plot(x, [g["change_pct"] for g in sel], label=f"DSSRA vs {rule}",
                             **plots.nested_style(i, len(rules)))[0]
            plots.band(left, x, [g["change_pct_lo"] for g in sel], [g["change_pct_hi"] for g in sel], line.get_color())
        sel = [r for r in rows if r["axis"] == axis and r["policy"] == "dssra"]
        x = [r["value"] for r in sel]
        line = right.plot(x, [r["max_Y"] for r in sel], label="DSSRA's largest queue", **plots.style(len(rules)))[0]
        plots.band(right, x, [r["max_Y_lo"] for r in sel], [r["max_Y_hi"] for r in sel], line.get_color())
        left.axhline(0.0, color="black", linewidth=0.8)
        for ax in (left, right):
            if axis in ("V", "N"):  # N from 3 to 128: a log axis spaces its points evenly
                ax.set_xscale("log")
                plots.log_ticks(ax.xaxis)
            else:
                plots.integer_ticks(ax.xaxis)
        counts = [g["n"] for g in gains if g["axis"] == axis] or [0]
        n = f"{min(counts)}–{max(counts)}" if min(counts) != max(counts) else f"{max(counts)}"  # fewer at large N
        others = others_text(axis)
        plots.label(left, f"DSSRA's total latency change ({others})", AXIS_LABELS[axis] + " [count]"
                    if axis != "V" else AXIS_LABELS[axis] + " [unitless]", "change of Σ τ(t) [%]")
        plots.label(right, f"DSSRA's queues ({others})", AXIS_LABELS[axis] + " [count]"
                    if axis != "V" else AXIS_LABELS[axis] + " [unitless]", "max over t, n of Y_n(t) [unitless]")
        plots.figure_legend(fig, axes, title=f"DSSRA against the other rules as {AXIS_LABELS[axis]} grows: "
                                             f"{PRESET}, {TUNABLE} upload (mean over {n} seeds)")
        plots.note(fig, ["Bands: 95% interval of the mean over seeds (Student-t); a change below 0 means DSSRA "
                         "is faster."])
        plots.save_figure(fig, out / f"scaling-{axis}.png")
    if tables.get("scaling-cost"):
        plot_cost(tables["scaling-cost"], out)


def plot_cost(cost: list[dict], out) -> None:
    """The simulator's cost against N (log–log): each engine's wall time per round, and the device
    engine's first call (compile, or load from the compilation cache, and one run)."""
    fig, axes = plots.figure(1, 2, panel=(4.6, 3.4))
    left, right = axes[0]
    N = [c["N"] for c in cost]
    left.plot(N, [c["device_s_per_round"] for c in cost], label="device engine (marginal, per seed-round)",
              **plots.style(0))
    left.plot(N, [c["host_s_per_round"] for c in cost], label="host loop (per round)", **plots.style(1))
    right.plot(N, [c["device_first_call_s"] for c in cost], label="device engine's first call", **plots.style(2))
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        plots.log_ticks(ax.xaxis)
        plots.log_ticks(ax.yaxis)
    plots.label(left, "Wall time per DSSRA round (J = ⌈N/2⌉, K = 6)", "clusters N [count]", "time per round [s]")
    plots.label(right, "The device engine's first call: compile + one run", "clusters N [count]",
                "first call [s]")
    plots.figure_legend(fig, axes, title=f"What the simulator costs as N grows: {PRESET}, {TUNABLE} upload, "
                                         "DSSRA, wall time on this machine")
    rounds = sorted({c["host_rounds"] for c in cost})
    timed = f"{rounds[0]}–{rounds[-1]} rounds, fewer at large N" if len(rounds) > 1 else f"{rounds[0]} rounds"
    plots.note(fig, f"Device: a second call on the same seeds (the compiled program's run) over its seeds × rounds; "
                    f"host: the host solvers' loop, whole rounds, timed over a few rounds only ({timed}; "
                    f"scaling-cost.csv has each N's).")
    plots.save_figure(fig, out / "scaling-cost.png")


def findings(tables: dict) -> dict:
    notes = []
    gains = tables["scaling-gains"]
    for axis in dict.fromkeys(g["axis"] for g in gains):
        for rule in dict.fromkeys(g["baseline"] for g in gains):
            sel = [g for g in gains if g["axis"] == axis and g["baseline"] == rule]
            points = ", ".join(f"{g['value']:g}" for g in sel)
            notes.append(f"{AXIS_LABELS[axis]} {points}: DSSRA vs {rule} "
                         + ", ".join(f"{g['change_pct']:+.1f}% [{g['change_pct_lo']:+.1f}, {g['change_pct_hi']:+.1f}]"
                                     for g in sel))
    cost = tables.get("scaling-cost", [])
    if cost:
        notes.append("the simulator's wall time per DSSRA round, device engine (marginal) / host loop: "
                     + ", ".join(f"N = {c['N']}: {1e3 * c['device_s_per_round']:.3g} / {1e3 * c['host_s_per_round']:.3g} ms "
                                 f"({c['host_s_per_round'] / c['device_s_per_round']:.3g}x)" for c in cost)
                     + "; the device's first call (compile or cache load, one run): "
                     + ", ".join(f"{c['device_first_call_s']:.3g} s" for c in cost))
    return {"claims": [], "findings": notes}


register(Sweep("scaling", compute, plot, findings))
