"""The policy comparison (paper Fig. 11): total latency of DSSRA, the paper's baselines and the
ablations over T rounds, V ∈ {0.01, 10, 100}, with the queues Y_n(t) and per-round latency.

Settings (BERT on Table II, as Fig. 11's Toutiao runs): the paper's N = 3 clusters (≤ J = 4
channels, so every CU uploads and the baselines' CU selection never matters) and N = 6 > J = 4,
where it does; each under both variants, with the LoRA upload (`tunable`, Table II as published)
and with the full encoder upload (which Table II's E_n^max = 10 J cannot pay for at any power:
those settings raise E_n^max to 1000 J and say so).

The paper's baselines (random, loss-only, delay-only) and the V-free ablations do not use V:
they run once per setting and their rows repeat for every V (`uses_V` false).

Every setting runs over many seeds (quick 128, paper 10,000) on the device engine, each seed its
own draws; DSSRA's change against a baseline is taken seed by seed and reported as its mean with
a 95% interval (`sweep/seeded.py`); a claim reproduces when the paper's factor-two rule holds for
the mean and the interval excludes zero. `random-feasible` (host-only) runs on fewer seeds.
"""

from __future__ import annotations

import numpy as np

from collapipe_jax.scenario import scenario_preset
from collapipe_jax.scheduling.policies import ABLATIONS, PAPER_BASELINES
from collapipe_jax.scheduling.schedule import ScheduleConfig, run_schedule
from collapipe_jax.sweep.base import DEFAULT_TUNABLE, Sweep, register, tunables
from collapipe_jax.sweep import plots
from collapipe_jax.sweep.claims import change_pct, change_reproduced, claim
from collapipe_jax.sweep import seeded
from collapipe_jax.sweep.seeded import SEEDS, interval, paired_change, run_seeds
from collapipe_jax.system.latency import VARIANTS

PAPER_POLICY_CLAIMS = {  # DSSRA's latency change against each baseline at V = 0.01 (§VI-D, Fig. 11)
    "loss-only": ("fig11-vs-loss-only", -46.44), "delay-only": ("fig11-vs-delay-only", -15.48),
    "random": ("fig11-vs-random", -7.12),
}
POLICIES = ("dssra",) + PAPER_BASELINES + ABLATIONS
V_POLICIES = ("dssra", "uniform")  # the rules that use V (the others run once per setting)
VS = (0.01, 10.0, 100.0)
CLAIM_V = 0.01
RELAXED_E_MAX_N_J = 1000.0
CLUSTERS = ((3, 4), (6, 4))  # (N, J): the paper's, and N > J


def policy_scenario(tunable: str, N: int, J: int):
    """paper-bert on Table II with N clusters and J channels; the full upload with E_n^max 1000 J."""
    s = scenario_preset("paper-bert").replace(N=N, J=J, tunable=tunable)
    return s if tunable != "full" else s.replace(E_max_n_j=RELAXED_E_MAX_N_J)


def setting_label(tunable: str, N: int, J: int, variant: str) -> str:
    upload = "full upload, E_n^max 1000 J" if tunable == "full" else f"{tunable}, Table II"
    return f"N={N}, J={J}, {upload}, {variant}"


HOST_ONLY = ("random-feasible",)  # a rejection sampler: host solvers, fewer seeds
HOST_SEEDS = {"quick": 4, "paper": 64}  # quick: a panel of its own, in no claim or pairing
PER_ROUND_VS = (CLAIM_V, 10.0)


