"""The frameworks compared by their decisions alone (paper Fig. 7 and 8, and the abstract's
end-to-end latency): CollaPipe (DSSRA), CollaPipe w/o segment scheduling (uniform), VanillaFL,
PipeLine and TITANIC, each deciding T rounds of the same seeded draws with its own rule
(scheduling/frameworks.py), charged by the system model, over many seeds (quick 128, paper
10,000) on the device engine; every change is taken seed by seed and reported as its mean with a
95% interval. No training: what the figures compare
is time, and the decisions do not depend on the losses.

Per framework and round: the on-device computation time of each cluster's pipeline (τ^pipe with
free D2D links), the D2D share and the upload (`system.report.time_split`); the round's
computation time is the slowest cluster's, accumulated over the rounds as in Fig. 7/8. The
end-to-end latency is Σ_t τ(t) (Eq. 26). Fig. 7 is the Transformer (Multi30K), Fig. 8 BERT
(Toutiao); each runs under both variants and both uploads (the full encoder with E_n^max raised
to 1000 J, which Table II cannot pay for; and LoRA adapters on Table II as published). A round
whose decision breaks a constraint (VanillaFL's whole BERT encoder exceeds a device's memory,
C7) is counted in `violating_rounds` and named in the claim's setting.
"""

from __future__ import annotations

import math

import numpy as np

from collapipe_jax.scenario import scenario_preset
from collapipe_jax.scheduling.frameworks import FRAMEWORKS
from collapipe_jax.scheduling.device.run import VIOLATIONS
from collapipe_jax.sweep.base import DEFAULT_TUNABLE, Sweep, register, tunables
from collapipe_jax.sweep import plots
from collapipe_jax.sweep.claims import change_reproduced, claim
from collapipe_jax.sweep.seeded import SEEDS, interval, paired_change, run_seeds
from collapipe_jax.system.latency import VARIANTS

RELAXED_E_MAX_N_J = 1000.0
# (label, registry policy, uploads the model): the frameworks of §VI plus CollaPipe w/o SS
ENTRANTS = (("collapipe", "dssra", True), ("collapipe-wo-ss", "uniform", True)) + tuple(
    (name, fw.policy, fw.federated) for name, fw in FRAMEWORKS.items() if name != "collapipe")
FIGURES = (("fig7", "paper-transformer"), ("fig8", "paper-bert"))
# id: (figure, framework, reference, paper's change of the framework's accumulated computation time in %)
COMPUTATION_CLAIMS = {
    "fig7-vs-vanillafl": ("fig7", "collapipe", "vanilla-fl", -15.09),
    "fig8-vs-titanic": ("fig8", "collapipe", "titanic", -18.94),
    "fig8-vs-pipeline": ("fig8", "collapipe", "pipeline", -40.55),
    "fig8-wo-ss": ("fig8", "collapipe-wo-ss", "collapipe", 22.45),
    "fig8-vanillafl-vs-pipeline": ("fig8", "vanilla-fl", "pipeline", -29.98),
}
ABSTRACT_BOUND = -48.98  # "reduces end-to-end latency by at least 48.98%"
BASELINE_FRAMEWORKS = ("vanilla-fl", "pipeline", "titanic")
# the paired per-seed changes the claims read: (framework, reference)
PAIRS = tuple(dict.fromkeys([(name, ref) for _, name, ref, _ in COMPUTATION_CLAIMS.values()]
                            + [("collapipe", base) for base in BASELINE_FRAMEWORKS]))


def framework_scenario(model: str, tunable: str):
    s = scenario_preset(model).replace(tunable=tunable)
    return s if tunable != "full" else s.replace(E_max_n_j=RELAXED_E_MAX_N_J)


