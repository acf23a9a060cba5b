"""System-model sweeps: pipeline latency against micro-batches m, upload against power p_n."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from collapipe_jax.scenario import default_decision, draw_state, even_split, make_decision, mean_state, round_key
from collapipe_jax.scenario import scenario_preset
from collapipe_jax.sweep.base import Sweep, register
from collapipe_jax.sweep import plots
from collapipe_jax.system import evaluate, round_latency_of_power
from collapipe_jax.system.latency import VARIANTS
from collapipe_jax.system.sharded import evaluate_sharded, stack

PRESETS = ("paper-bert", "paper-transformer")


# --------------------------------------------------------------------------- latency vs m


def microbatch_compute(scale: str, work_dir, progress) -> dict:
    """τ^pipe against m (Eq. 15 / 33), uniform δ over all K devices, both variants, averaged
    over seeded draws; evaluated as one sharded batch."""
    draws = 8 if scale == "quick" else 64
    progress.expect(len(PRESETS) * len(VARIANTS))
    rows = []
    for preset in PRESETS:
        s = scenario_preset(preset)
        ms = [m for m in (1, 2, 4, 8, 16, 32, 64) if m <= s.b]
        delta = [even_split(s.L, s.K, min(s.K, s.L))] * s.N
        states, decisions, keys = [], [], []
        for m in ms:
            dec = make_decision(s, delta, m, [n if n < s.J else -1 for n in range(s.N)], s.P_max_n_w)
            for t in range(draws):
                states.append(draw_state(s, round_key(0, t)))
                decisions.append(dec)
                keys.append(m)
        for variant in VARIANTS:
            metrics = evaluate_sharded(stack(states), stack(decisions), variant)
            tau_pipe = np.asarray(metrics.tau_pipe_s).mean(axis=1)
            for m in ms:
                sel = np.asarray(keys) == m
                rows.append({"preset": preset, "variant": variant, "m": m,
                             "tau_pipe_s_mean": float(tau_pipe[sel].mean()),
                             "tau_pipe_s_std": float(tau_pipe[sel].std()), "draws": draws})
            progress(1)
    return {"latency-vs-microbatches": rows}


def microbatch_plot(tables: dict, out) -> None:
    rows = tables["latency-vs-microbatches"]
    fig, axes = plots.figure(1, len(PRESETS))
    for ax, preset in zip(axes[0], PRESETS):
        ms = sorted({r["m"] for r in rows if r["preset"] == preset})
        for i, variant in enumerate(VARIANTS):
            sel = [r for r in rows if r["preset"] == preset and r["variant"] == variant]
            mean = np.array([r["tau_pipe_s_mean"] for r in sel])
            std = np.array([r["tau_pipe_s_std"] for r in sel])
            style = plots.style(i)
            ax.plot([r["m"] for r in sel], mean, label=f"{variant} variant", **style)
            plots.band(ax, [r["m"] for r in sel], mean - std, mean + std, style["color"])
        plots.log2_ticks(ax, ms)
        draws = rows[0].get("draws", "?")
        plots.label(ax, f"{preset}: uniform δ over all K devices", "micro-batches m [count]",
                    "pipeline latency τ^pipe [s]")
    plots.figure_legend(fig, axes)
    plots.note(fig, f"Lines: mean over {draws} seeded draws of Table II's device ranges; bands: ± 1 standard "
               f"deviation over the draws{band_width_note(rows, axes[0])}.")
    plots.save_figure(fig, out / "latency-vs-microbatches.png")


def band_width_note(rows: list[dict], axes) -> str:
    """How wide the ± 1 SD bands are, and, when every band is thinner than a line on its panel's
    scale (under 1% of the y range), that they cannot be seen (the CSV holds the values)."""
    if not rows:
        return ""
    widest = max(rows, key=lambda r: r["tau_pipe_s_std"])
    relative = max(r["tau_pipe_s_std"] / r["tau_pipe_s_mean"] for r in rows if r["tau_pipe_s_mean"] > 0)
    spans = {preset: np.subtract(*ax.get_ylim()[::-1]) for preset, ax in zip(PRESETS, axes)}
    hidden = all(2 * r["tau_pipe_s_std"] < 0.01 * spans[r["preset"]] for r in rows if r["preset"] in spans)
    text = (f", at most {widest['tau_pipe_s_std']:.2g} s ({widest['preset']}, {widest['variant']} variant, "
            f"m = {widest['m']}), at most {relative:.1%} of the mean")
    return text + (": thinner than the lines on these scales, so not visible (values in "
                   "latency-vs-microbatches.csv)" if hidden else "")


def microbatch_findings(tables: dict) -> dict:
    rows = tables["latency-vs-microbatches"]
    best = {}
    for preset in PRESETS:
        for variant in VARIANTS:
            sel = [r for r in rows if r["preset"] == preset and r["variant"] == variant]
            r = min(sel, key=lambda r: r["tau_pipe_s_mean"])
            best[f"{preset}/{variant}"] = {"best_m": r["m"], "tau_pipe_s": r["tau_pipe_s_mean"]}
    findings = [f"{key}: τ^pipe is smallest at m = {v['best_m']} ({v['tau_pipe_s']:.4g} s)" for key, v in best.items()]
    findings.append("In the paper variant the D2D transfer of z^s + g^s is charged per micro-batch at full size, so "
                    "more micro-batches only add transfers; in the consistent variant it shrinks with b̂ = b/m.")
    return {"best_m": best, "findings": findings}


register(Sweep("latency-vs-microbatches", microbatch_compute, microbatch_plot, microbatch_findings))


# --------------------------------------------------------------------------- latency vs power


def power_compute(scale: str, work_dir, progress) -> dict:
    """τ^up, E^com and ∂τ/∂p_n (jax.grad) against the CU transmit power p_n, mean state."""
    points = 12 if scale == "quick" else 48
    progress.expect(len(PRESETS))
    rows = []
    for preset in PRESETS:
        s = scenario_preset(preset)
        state = mean_state(s)
        dec = default_decision(s)
        for p in np.linspace(0.05, s.P_max_n_w, points):
            pn = jnp.full((s.N,), p, jnp.float32)
            m = evaluate(state, dec.replace(p_n_w=pn))
            grad = jax.grad(lambda q: jnp.sum(evaluate(state, dec.replace(p_n_w=q)).tau_up_s))(pn)
            smooth = jax.grad(round_latency_of_power)(pn, state, dec, "paper", 1.0)
            rows.append({"preset": preset, "p_n_w": float(p), "tau_up_s": float(m.tau_up_s[0]),
                         "E_com_j": float(m.E_com_j[0]), "dtau_up_dp_n": float(grad[0]),
                         "dtau_smooth_dp_n_sum": float(smooth.sum()), "Gamma": float(m.Gamma[0]),
                         "E_max_n_j": float(s.E_max_n_j)})
        progress(1)
    return {"latency-vs-power": rows}


def power_plot(tables: dict, out) -> None:
    rows = tables["latency-vs-power"]
    fig, axes = plots.figure(1, 3)
    ax_up, ax_e, ax_g = axes[0]
    for i, preset in enumerate(PRESETS):
        sel = [r for r in rows if r["preset"] == preset]
        p = [r["p_n_w"] for r in sel]
        ax_up.plot(p, [r["tau_up_s"] for r in sel], label=preset, **plots.style(i))
        ax_e.plot(p, [r["E_com_j"] for r in sel], label=preset, **plots.style(i))
        ax_g.plot(p, [-r["dtau_up_dp_n"] for r in sel], label=preset, **plots.style(i))
    e_max = rows[0]["E_max_n_j"]
    ax_e.axhline(e_max, color="k", ls="--", lw=1.2, label=f"E_n^max = {e_max:g} J (Table II)")
    # log axes: τ^up and E^com span decades over p_n, and E_n^max lies far below E^com
    for ax in (ax_up, ax_e, ax_g):
        ax.set_yscale("log")
        plots.log_ticks(ax.yaxis)
    plots.label(ax_up, "upload delay of a CU against its power", "CU transmit power p_n [W]",
                "upload delay τ^up [s]")
    plots.label(ax_e, "upload energy against the budget E_n^max", "CU transmit power p_n [W]",
                "upload energy E^com [J]")
    plots.label(ax_g, "sensitivity of τ^up to p_n (jax.grad)", "CU transmit power p_n [W]",
                "−∂τ^up/∂p_n [s/W]")
    plots.figure_legend(fig, axes)
    plots.note(fig, "Mean state of Table II's ranges, the default decision, every CU at the same power p_n.")
    plots.save_figure(fig, out / "latency-vs-power.png")


def power_findings(tables: dict) -> dict:
    rows = tables["latency-vs-power"]
    e_max = rows[0]["E_max_n_j"]
    min_e = {preset: min(r["E_com_j"] for r in rows if r["preset"] == preset) for preset in PRESETS}
    findings = [f"{preset}: the least upload energy on the sampled powers is {e:.4g} J, against Table II's "
                f"E_n^max = {e_max:g} J" + (": C11' cannot hold with the model-derived θ^enc." if e > e_max else ".")
                for preset, e in min_e.items()]
    return {"min_upload_energy_j": min_e, "E_max_n_j": e_max, "findings": findings}


register(Sweep("latency-vs-power", power_compute, power_plot, power_findings))