def compute(scale: str, work_dir, progress, tunable: str = DEFAULT_TUNABLE, extra_policies=()) -> dict:
    """Every (setting, policy, V) over many seeds on the device engine (`random-feasible` on the
    host, fewer seeds): totals with their 95% intervals, the accumulated latency per round, and
    DSSRA's paired change against every other rule. `extra_policies`: users' rules
    (FILE.py:FUNCTION, docs/extending.md), run like the built-in ones at every V (a rule may read
    V) and paired with DSSRA on the same seeds."""
    rounds = 30 if scale == "quick" else 100
    seeds = np.arange(SEEDS[scale])
    rules = POLICIES + tuple(p for p in extra_policies if p not in POLICIES)
    progress.expect(len(tunables(tunable)) * len(CLUSTERS) * len(VARIANTS) * len(rules))
    totals, per_round, changes = [], [], []
    for upload in tunables(tunable):
        for N, J in CLUSTERS:
            scenario = policy_scenario(upload, N, J)
            for variant in VARIANTS:
                label = setting_label(upload, N, J, variant)
                latency = {}  # (policy, V) → per-seed total latency, and feasibility
                for policy in rules:
                    uses_V = policy in V_POLICIES or policy not in POLICIES
                    Vs = VS if uses_V else (CLAIM_V,)
                    result = run_policy(scenario, policy, variant, seeds, rounds, Vs, scale)
                    progress(1)
                    for i, V in enumerate(Vs):
                        part = slice_V(result, i, len(Vs))
                        t = part["totals"]
                        latency[policy, V] = (t["total_latency_s"], t["code"] == 0)
                        for V_row in (VS if not uses_V else (V,)):
                            totals.append(total_row(label, N, J, upload, variant, V_row, policy, uses_V, rounds, part))
                        for V_row in (PER_ROUND_VS if not uses_V else [V] if V in PER_ROUND_VS else []):
                            per_round += round_rows(label, V_row, policy, part)
                for V in VS:
                    base_d, ok_d = latency["dssra", V]
                    for policy in rules[1:]:
                        other, ok_o = latency[policy, V if policy in V_POLICIES or policy not in POLICIES else CLAIM_V]
                        if len(other) != len(base_d):
                            continue  # host-only rules run fewer seeds: no pairing
                        changes.append({"setting": label, "V": V, "baseline": policy,
                                        **paired_change(base_d, other, ok_d & ok_o)})
    return {"policies": totals, "policies-per-round": per_round, "policies-changes": changes}


def run_policy(scenario, policy: str, variant: str, seeds, rounds: int, Vs, scale: str) -> dict:
    """One rule on every seed, for each V (the seeds tiled over the V values)."""
    if policy in HOST_ONLY:
        return host_seeds(scenario, policy, variant, np.arange(HOST_SEEDS[scale]), rounds, Vs[0])
    tiled = np.tile(seeds, len(Vs))
    V = np.repeat(np.asarray(Vs, float), len(seeds))
    return run_seeds(scenario, policy, tiled, rounds, V=V, variant=variant)


def host_seeds(scenario, policy: str, variant: str, seeds, rounds: int, V: float) -> dict:
    """The host solvers' schedules in the device engine's result layout (for the host-only rules)."""
    t = {k: [] for k in ("total_latency_s", "total_cmp_s", "total_up_s", "max_Y", "mean_Gamma", "code")}
    t["violation_rounds"] = []
    r = {k: [] for k in ("tau_round_s", "charged", "Y_next", "Gamma")}
    for seed in seeds:
        res = run_schedule(scenario, ScheduleConfig(rounds=rounds, V=V, policy=policy, variant=variant, seed=int(seed),
                                                    progress=False, include_inputs=False))
        for k in ("total_latency_s", "total_cmp_s", "total_up_s", "max_Y"):
            t[k].append(res[k])
        t["mean_Gamma"].append(float(np.mean([np.mean(x["Gamma"]) for x in res["rounds"]])))
        t["code"].append(0)
        t["violation_rounds"].append([res["violating_rounds"]])
        r["tau_round_s"].append([x["tau_round_s"] for x in res["rounds"]])
        r["charged"].append([True] * rounds)
        r["Y_next"].append([x["Y_next"] for x in res["rounds"]])
        r["Gamma"].append([x["Gamma"] for x in res["rounds"]])
    return {"totals": {k: np.asarray(v) for k, v in t.items()}, "rounds": {k: np.asarray(v) for k, v in r.items()},
            "engine": "host"}


def slice_V(result: dict, i: int, count: int) -> dict:
    """The i-th V's seeds of a result whose seeds were tiled over `count` V values."""
    def part(x):
        x = np.asarray(x)
        n = x.shape[0] // count
        return x[i * n:(i + 1) * n]

    return {"totals": {k: part(v) for k, v in result["totals"].items()},
            "rounds": {k: part(v) for k, v in result["rounds"].items()}, "engine": result.get("engine", "device")}


def total_row(label, N, J, upload, variant, V, policy, uses_V, rounds, part) -> dict:
    t = part["totals"]
    ok = t["code"] == 0
    return {"setting": label, "N": N, "J": J, "tunable": upload, "variant": variant, "V": V, "policy": policy,
            "uses_V": uses_V, "rounds": rounds, "engine": part["engine"], "n": int(ok.sum()),
            "infeasible_seeds": int((~ok).sum()),
            **interval("total_latency_s", t["total_latency_s"][ok]),
            "total_cmp_s": float(np.mean(t["total_cmp_s"][ok])) if ok.any() else float("nan"),
            "total_up_s": float(np.mean(t["total_up_s"][ok])) if ok.any() else float("nan"),
            "max_Y": float(np.max(t["max_Y"])), "mean_max_Y": float(np.mean(t["max_Y"])),
            "mean_Gamma": float(np.mean(t["mean_Gamma"][ok])) if ok.any() else float("nan"),
            "violating_rounds": float(np.mean(np.sum(t["violation_rounds"], axis=-1)))}


