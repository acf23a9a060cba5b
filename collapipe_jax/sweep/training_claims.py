"""The learning claims (paper Fig. 6, 9, 10) measured on the training sweeps' tables.

Fig. 6 (`framework_claims`) reads `training` (per-round losses: NER's early rounds) and
`training-final` (final_* metrics per task, framework and seed), grouped by `tunable` when the tables carry it (else the full upload). Fig.
9/10 (`s_m_claims`) read `learning-vs-s-m`: the same seeds trained with fixed plans of S stages
and m micro-batches. Every claim is measured over the seeds the tables hold (`n`, and `ci95`, the
Student-t 95% interval of the mean of the per-seed values, paired by seed where two runs are
compared); a change counts as reproduced by `claims.change_reproduced` (the mean's rule and an
interval that excludes zero). Where a metric has not left its floor (`LEARNED`), the claim says
"not measured at this scale" instead of comparing untrained models.

Fig. 9/10 are measured once per pipeline reading (the rows' `schedule`; the setting names it).
Under `gpipe` they cannot reproduce: synchronous GPipe computes the gradient of the unsegmented
model for every S and m (tests/test_gpipe_grads.py) and dropout masks are keyed by sample and
layer, so with a fixed decision the learning curves coincide whatever S and m are. Under
`pipedream` (asynchronous 1F1B: an update per micro-batch, stale weights on the early stages) S
and m change the learning, and the claims say whether in the paper's direction.
"""

from __future__ import annotations

import numpy as np

from collapipe_jax.sweep.claims import change_reproduced, claim, mean_ci95

FEDERATED = ("collapipe", "vanilla-fl", "titanic")
# a loss difference below this fraction is no effect: runs with the same gradient differ by the
# upload noise and float rounding, far below it
MIN_EFFECT = 0.01
BASELINES = ("vanilla-fl", "pipeline", "titanic")
SAME_GRADIENT = ("synchronous GPipe gives every S and m the gradient of the unsegmented model (tested), so the "
                 "frameworks' runs differ only in the upload noise ε(p_n) of their decisions (Eq. 25) and PipeLine "
                 "in having no aggregation")
# a metric has left its floor when the mean over seeds of every compared run reaches this; below
# it (Toutiao's chance is 1/15, BLEU and F1 start at 0) a difference compares untrained models
LEARNED = {"accuracy": 0.6, "bleu": 1.0, "entity_f1": 0.1}
NOT_MEASURED = "not measured at this scale"


def seed_values(finals, tunable, task, framework, key) -> dict[int, float]:
    """Per seed (0 for tables without a seed column): the final value of `key` of one run."""
    return {int(r.get("seed", 0)): float(r.get(key) or 0.0) for r in finals
            if r.get("tunable", "full") == tunable and r["task"] == task and r["framework"] == framework}


def common_seeds(*per_seed: dict) -> list[int]:
    return sorted(set.intersection(*(set(v) for v in per_seed)))


def _final(finals, tunable, task, framework) -> dict | None:
    return next((r for r in finals if r.get("tunable", "full") == tunable and r["task"] == task
                 and r["framework"] == framework), None)


def _setting(final: dict, tunable: str, task: str, n: int) -> str:
    return (f"{task}, {final.get('model')} model, {final.get('rounds')} rounds, batch {final.get('batch')}, {tunable}, "
            f"{n} seed{'s' if n != 1 else ''}")


def bleu_claim(finals, tunable) -> dict | None:
    runs = {f: seed_values(finals, tunable, "multi30k", f, "final_bleu") for f in ("collapipe",) + BASELINES}
    if any(not v for v in runs.values()):
        return None
    seeds = common_seeds(*runs.values())
    means = {f: float(np.mean([v[s] for s in seeds])) for f, v in runs.items()}
    learned = min(means.values()) >= LEARNED["bleu"] and all(v[s] > 0 for v in runs.values() for s in seeds)
    measured = dict(means)
    if learned:
        least = [min(100.0 * (runs["collapipe"][s] / runs[f][s] - 1) for f in BASELINES) for s in seeds]
        mean, lo, hi = mean_ci95(least)
        measured["least_gain_pct"] = mean
        ok = change_reproduced(mean, (lo, hi), 19.5)
        gains = {f: float(np.mean([100.0 * (runs["collapipe"][s] / runs[f][s] - 1) for s in seeds])) for f in BASELINES}
        listed = ", ".join(f"{k} {v:+.1f}%" for k, v in gains.items())
        why = "" if ok else f"{SAME_GRADIENT}; the mean BLEU gains are {listed} (95% interval of the least gain " \
                            f"[{lo:+.1f}, {hi:+.1f}]%)."
    else:
        mean, lo, hi = mean_ci95([runs["collapipe"][s] for s in seeds])
        ok = False
        why = (f"{NOT_MEASURED}: the mean BLEU is below {LEARNED['bleu']} for "
               f"{[f for f, v in means.items() if v < LEARNED['bleu']] or 'a seed'} — the runs have not learned to "
               "translate yet, so no relative gain exists (n and ci95: CollaPipe's BLEU)")
    return claim("fig6-bleu", "CollaPipe's BLEU on Multi30K vs the baselines (the least relative gain)", 19.5,
                 measured, _setting(_final(finals, tunable, "multi30k", "collapipe"), tunable, "multi30k", len(seeds)),
                 ok, why, n=len(seeds), ci95=(lo, hi))