def run_framework(scenario, policy: str, uploads_model: bool, variant: str, rounds: int, seeds) -> dict:
    """T rounds of one framework's rule on every seed (device engine): per-seed accumulated times
    (computation, D2D, upload, Σ τ(t)), violations and the mean S and m of its decisions."""
    result = run_seeds(scenario, policy, seeds, rounds, variant=variant, uploads_model=uploads_model)
    t, r = result["totals"], result["rounds"]
    charged = np.asarray(r["charged"], bool)[..., None]
    breaches = np.asarray(t["violation_rounds"]).sum(axis=0)
    return {"per_seed": {k: np.asarray(t[k]) for k in ("total_cmp_s", "total_dd_s", "total_up_s", "total_latency_s")},
            "ok": np.asarray(t["code"]) == 0,
            "violating_rounds": float(np.mean(np.asarray(r["broken"]).any(axis=-1).sum(axis=-1))),
            "violated": ",".join(name for name, n in zip(VIOLATIONS, breaches) if n > 0),
            "mean_S": float(np.sum(np.where(charged, r["S"], 0)) / max(1, charged.sum() * scenario.N)),
            "mean_m": float(np.sum(np.where(charged, r["m"], 0)) / max(1, charged.sum() * scenario.N))}


def compute(scale: str, work_dir, progress, tunable: str = DEFAULT_TUNABLE) -> dict:
    rounds = 30 if scale == "quick" else 100
    seeds = np.arange(SEEDS[scale])
    progress.expect(len(FIGURES) * len(tunables(tunable)) * len(VARIANTS) * len(ENTRANTS))
    rows, changes = [], []
    for figure, model in FIGURES:
        for upload in tunables(tunable):
            scenario = framework_scenario(model, upload)
            for variant in VARIANTS:
                runs = {}
                for name, policy, uploads_model in ENTRANTS:
                    runs[name] = run = run_framework(scenario, policy, uploads_model, variant, rounds, seeds)
                    ok = run["ok"]
                    rows.append({"figure": figure, "model": model, "tunable": upload, "variant": variant,
                                 "framework": name, "rounds": rounds, "n": int(ok.sum()),
                                 **{k: v for part in run["per_seed"] for k, v in interval(part, run["per_seed"][part][ok]).items()},
                                 **{k: run[k] for k in ("violating_rounds", "violated", "mean_S", "mean_m")}})
                    progress(1)
                for a, b in PAIRS:
                    ok = runs[a]["ok"] & runs[b]["ok"]
                    for part in ("total_cmp_s", "total_latency_s"):
                        changes.append({"figure": figure, "model": model, "tunable": upload, "variant": variant,
                                        "framework": a, "reference": b, "quantity": part,
                                        **paired_change(runs[a]["per_seed"][part], runs[b]["per_seed"][part], ok)})
    return {"frameworks": rows, "frameworks-changes": changes}