def round_rows(label, V, policy, part) -> list[dict]:
    r = part["rounds"]
    charged = np.asarray(r["charged"], bool)
    acc = seeded.accumulated(r["tau_round_s"], charged)
    tau = np.where(charged, r["tau_round_s"], np.nan)
    maxY = np.where(charged, np.max(r["Y_next"], axis=-1), np.nan)
    gamma = np.where(charged, np.mean(r["Gamma"], axis=-1), np.nan)
    return [{"setting": label, "V": V, "policy": policy, "round": t, "n": int(acc["n"][t]),
             "tau_round_s": float(np.nanmean(tau[:, t])), "cum_latency_s": float(acc["cum_latency_s"][t]),
             "cum_latency_lo": float(acc["cum_latency_lo"][t]), "cum_latency_hi": float(acc["cum_latency_hi"][t]),
             "max_Y": float(np.nanmean(maxY[:, t])), "mean_Gamma": float(np.nanmean(gamma[:, t]))}
            for t in range(charged.shape[1]) if acc["n"][t] > 0]


def settings_of(totals: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["setting"] for r in totals))


def pick(rows: list[dict], **match) -> dict:
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


OFF_SCALE = ("random-feasible",)  # ~30× the others: drawn in its own panel so the others' gaps show
QUEUE_POLICIES = ("dssra",) + PAPER_BASELINES


def accumulated(per_round: list[dict], setting: str, V: float, policy: str) -> dict:
    """Rounds, the mean accumulated latency up to each round, and its 95% band when the table has
    one (`cum_latency_lo/hi`); without `cum_latency_s` the running sum of τ(t) (Eq. 26)."""
    sel = sorted((r for r in per_round if r["setting"] == setting and r["V"] == V and r["policy"] == policy),
                 key=lambda r: r["round"])
    if not sel:
        return {}
    if all(r.get("cum_latency_s") is not None for r in sel):
        mean = [r["cum_latency_s"] for r in sel]
    else:
        mean = list(np.cumsum([r["tau_round_s"] for r in sel]))
    has_band = all(r.get("cum_latency_lo") is not None and r.get("cum_latency_hi") is not None for r in sel)
    return {"round": [r["round"] for r in sel], "mean": mean,
            "lo": [r["cum_latency_lo"] for r in sel] if has_band else None,
            "hi": [r["cum_latency_hi"] for r in sel] if has_band else None,
            "n": sel[0].get("n")}


def short_setting(label: str) -> str:
    return label.replace("full upload, E_n^max 1000 J", "full upload (E_n^max 1000 J)")


def plot(tables: dict, out) -> None:
    plot_accumulated(tables, out)
    plot_queues(tables, out)