def ner_early_loss_claim(rows, finals, tunable) -> dict | None:
    """Fig. 6b/e: on NER, CollaPipe's training loss falls faster in the early rounds. Reproduced
    when its mean training loss over the first half of the rounds (rounds 0 .. ceil(R/2) - 1) is
    lower than every baseline's: per seed, the relative change against the baseline closest to
    it (the largest change), whose mean must be below -1% (`MIN_EFFECT`) with a 95% interval
    below zero."""
    def early_losses(framework) -> dict[int, float]:
        sel = [r for r in rows if r.get("tunable", "full") == tunable and r["task"] == "ner"
               and r["framework"] == framework]
        if not sel:
            return {}
        half = -(-(max(int(r["round"]) for r in sel) + 1) // 2)  # ceil(R / 2)
        out: dict[int, list] = {}
        for r in sel:
            if int(r["round"]) < half:
                out.setdefault(int(r.get("seed", 0)), []).append(float(r["loss"]))
        return {s: float(np.mean(v)) for s, v in out.items()}

    losses = {f: early_losses(f) for f in ("collapipe",) + BASELINES}
    if any(not v for v in losses.values()):
        return None
    seeds = common_seeds(*losses.values())
    changes = {f: [100.0 * (losses["collapipe"][s] / losses[f][s] - 1) for s in seeds] for f in BASELINES}
    closest = [max(changes[f][i] for f in BASELINES) for i in range(len(seeds))]  # paired by seed
    mean, lo, hi = mean_ci95(closest)
    f1 = {f: seed_values(finals, tunable, "ner", f, "final_entity_f1") for f in ("collapipe",) + BASELINES}
    f1_mean = {f: float(np.mean([v[s] for s in seeds if s in v])) for f, v in f1.items() if v}
    learned = bool(f1_mean) and min(f1_mean.values()) >= LEARNED["entity_f1"]
    ok = learned and mean < -100 * MIN_EFFECT and hi < 0
    listed = ", ".join(f"{f} {float(np.mean(v)):+.2f}%" for f, v in changes.items())
    if not learned:
        why = (f"{NOT_MEASURED}: the mean final entity F1 is below {LEARNED['entity_f1']} for "
               f"{[f for f, v in f1_mean.items() if v < LEARNED['entity_f1']]}")
    else:
        why = "" if ok else (f"{SAME_GRADIENT}; CollaPipe's mean early-round loss against each baseline: {listed} "
                             f"(the closest baseline per seed: {mean:+.2f}%, 95% interval [{lo:+.2f}, {hi:+.2f}]%)")
    return claim("fig6-ner-early-loss", "on NER, CollaPipe's training loss falls faster in the early rounds than the "
                 "baselines' (reproduced when its mean loss over the first half of the rounds is more than 1% below "
                 "every baseline's, the 95% interval of the change against the closest one below zero; ci95: that "
                 "change in %)", "faster early loss reduction",
                 {"closest_change_pct": mean, **{f"change_vs_{f}_pct": float(np.mean(v)) for f, v in changes.items()},
                  **{f"final_entity_f1_{f}": v for f, v in f1_mean.items()}},
                 _setting(_final(finals, tunable, "ner", "collapipe"), tunable, "ner", len(seeds)),
                 ok, why, n=len(seeds), ci95=(lo, hi))


def accuracy_claims(finals, tunable) -> list[dict]:
    out = []
    for cid, other, paper in (("fig6-accuracy-vs-pipeline", "pipeline", 1.82),
                              ("fig6-accuracy-vs-titanic", "titanic", 0.15)):
        a = seed_values(finals, tunable, "toutiao", "collapipe", "final_accuracy")
        b = seed_values(finals, tunable, "toutiao", other, "final_accuracy")
        if not a or not b:
            continue
        seeds = common_seeds(a, b)
        mean, lo, hi = mean_ci95([100.0 * (a[s] - b[s]) for s in seeds])  # paired by seed
        acc_a, acc_b = float(np.mean([a[s] for s in seeds])), float(np.mean([b[s] for s in seeds]))
        learned = min(acc_a, acc_b) >= LEARNED["accuracy"]
        ok = learned and change_reproduced(mean, (lo, hi), paper)
        if not learned:
            why = (f"{NOT_MEASURED}: the mean accuracies are {acc_a:.4f} (CollaPipe) and {acc_b:.4f} ({other}), "
                   f"below {LEARNED['accuracy']} — the runs have not learned enough for a difference to mean anything")
        else:
            why = "" if ok else (f"{SAME_GRADIENT}; the mean accuracies are {acc_a:.4f} (CollaPipe) and {acc_b:.4f} "
                                 f"({other}), a difference of {mean:+.2f} points with 95% interval "
                                 f"[{lo:+.2f}, {hi:+.2f}]")
        out.append(claim(cid, f"CollaPipe's Toutiao accuracy minus {other}'s, in percentage points", paper,
                         {"difference_pp": mean, "collapipe": acc_a, other: acc_b},
                         _setting(_final(finals, tunable, "toutiao", "collapipe"), tunable, "toutiao", len(seeds)),
                         ok, why, n=len(seeds), ci95=(lo, hi)))
    return out


def plan_runs(rows, task: str, metric: str) -> list[dict]:
    """Per (S, m) plan of the learning-vs-s-m sweep and seed (0 without a seed column): final
    metric and loss."""
    out = []
    for S, m, seed in dict.fromkeys((r["S"], r["m"], int(r.get("seed", 0))) for r in rows if r["task"] == task):
        runs = [r for r in rows if r["task"] == task and (r["S"], r["m"], int(r.get("seed", 0))) == (S, m, seed)]
        last = runs[-1]
        evaluated = [r for r in runs if r.get(f"metric_{metric}") is not None]
        out.append({"S": S, "m": m, "seed": seed, "loss": float(last["loss"]),
                    "metric": float(evaluated[-1][f"metric_{metric}"]) if evaluated else 0.0,
                    "rounds": len(runs)})
    return out


def by_plan(runs) -> dict[tuple, list[dict]]:
    """The plans' runs, one list per (S, m) in order of first appearance, sorted by seed."""
    plans = {}
    for r in runs:
        plans.setdefault((r["S"], r["m"]), []).append(r)
    return {p: sorted(v, key=lambda r: r["seed"]) for p, v in plans.items()}


def loss_spread(runs) -> float:
    losses = [r["loss"] for r in runs]
    return (max(losses) - min(losses)) / min(losses)


def plan_means(plans: dict, seeds: list[int]) -> dict[tuple, dict[str, float]]:
    return {p: {k: float(np.mean([r[k] for r in v if r["seed"] in seeds])) for k in ("metric", "loss")}
            for p, v in plans.items()}


def per_seed(runs, key: str) -> dict[int, float]:
    return {r["seed"]: r[key] for r in runs}


PAPER_BEST = (2, 2)  # Fig. 9: the Transformer's best plan


def fig9_claim(rows, setting: str) -> dict | None:
    """Reproduced when (S, m) = (2, 2) has the highest mean BLEU and its paired per-seed gain over
    the runner-up plan has a 95% interval above zero (`ci95`: that gain in BLEU points; without a
    (2, 2) plan, the gain of the best plan over the runner-up)."""
    plans = by_plan(plan_runs(rows, "multi30k", "bleu"))
    if len(plans) < 2:
        return None
    seeds = common_seeds(*({r["seed"] for r in v} for v in plans.values()))
    mean_of = plan_means(plans, seeds)
    ranked = sorted(mean_of, key=lambda p: (-mean_of[p]["metric"], mean_of[p]["loss"]))  # highest BLEU, then loss
    best = ranked[0]
    focus = PAPER_BEST if PAPER_BEST in plans else best
    rival = next(p for p in ranked if p != focus)
    a, b = per_seed(plans[focus], "metric"), per_seed(plans[rival], "metric")
    gain, lo, hi = mean_ci95([a[s] - b[s] for s in seeds])  # paired by seed
    spread = float(np.mean([loss_spread([r for v in plans.values() for r in v if r["seed"] == s]) for s in seeds]))
    floor = min(v["metric"] for v in mean_of.values())
    learned = floor >= LEARNED["bleu"]
    ok = learned and best == PAPER_BEST and lo > 0
    listed = ", ".join(f"({S}, {m}) {v['metric']:.3g}" for (S, m), v in mean_of.items())
    if not learned:
        why = (f"{NOT_MEASURED}: the lowest mean BLEU over the plans is {floor:.3g}, below {LEARNED['bleu']} "
               f"(mean BLEU per plan: {listed})")
    elif ok:
        why = ""
    elif PAPER_BEST not in plans:
        why = f"the plans {list(plans)} hold no (2, 2)"
    else:
        why = (f"mean BLEU per plan: {listed}; (2, 2) minus {rival}: {gain:+.3g} BLEU, 95% interval "
               f"[{lo:+.3g}, {hi:+.3g}]" + (f"; {SAME_S_M}" if spread <= MIN_EFFECT else ""))
    return claim("fig9-best-S-m-transformer", "the Transformer learns best at S = 2, m = 2 (reproduced when (2, 2) "
                 "has the highest mean BLEU and its paired gain over the runner-up plan has a 95% interval above "
                 "zero; ci95: that gain in BLEU points)", {"S": 2, "m": 2},
                 {"S": best[0], "m": best[1], "bleu": mean_of[best]["metric"], "loss": mean_of[best]["loss"],
                  "bleu_gain_over_runner_up": gain, "relative_loss_spread": spread},
                 f"{setting}, {len(seeds)} seeds", ok, why, n=len(seeds), ci95=(lo, hi))


def fig10_claim(rows, setting: str) -> dict | None:
    plans = by_plan(plan_runs(rows, "ner", "entity_f1"))
    if not plans:
        return None
    full = max(S for S, _ in plans)
    ms = sorted(m for S, m in plans if S == full)
    if len(ms) < 2:
        return None
    small, large = plans[(full, ms[0])], plans[(full, ms[-1])]
    seeds = common_seeds({r["seed"] for r in small}, {r["seed"] for r in large})
    loss_s, loss_l = per_seed(small, "loss"), per_seed(large, "loss")
    change, lo, hi = mean_ci95([100.0 * (loss_s[s] / loss_l[s] - 1) for s in seeds])  # paired by seed
    mean = lambda runs, k: float(np.mean([r[k] for r in runs if r["seed"] in seeds]))  # noqa: E731
    floor = min(mean(small, "metric"), mean(large, "metric"))
    learned = floor >= LEARNED["entity_f1"]
    ok = learned and change < -100 * MIN_EFFECT and hi < 0
    if not learned:
        why = (f"{NOT_MEASURED}: at S = {full} the mean entity F1 is {mean(small, 'metric'):.3g} (m = {ms[0]}) and "
               f"{mean(large, 'metric'):.3g} (m = {ms[-1]}), below {LEARNED['entity_f1']}")
    else:
        why = "" if ok else (f"at S = {full}, m = {ms[0]} ends at mean loss {mean(small, 'loss'):.4g} and m = "
                             f"{ms[-1]} at {mean(large, 'loss'):.4g} ({change:+.2g}%, 95% interval "
                             f"[{lo:+.2g}, {hi:+.2g}]%)" + (f"; {SAME_S_M}" if abs(change) <= 100 * MIN_EFFECT else ""))
    return claim("fig10-smaller-m-better", "on BERT NER a smaller m converges better (reproduced when the smallest "
                 "m ends with a mean training loss more than 1% below the largest m's, the 95% interval of the "
                 "paired change below zero)", "smaller m, lower loss",
                 {"smallest_m": ms[0], "loss_at_smallest_m": mean(small, "loss"), "largest_m": ms[-1],
                  "loss_at_largest_m": mean(large, "loss"), "loss_change_pct": change,
                  "f1_at_smallest_m": mean(small, "metric"), "f1_at_largest_m": mean(large, "metric")},
                 f"{setting}, {len(seeds)} seeds", ok, why, n=len(seeds), ci95=(lo, hi))


SAME_S_M = ("synchronous GPipe gives every S and m the gradient of the unsegmented model and dropout is keyed by "
            "sample and layer, so with the same seeds the plans learn the same")


def framework_claims(tables: dict) -> list[dict]:
    """Fig. 6: BLEU, NER's early training loss and accuracy of CollaPipe against the baselines, per
    tunable setting."""
    finals = tables["training-final"]
    out = []
    for tunable in dict.fromkeys(r.get("tunable", "full") for r in finals):
        out += [c for c in (bleu_claim(finals, tunable), ner_early_loss_claim(tables["training"], finals, tunable),
                            *accuracy_claims(finals, tunable)) if c is not None]
    return out


READINGS = ("gpipe", "pipedream")  # the pipeline readings (sweep/training.py SCHEDULES)


def s_m_claims(tables: dict, setting: str | dict) -> list[dict]:
    """Fig. 9 (Multi30K) and 10 (NER) from the learning-vs-s-m sweep, once per pipeline reading in
    the table (rows without a `schedule` are GPipe's); the setting (one string, or one per task)
    names the reading."""
    rows = tables["learning-vs-s-m"]
    per_task = setting if isinstance(setting, dict) else {"multi30k": setting, "ner": setting}
    out = []
    for reading in READINGS:
        sel = [r for r in rows if (r.get("schedule") or READINGS[0]) == reading]
        if sel:
            named = {task: f"pipeline reading {reading}, {text}" if text else f"pipeline reading {reading}"
                     for task, text in per_task.items()}
            out += [c for c in (fig9_claim(sel, named.get("multi30k")), fig10_claim(sel, named.get("ner")))
                    if c is not None]
    return out
