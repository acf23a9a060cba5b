"""How DSSRA's gain over the paper's baselines and its queues change with the number of clusters
N, of devices per cluster K, of uplink channels J and with the Lyapunov weight V (no paper
figure: a study the device engine makes cheap).

Base: paper-bert with LoRA adapters (R = 8) uploaded on Table II as published, the paper variant
of the system model, the drift objective. One axis moves at a time (the others at the base:
N = 6 > J = 4 so that the CU selection matters, K = 6, V = 10): at paper scale N ∈ {3, 6, 12,
24}, K ∈ {4, 6, 8, 10}, J ∈ {2, 4, 8} and V ∈ {0.01, 1, 10, 100, 1000}, at quick scale N ∈ {3,
6, 12}, K ∈ {6, 10} and the same J and V (each new size compiles every rule once). Every point
runs DSSRA and the paper's baselines (random, loss-only, delay-only; and the uniform split at
paper scale) on the same seeds (quick 64 seeds of 30 rounds, paper 1,024 of 100); DSSRA's change of the total latency against each is taken seed
by seed (mean and 95% interval), and the queues' largest value per seed is averaged.
"""

from __future__ import annotations

import numpy as np

from collapipe_jax.scenario import scenario_preset
from collapipe_jax.scheduling.policies import PAPER_BASELINES
from collapipe_jax.sweep import plots
from collapipe_jax.sweep.base import Sweep, register
from collapipe_jax.sweep.seeded import interval, paired_change, run_seeds

BASE = dict(N=6, K=6, J=4, V=10.0)
AXES = {  # every new (N, K, J) compiles each rule's program once (tens of seconds on a CPU)
    "quick": (("N", (3, 6, 12)), ("K", (6, 10)), ("J", (2, 4, 8)), ("V", (0.01, 1.0, 10.0, 100.0, 1000.0))),
    "paper": (("N", (3, 6, 12, 24)), ("K", (4, 6, 8, 10)), ("J", (2, 4, 8)), ("V", (0.01, 1.0, 10.0, 100.0, 1000.0))),
}
RULES = {"quick": ("dssra",) + PAPER_BASELINES, "paper": ("dssra",) + PAPER_BASELINES + ("uniform",)}
# seeds, rounds: the rounds of the policy comparison (policies.py), so that the points at N = 3
# and N = 6 run the compiled programs of its settings of the same shapes (in one `sweep all`)
SCALES = {"quick": (64, 30), "paper": (1024, 100)}
AXIS_LABELS = {"N": "clusters N", "K": "devices per cluster K", "J": "uplink channels J", "V": "Lyapunov weight V"}


PRESET, TUNABLE = "paper-bert", "lora:8"  # the scenario of every point, named in the figures' titles


def point_scenario(N: int, K: int, J: int):
    return scenario_preset(PRESET).replace(N=N, K=K, J=J, tunable=TUNABLE)


def compute(scale: str, work_dir, progress) -> dict:
    n_seeds, rounds = SCALES[scale]
    rules = RULES[scale]
    seeds = np.arange(n_seeds)
    progress.expect(sum(len(values) for _, values in AXES[scale]) * len(rules))
    rows, gains = [], []
    for axis, values in AXES[scale]:
        for value in values:
            point = dict(BASE, **{axis: value})
            scenario = point_scenario(int(point["N"]), int(point["K"]), int(point["J"]))
            results = {}
            for rule in rules:
                results[rule] = run_seeds(scenario, rule, seeds, rounds, V=point["V"])
                t = results[rule]["totals"]
                ok = t["code"] == 0
                rows.append({"axis": axis, "value": value, **point, "policy": rule, "rounds": rounds, "n": int(ok.sum()),
                             **interval("total_latency_s", t["total_latency_s"][ok]),
                             **interval("max_Y", t["max_Y"][ok])})
                progress(1)
            d = results["dssra"]["totals"]
            for rule in rules[1:]:
                o = results[rule]["totals"]
                gains.append({"axis": axis, "value": value, **point, "baseline": rule,
                              **paired_change(d["total_latency_s"], o["total_latency_s"],
                                              (d["code"] == 0) & (o["code"] == 0))})
    return {"scaling": rows, "scaling-gains": gains}


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
            if axis == "V":
                ax.set_xscale("log")
                plots.log_ticks(ax.xaxis)
            elif axis != "V":
                plots.integer_ticks(ax.xaxis)
        n = max((g["n"] for g in gains if g["axis"] == axis), default=0)
        others = ", ".join(f"{k} = {v:g}" for k, v in BASE.items() if k != axis)
        plots.label(left, f"DSSRA's total latency change ({others})", AXIS_LABELS[axis] + " [count]"
                    if axis != "V" else AXIS_LABELS[axis] + " [unitless]", "change of Σ τ(t) [%]")
        plots.label(right, f"DSSRA's queues ({others})", AXIS_LABELS[axis] + " [count]"
                    if axis != "V" else AXIS_LABELS[axis] + " [unitless]", "max over t, n of Y_n(t) [unitless]")
        plots.figure_legend(fig, axes, title=f"DSSRA against the other rules as {AXIS_LABELS[axis]} grows: "
                                             f"{PRESET}, {TUNABLE} upload (mean over {n} seeds)")
        plots.note(fig, ["Bands: 95% interval of the mean over seeds (Student-t); a change below 0 means DSSRA "
                         "is faster."])
        plots.save_figure(fig, out / f"scaling-{axis}.png")


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
    return {"claims": [], "findings": notes}


register(Sweep("scaling", compute, plot, findings))