def plot_accumulated(tables: dict, out) -> None:
    """Fig. 11: accumulated latency Σ τ(t) over the rounds, per policy, one panel per setting at
    V = 0.01; `random-feasible` in a last panel of its own, on a log scale."""
    per_round = tables["policies-per-round"]
    settings = settings_of(tables["policies"])
    V = CLAIM_V if any(r["V"] == CLAIM_V for r in per_round) else per_round[0]["V"]
    policies = [p for p in dict.fromkeys(r["policy"] for r in per_round) if p not in OFF_SCALE]
    off_scale = [p for p in OFF_SCALE if any(r["policy"] == p for r in per_round)]
    panels = len(settings) + 1 + bool(off_scale)
    cols = min(4, panels)
    fig, axes = plots.figure(-(-panels // cols), cols, panel=(4.3, 3.3))
    flat = axes.ravel()
    n_seeds = None
    end = {}  # (setting, policy) → accumulated latency after the last round
    for k, (ax, setting) in enumerate(zip(flat, settings)):
        for i, policy in enumerate(policies + off_scale):
            curve = accumulated(per_round, setting, V, policy)
            if not curve:
                continue
            end[setting, policy] = curve["mean"][-1]
            if policy in off_scale:
                continue
            n_seeds = curve["n"] or n_seeds
            style = plots.style(i)
            ax.plot(curve["round"], curve["mean"], label=policy, markevery=plots.markevery(i, len(curve["round"])),
                    **style)
            plots.band(ax, curve["round"], curve["lo"], curve["hi"], style["color"])
        plots.label(ax, f"({k + 1}) {short_setting(setting)}", "round t [count]", "accumulated latency Σ τ(t) [s]")
    x = np.arange(len(settings))
    ax = flat[len(settings)]  # the gaps the claims are about, after the last round
    others = [p for p in policies if p != "dssra"]
    width = 0.8 / max(len(others), 1)
    for i, policy in enumerate(others):
        gap = [100 * (end[s, policy] / end[s, "dssra"] - 1) if (s, policy) in end and (s, "dssra") in end
               else np.nan for s in settings]
        ax.bar(x + (i - (len(others) - 1) / 2) * width, gap, width, color=plots.style(policies.index(policy))["color"])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, [str(k + 1) for k in x])
    plots.label(ax, "each policy against dssra after the last round", "setting [panel number]",
                "latency above dssra's [%]")
    if off_scale:
        ax = flat[len(settings) + 1]
        for i, policy in enumerate(["dssra"] + off_scale):
            ends = [end.get((s, policy), np.nan) for s in settings]
            ax.bar(x + (i - 0.5) * 0.4, ends, 0.4, color=plots.style((policies + off_scale).index(policy))["color"],
                   label=policy if policy in off_scale else None)
        ax.set_yscale("log")
        plots.log_ticks(ax.yaxis)
        ax.set_xticks(x, [str(k + 1) for k in x])
        plots.label(ax, f"{', '.join(off_scale)} (right) vs dssra (left) after the last round, log scale",
                    "setting [panel number]", "accumulated latency Σ τ(T) [s]")
    plots.hide_unused(axes, panels)
    plots.figure_legend(fig, flat[:panels], title=f"Fig. 11: accumulated latency of each scheduling policy, "
                        f"paper-bert, V = {V:g}")
    band_note = (f"Lines: mean over {n_seeds} seeds; bands: 95% interval of the mean." if n_seeds else
                 "One seeded run per policy (no interval).")
    plots.note(fig, [band_note, f"{', '.join(off_scale)} (a random plan among the feasible ones) accumulates "
                     "several times the others' latency; it is drawn in a panel of its own, on a log scale, so the "
                     "gaps between the other policies stay visible." if off_scale else ""])
    plots.save_figure(fig, out / "policies.png")


def plot_queues(tables: dict, out) -> None:
    """The queues max_n Y_n(t), the mean Γ_n(t) and Σ τ(t) of DSSRA and the paper's baselines, at
    V = 10 in the setting where the CU selection matters (N > J, LoRA upload)."""
    per_round, settings = tables["policies-per-round"], settings_of(tables["policies"])
    setting = next((s for s in settings if s.startswith("N=6") and "lora" in s), settings[0])
    V = 10.0 if any(r["V"] == 10.0 for r in per_round) else per_round[0]["V"]
    fig, axes = plots.figure(1, 3)
    dssra = accumulated(per_round, setting, V, "dssra").get("mean")
    for i, policy in enumerate(QUEUE_POLICIES):
        sel = sorted((r for r in per_round if r["setting"] == setting and r["policy"] == policy and r["V"] == V),
                     key=lambda r: r["round"])
        if not sel:
            continue
        t = [r["round"] for r in sel]
        kw = dict(label=policy, markevery=plots.markevery(i, len(t)), **plots.style(i))
        axes[0, 0].plot(t, [r["max_Y"] for r in sel], **kw)
        axes[0, 1].plot(t, [r["mean_Gamma"] for r in sel], **kw)
        if dssra is not None:
            mine = accumulated(per_round, setting, V, policy)["mean"]
            axes[0, 2].plot(t, [100 * (a / b - 1) for a, b in zip(mine, dssra)], **kw)
    plots.label(axes[0, 0], "largest virtual queue max_n Y_n(t)", "round t [count]", "max_n Y_n(t) [unitless]")
    plots.label(axes[0, 1], "mean convergence bound Γ_n(t) (Eq. 28)", "round t [count]", "mean Γ_n(t) [unitless]")
    plots.label(axes[0, 2], "accumulated latency against dssra's", "round t [count]",
                "Σ τ(t) above dssra's [%]")
    plots.figure_legend(fig, axes, title=f"Queues and latency, paper-bert, {short_setting(setting)}, V = {V:g}")
    plots.note(fig, "Curves that coincide are told apart by their markers and dashes (each marker series starts "
               "one round later than the previous policy's).")
    plots.save_figure(fig, out / "queues.png")


def policy_claims(totals: list[dict], changes: list[dict]) -> list[dict]:
    """fig11-*: DSSRA's total latency against each paper baseline at V = 0.01, per setting: the
    mean of the per-seed changes with its 95% interval."""
    out = []
    for label in settings_of(totals):
        dssra = pick(totals, setting=label, V=CLAIM_V, policy="dssra")
        N, J, rounds = dssra["N"], dssra["J"], dssra["rounds"]
        for base, (cid, paper) in PAPER_POLICY_CLAIMS.items():
            other = pick(totals, setting=label, V=CLAIM_V, policy=base)
            c = pick(changes, setting=label, V=CLAIM_V, baseline=base)
            mean, ci = c["change_pct"], [c["change_pct_lo"], c["change_pct_hi"]]
            ok = change_reproduced(mean, ci, paper)
            why = "" if ok else policy_why(base, mean, N, J, dssra, other, totals, label, ci)
            out.append(claim(cid, f"DSSRA (V = 0.01) total latency vs {base} scheduling", paper, mean,
                             f"paper-bert, {label}, V = {CLAIM_V:g}, {rounds} rounds, {c['n']} seeds", ok, why,
                             n=c["n"], ci95=ci))
    return out


def policy_why(base, change, N, J, dssra, other, totals, label, ci=None) -> str:
    """What in the model sets the measured gap (the figures are the sweep's own)."""
    uniform = pick(totals, setting=label, V=CLAIM_V, policy="uniform")
    lead = []
    if ci is not None and ci[0] <= 0 <= ci[1]:
        lead.append(f"the 95% interval of the change [{ci[0]:+.2f}, {ci[1]:+.2f}]% holds zero")
    share = dssra.get("total_up_s", 0.0) / dssra["total_latency_s"]
    parts = [f"the upload is {share:.0%} of DSSRA's round latency and carries the same θ^enc + z^enc for every "
             "policy at powers capped by the same C11', which leaves only the pipeline time and the channel matching "
             "to schedule",
             f"DSSRA's segment scheduling alone is worth "
             f"{change_pct(dssra['total_latency_s'], uniform['total_latency_s']):+.1f}% (against the uniform split "
             "with DSSRA's channels and power)"]
    if N <= J:
        parts.append(f"with N = {N} ≤ J = {J} every CU uploads, so {base}'s selection of CUs changes nothing: the gap "
                     "is DSSRA's plan and channel matching against the default plan on channels in index order")
    else:
        parts.append(f"with N = {N} > J = {J} a cluster without a channel still counts its pipeline time in "
                     "τ(t) = max_n(τ^pipe_n + τ^up_n), so the choice of CUs moves τ(t) only through the uploaders' "
                     "channels")
    if change > 0:
        parts.append(f"DSSRA trades latency for its queues (mean Γ {dssra['mean_Gamma']:.4g} vs "
                     f"{other['mean_Gamma']:.4g} for {base})")
    return "; ".join(lead + parts) + "."


def findings(tables: dict) -> dict:
    totals = tables["policies"]
    rounds = totals[0]["rounds"]
    notes = []
    for label in settings_of(totals):
        d = pick(totals, setting=label, V=CLAIM_V, policy="dssra")
        at = {r["policy"]: r["total_latency_s"] for r in totals if r["setting"] == label and r["V"] == CLAIM_V}
        change = {p: change_pct(d["total_latency_s"], at[p]) for p in at if p != "dssra"}
        others = ", ".join(f"{p} {c:+.2f}%" for p, c in change.items())
        notes.append(f"{label}, V = {CLAIM_V:g}: DSSRA {d['total_latency_s']:.4g} s over {rounds} rounds; its change "
                     f"against {others}.")
    bad = sorted({(r["setting"], r["policy"]) for r in totals if r["violating_rounds"]})
    if bad:
        notes.append("rounds with a violated constraint: " + "; ".join(f"{p} ({s})" for s, p in bad))
    for label in settings_of(totals):
        peak = max(r["max_Y"] for r in totals if r["setting"] == label and r["policy"] == "dssra")
        spread = [pick(totals, setting=label, V=V, policy="dssra")["total_latency_s"] for V in VS]
        notes.append(f"{label}: DSSRA's largest queue over every seed and V is {peak:.3g}"
                     + (" — the queues never grow, so V, which only weighs latency against the queues, changes "
                        "nothing here" if peak == 0 else
                        f"; its mean total latency at V = {', '.join(f'{V:g}' for V in VS)}: "
                        + ", ".join(f"{x:.5g}" for x in spread) + " s"))
    return {"rounds": rounds, "settings": settings_of(totals), "seeds": max(r["n"] for r in totals),
            "claims": policy_claims(totals, tables["policies-changes"]), "findings": notes}


register(Sweep("policies", compute, plot, findings, takes_tunable=True, takes_extra_policies=True))