def groups(rows: list[dict]):
    """(figure, model, tunable, variant) → {framework: row}."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["figure"], r["model"], r["tunable"], r["variant"]), {})[r["framework"]] = r
    return out


def setting_label(model: str, tunable: str, variant: str, rounds: int) -> str:
    upload = "full upload, E_n^max 1000 J" if tunable == "full" else f"{tunable}, Table II"
    return f"{model}, {upload}, {variant}, {rounds} rounds"


def breach_note(*rows) -> str:
    bad = [f"{r['framework']} breaks {r['violated']} in {r['violating_rounds']:.3g}/{r['rounds']} rounds (mean over seeds)"
           for r in rows if r["violating_rounds"]]
    return f" [{'; '.join(bad)}]" if bad else ""


PARTS = (("total_cmp_s", "computation", "tab:blue"), ("total_dd_s", "D2D transfers", "tab:orange"),
         ("total_up_s", "upload", "tab:gray"))


def error(rows: list[dict], field: str):
    """Asymmetric error bars from `<field>_lo/_hi` (an interval over seeds), or None without them."""
    stem = field[:-2] if field.endswith("_s") else field
    key = field if all(f"{field}_lo" in r for r in rows) else stem  # the sweep writes `<field>_lo`
    lo, hi = [r.get(f"{key}_lo") for r in rows], [r.get(f"{key}_hi") for r in rows]
    if any(v is None for v in lo + hi):
        return None
    values = [r[field] for r in rows]
    return np.array([[max(v - low, 0.0) for v, low in zip(values, lo)], [max(h - v, 0.0) for v, h in zip(values, hi)]])


def plot(tables: dict, out) -> None:
    """Fig. 7/8: per setting (rows), the accumulated computation and D2D time of each framework in
    panels of their own (what the claims compare), then the end-to-end latency Σ τ(t) split into
    computation / D2D / upload, a column per upload."""
    rows = tables["frameworks"]
    by = groups(rows)
    settings = list(dict.fromkeys((f, m, v) for f, m, _, v in by))
    uploads = list(dict.fromkeys(k[2] for k in by))
    names = list(dict.fromkeys(r["framework"] for r in rows))
    y = np.arange(len(names))
    fig, axes = plots.figure(len(settings), 2 + len(uploads), panel=(3.6, 2.6), sharey="row")
    with_interval = hatched = False
    for row, (figure_id, model, variant) in zip(axes, settings):
        head = f"{figure_id.replace('fig', 'Fig. ')}, {model}, {variant}"
        g0 = by.get((figure_id, model, uploads[0], variant), {})
        # computation and D2D are the pipelines' and do not depend on the upload unless the decisions do
        same = all(np.isclose(by[(figure_id, model, u, variant)][n][f], g0[n][f], rtol=1e-9)
                   for u in uploads if (figure_id, model, u, variant) in by
                   for n in names if n in g0 for f in ("total_cmp_s", "total_dd_s"))
        shown = uploads[:1] if same else uploads
        hatched |= len(shown) > 1
        h = 0.8 / len(shown)
        for j, (field, part, color) in enumerate(PARTS[:2]):
            ax = row[j]
            for u_i, upload in enumerate(shown):
                g = by.get((figure_id, model, upload, variant), {})
                sel = [g[n] for n in names if n in g]
                err = error(sel, field)
                with_interval |= err is not None
                ax.barh(y[:len(sel)] + (u_i - (len(shown) - 1) / 2) * h, [r[field] for r in sel], h, xerr=err,
                        color=color, hatch="" if u_i == 0 else "//", edgecolor="white" if u_i else color,
                        capsize=2, label=part)
            which = "both uploads" if same and len(uploads) > 1 else ", ".join(shown)
            plots.label(ax, f"{head}: {part} ({which})", f"accumulated {part} time [s]", None)
        for ax, upload in zip(row[2:], uploads):
            g = by.get((figure_id, model, upload, variant), {})
            sel = [g[n] for n in names if n in g]
            left = np.zeros(len(sel))
            for field, part, color in PARTS:
                values = np.array([r[field] for r in sel])
                ax.barh(y[:len(sel)], values, 0.7, left=left, color=color, label=part)
                left += values
            err = error(sel, "total_latency_s")
            if err is not None:
                ax.errorbar(left, y[:len(sel)], xerr=err, fmt="none", ecolor="k", capsize=2)
            share = (100 * sum(r["total_up_s"] for r in sel) / sum(r["total_latency_s"] for r in sel)) if sel else 0
            plots.label(ax, f"{head}: Σ τ(t), {upload} upload (upload {share:.1f}%)", "end-to-end latency Σ τ(t) [s]",
                        None)
        row[0].set_yticks(y, names)
        row[0].invert_yaxis()
        row[0].set_ylabel("framework", fontsize=plots.FONT["label"])
    rounds = rows[0]["rounds"] if rows else "?"
    plots.figure_legend(fig, axes, title=f"Fig. 7/8: accumulated time of each framework over {rounds} rounds")
    plots.note(fig, ["The upload is most of Σ τ(t): the first two columns show the computation and D2D times "
                     "the Fig. 7/8 claims compare on scales of their own.",
                     "full upload: E_n^max raised to 1000 J (Table II cannot pay for it); "
                     + upload_bars_note(uploads, hatched)
                     + (" Error bars: 95% interval over seeds." if with_interval else "")])
    plots.save_figure(fig, out / "frameworks.png")


def upload_bars_note(uploads: list[str], hatched: bool) -> str:
    """What the first two columns' bars stand for: one bar per framework where the computation and
    D2D times are the same under every upload, a hatched second bar where they differ."""
    if hatched:
        return f"hatched bars: the {uploads[1]} upload, where its computation and D2D times differ."
    if len(uploads) > 1:
        return f"computation and D2D times are the same under the {' and '.join(uploads)} uploads in every setting."
    return ""


def change_of(changes: list[dict], key, name: str, ref: str, quantity: str) -> dict:
    figure, model, upload, variant = key
    return next(c for c in changes if (c["figure"], c["model"], c["tunable"], c["variant"], c["framework"],
                                       c["reference"], c["quantity"]) == (figure, model, upload, variant, name, ref,
                                                                          quantity))


def framework_claims(rows: list[dict], changes: list[dict]) -> list[dict]:
    """fig7/fig8 computation-time changes and the abstract's end-to-end latency, each the mean of
    the per-seed changes with its 95% interval."""
    out = []
    for key, g in groups(rows).items():
        figure, model, upload, variant = key
        setting = setting_label(model, upload, variant, g["collapipe"]["rounds"])
        for cid, (fig, name, ref, paper) in COMPUTATION_CLAIMS.items():
            if fig != figure:
                continue
            a, b = g[name], g[ref]
            c = change_of(changes, key, name, ref, "total_cmp_s")
            ci = [c["change_pct_lo"], c["change_pct_hi"]]
            ok = change_reproduced(c["change_pct"], ci, paper)
            out.append(claim(cid, f"accumulated on-device computation time of {name} vs {ref}", paper, c["change_pct"],
                             f"{setting}, {c['n']} seeds" + breach_note(a, b), ok,
                             "" if ok else computation_why(a, b, variant, ci), n=c["n"], ci95=ci))
        per_base = {base: change_of(changes, key, "collapipe", base, "total_latency_s") for base in BASELINE_FRAMEWORKS}
        changes_pct = {base: c["change_pct"] for base, c in per_base.items()}
        worst = max(changes_pct, key=changes_pct.get)
        ci = [per_base[worst]["change_pct_lo"], per_base[worst]["change_pct_hi"]]
        # an "at least" claim: the least reduction, i.e. the largest change (and its whole interval),
        # must reach the bound; named as changes, so that a positive one reads as slower
        ok = ci[1] <= ABSTRACT_BOUND
        out.append(claim("abstract-latency", "CollaPipe's change of the end-to-end latency Σ τ(t) against every "
                         "framework, in % (negative = faster, positive = slower); the largest change (against the "
                         f"framework it gains least on) must be ≤ {ABSTRACT_BOUND}%, a reduction of at least "
                         f"{-ABSTRACT_BOUND}%", f"≤ {ABSTRACT_BOUND}",
                         {"largest_change_pct": changes_pct[worst],
                          **{f"change_vs_{k}_pct": v for k, v in changes_pct.items()}},
                         f"{setting}, {per_base[worst]['n']} seeds" + breach_note(*(g[b] for b in BASELINE_FRAMEWORKS)),
                         ok, "" if ok else latency_why(g, changes_pct), n=per_base[worst]["n"], ci95=ci))
    return out


def computation_why(a: dict, b: dict, variant: str, ci=None) -> str:
    """The model's reason for the measured gap, assembled from what the two rows show."""
    facts = [] if ci is None or not ci[0] <= 0 <= ci[1] else [
        f"the 95% interval of the change [{ci[0]:+.2f}, {ci[1]:+.2f}]% holds zero"]
    facts += [f"{a['framework']} computes {a['total_cmp_s']:.4g} s (mean S {a['mean_S']:.2g}, m {a['mean_m']:.3g}) "
             f"against {b['framework']}'s {b['total_cmp_s']:.4g} s (S {b['mean_S']:.2g}, m {b['mean_m']:.3g})"]
    same = math.isclose(a["total_cmp_s"], b["total_cmp_s"], rel_tol=1e-6)
    one_device = a["mean_S"] == b["mean_S"] == 1
    if same and one_device:
        facts.append("both put the encoder on one device, the fastest that holds it"
                     + (", and one device's computation b δ a_k does not depend on m in the GPipe makespan"
                        if variant == "consistent" and a["mean_m"] != b["mean_m"] else ", with the same m"))
    elif same:
        facts.append("the same computation")
    pa, pb = a["total_cmp_s"] + a["total_dd_s"], b["total_cmp_s"] + b["total_dd_s"]
    if a["total_cmp_s"] > b["total_cmp_s"] and pa < pb:
        facts.append(f"with the D2D time the pipelines take {pa:.4g} s and {pb:.4g} s: {a['framework']} trades "
                     "computation for fewer D2D transfers, as DSSRA minimises the round latency (computation + D2D + "
                     "upload), not the computation alone")
    # the direction in which m moves the computation: down with m under both readings (paper: the
    # b̂ o_l part of every chunk; consistent: the bubble)
    m_explains = (a["mean_m"] != b["mean_m"] and not one_device and not same
                  and (a["mean_m"] < b["mean_m"]) == (a["total_cmp_s"] > b["total_cmp_s"]))
    if not same and (a["mean_S"] != b["mean_S"] or not m_explains):
        facts.append("a pipeline's computation is set by its slowest stage (max_k δ_k τ^cmp_k), so which devices "
                     "hold how many TEBs decides it")
    if m_explains:
        facts.append("under Eq. 15 as printed z^s + g^s and o'_l are charged whole in each of the S + m − 1 chunks "
                     "while the b̂ o_l computation shrinks with b̂ = b/m, so the run with the smaller m carries more "
                     "computation per chunk" if variant == "paper" else
                     "in the GPipe makespan the computation b (Σ_k a_k − max_k a_k)/m + b max_k a_k shrinks with m "
                     "(a smaller bubble)")
    return "; ".join(facts) + "."


def latency_why(g: dict, changes: dict) -> str:
    """Why CollaPipe's largest change of Σ τ(t) is above −48.98% (a reduction short of 48.98%,
    or slower), from the rows of one setting."""
    c = g["collapipe"]
    worst = max(changes, key=changes.get)
    w = g[worst]
    pace = "slower" if changes[worst] > 0 else "faster"
    facts = [f"the largest change is against {worst}: {changes[worst]:+.1f}% (CollaPipe {pace})"]
    if worst == "pipeline" and w["total_up_s"] < 0.5 * c["total_up_s"]:
        facts.append("PipeLine has no federated aggregation and uploads only z^enc, not θ^enc, so its upload "
                     f"({w['total_up_s']:.4g} s) is far below CollaPipe's ({c['total_up_s']:.4g} s)")
    if w["violating_rounds"]:
        facts.append(f"{worst} breaks {w['violated']} in {w['violating_rounds']:.3g}/{w['rounds']} rounds (the whole "
                     "encoder on one device, beyond its memory), which CollaPipe's decisions may not, and so it has "
                     f"no D2D time ({w['total_dd_s']:.3g} s against CollaPipe's {c['total_dd_s']:.4g} s)")
    share = c["total_up_s"] / c["total_latency_s"]
    facts.append(f"the upload is {share:.1%} of CollaPipe's latency; it carries the same bits for the federated "
                 "frameworks at powers capped by the same C11', so scheduling can only cut the rest")
    return "; ".join(facts) + "."


def findings(tables: dict) -> dict:
    rows = tables["frameworks"]
    notes = []
    for (figure, model, upload, variant), g in groups(rows).items():
        notes.append(f"{figure} ({model}, {upload}, {variant}): accumulated computation / D2D / upload [s]: "
                     + "; ".join(f"{n} {r['total_cmp_s']:.3g} / {r['total_dd_s']:.3g} / {r['total_up_s']:.3g}"
                                 for n, r in g.items()) + breach_note(*g.values()))
    return {"rounds": rows[0]["rounds"], "seeds": max(r["n"] for r in rows),
            "claims": framework_claims(rows, tables["frameworks-changes"]), "findings": notes}


register(Sweep("frameworks", compute, plot, findings, takes_tunable=True))
