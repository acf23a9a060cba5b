"""`results/REPORT.md` and `results/claims.json`: the paper's claims next to what the sweeps measured.

A sweep's summary may carry `claims` in the format of `sweep/claims.py`; every value in the
"measured" column comes from that sweep's own tables, never from this module. `claims.json` is
the list of all of them (sweep order). REPORT.md renders, in this order:

1. the summary: one row per claim id (the paper's value, the range measured across settings,
   "k of n settings" reproduced, a short why pointing at the notes);
2. the findings a reader could misread, computed from the sweeps' tables where they ran;
3. the per-setting table, each distinct "why" written once as a numbered note and cited by number;
4. one section per sweep: its figures, its findings (sentences) and links to its CSV and summary
   files (the numbers themselves stay in those files, not in the report).
"""

from __future__ import annotations

import csv
import math
import pathlib
import re
from collections import defaultdict
from numbers import Real

from collapipe_jax.io import atomic_write_json, atomic_write_text
from collapipe_jax.sweep.claims import CLAIM_IDS, REPRODUCED_RULE, check_claim, missing_ids

SAME_LATENCY_REASON = (
    "the system model charges what a cluster computes and uploads, and the three tasks' models share "
    "their encoder: the same d, heads, d_ff, number of TEBs and sequence length give the same θ^enc, "
    "z^s, g^s, z^enc and γ_0 (`models/cost.py`), o_l and o'_l are Table II's, and the channel and "
    "device draws come from the same seed. The vocabularies, the embedding on the CU and the head "
    "on the edge server differ between tasks, but none of them is uploaded, so none is charged")
V_REASON = (
    "while every queue Y_n is 0 the round objective V·τ(t) + Σ_n Y_n·Γ_n is V·τ(t), whose minimiser "
    "does not depend on V > 0; the queues stay 0 while each Γ_n (Eq. 28) stays under Γ^max, as DSSRA's "
    "plans keep it in Table II's settings when N ≤ J (every cluster has a channel and uploads at its "
    "power cap, which keeps the noise term ε_n small)")


def format_value(value) -> str:
    """A claim's value as REPORT.md writes it: 4 significant digits, objects as "key value, ..."."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {format_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _cell(value) -> str:
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def format_range(values: list) -> str:
    """The range of one measured quantity across settings: "lo – hi" (or the one value) for
    numbers, element by element for equally long lists, key by key for objects."""
    if all(_is_number(v) for v in values):
        lo, hi = min(values), max(values)
        return format_value(float(lo)) if lo == hi else f"{format_value(float(lo))} – {format_value(float(hi))}"
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return "[" + ", ".join(format_range([v[i] for v in values]) for i in range(len(values[0]))) + "]"
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return ", ".join(f"{k} {format_range([v[k] for v in values if k in v])}" for k in keys)
    return "; ".join(format_value(v) for v in values)


def format_measured(c: dict) -> str:
    """One setting's measurement: the value, or "mean [lo, hi] (n = …)" for a claim over seeds."""
    if "ci95" not in c or c.get("ci95") is None:
        return format_value(c["measured"])
    lo, hi = c["ci95"]
    return f"{format_value(c['measured'])} [{format_value(float(lo))}, {format_value(float(hi))}] (n = {c['n']})"


def measured_range(group: list[dict]) -> str:
    """The summary's measured column for the settings of one claim id."""
    if len(group) == 1:
        return format_measured(group[0])
    text = format_range([c["measured"] for c in group])
    seeded = [c for c in group if c.get("ci95") is not None]
    if seeded:
        lo = min(float(c["ci95"][0]) for c in seeded)
        hi = max(float(c["ci95"][1]) for c in seeded)
        ns = sorted({c["n"] for c in seeded})
        n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
        text += f" (means; 95% intervals within [{format_value(lo)}, {format_value(hi)}], n = {n})"
    return text


def short_why(text: str) -> str:
    """The first clause of a why, whole (up to its first ';' or the end of its first sentence,
    never inside "Eq. 38"), for the summary table: never cut mid-sentence; the
    numbered note holds the rest."""
    return re.split(r"; |(?<=[a-z0-9%)'])\. (?=[A-Z])", text.strip(), maxsplit=1)[0].rstrip(".")


def number_whys(claims: list[dict]) -> dict[str, int]:
    """Each distinct non-empty why, numbered 1, 2, … in the order of the per-setting table."""
    notes: dict[str, int] = {}
    for c in (c for group in group_by_id(claims).values() for c in group):
        if c["why"] and c["why"] not in notes:
            notes[c["why"]] = len(notes) + 1
    return notes


def group_by_id(claims: list[dict]) -> dict[str, list[dict]]:
    """Claims by id, in CLAIM_IDS order (ids the list does not know last, as they appear)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for c in claims:
        groups[c["id"]].append(c)
    order = [i for i in CLAIM_IDS if i in groups] + [i for i in groups if i not in CLAIM_IDS]
    return {i: groups[i] for i in order}


def summary_rows(claims: list[dict]) -> list[dict]:
    """One row per claim id: claim, paper, measured range, k of n settings reproduced, why."""
    notes = number_whys(claims)
    rows = []
    for cid, group in group_by_id(claims).items():
        whys = [c["why"] for c in group if c["why"] and not c["reproduced"]] or [c["why"] for c in group if c["why"]]
        refs = sorted({notes[w] for w in whys})
        # the most frequent why among the settings that failed, its first clause; the notes hold the rest
        why = short_why(max(whys, key=whys.count)) if whys else ""
        rows.append({"id": cid, "claim": group[0]["claim"], "paper": group[0]["paper"],
                     "measured": measured_range(group), "k": sum(c["reproduced"] for c in group),
                     "n": len(group), "why": why, "notes": refs})
    return rows


def _notes_ref(refs: list[int]) -> str:
    return ("note " if len(refs) == 1 else "notes ") + ", ".join(str(r) for r in refs) if refs else ""


def claims_section(claims: list[dict]) -> list[str]:
    rows = summary_rows(claims)
    held = sum(r["k"] == r["n"] for r in rows)
    lines = ["## Claims", "",
             f"{held} of {len(rows)} claims reproduced in every setting measured; "
             f"{sum(c['reproduced'] for c in claims)} of {len(claims)} claim settings in all. Rule: "
             f"{REPRODUCED_RULE}. The measured column is the range over the settings (per setting below).", "",
             "| id | claim | paper | measured (range over settings) | reproduced | why |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        why = "; ".join(p for p in (r["why"], _notes_ref(r["notes"])) if p) or "—"
        lines.append(f"| {r['id']} | {_cell(r['claim'])} | {_cell(r['paper'])} | {_cell(r['measured'])} | "
                     f"{r['k']} of {r['n']} setting{'s' if r['n'] != 1 else ''} | {_cell(why)} |")
    return lines + [""]


def settings_section(claims: list[dict]) -> list[str]:
    notes = number_whys(claims)
    lines = ["## Claims per setting", "",
             "| id | setting | measured | reproduced | note |", "|---|---|---|---|---|"]
    for cid, group in group_by_id(claims).items():
        for c in group:
            note = str(notes[c["why"]]) if c["why"] else ""
            lines.append(f"| {cid} | {_cell(c['setting'])} | {_cell(format_measured(c))} | "
                         f"{_cell(c['reproduced'])} | {note} |")
    lines.append("")
    if notes:
        lines += ["Notes (why a setting does or does not reproduce, each written once):", ""]
        lines += [f"{i}. {why}" for why, i in notes.items()]
        lines.append("")
    return lines


def same_latency_finding(summaries: dict) -> str:
    """The training sweep's simulated latency, task by task: equal for the three tasks (and why)."""
    training = summaries.get("training")
    final = training.get("final") if isinstance(training, dict) else None
    rows = [r for r in final if isinstance(r, dict)] if isinstance(final, list) else []
    by_framework: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if (isinstance(r.get("task"), str) and isinstance(r.get("framework"), str)
                and _is_number(r.get("total_latency_s"))):
            by_framework[r["framework"]][r["task"]] = float(r["total_latency_s"])
    by_framework = {fw: t for fw, t in by_framework.items() if len(t) > 1}
    if not by_framework:
        return ("The simulated latency of a training run does not depend on its task when the tasks' models "
                f"share their encoder: {SAME_LATENCY_REASON} (the training sweep has not run here to show it).")
    same = {fw: t for fw, t in by_framework.items() if max(t.values()) - min(t.values()) <= 1e-9 * max(t.values())}
    tasks = sorted({task for t in by_framework.values() for task in t})
    if len(same) == len(by_framework):
        values = ", ".join(f"{fw} {format_value(next(iter(t.values())))} s" for fw, t in same.items())
        return (f"The simulated latency is the same for the tasks {', '.join(tasks)} in the training sweep "
                f"(total over its rounds: {values}), framework by framework. This is not an error: "
                f"{SAME_LATENCY_REASON}.")
    differ = ", ".join(f"{fw}: " + ", ".join(f"{task} {format_value(v)} s" for task, v in t.items())
                       for fw, t in by_framework.items() if fw not in same)
    return (f"The simulated latency differs between tasks in the training sweep ({differ}): their models' "
            "encoders differ, so the bits and FLOPs charged differ.")


def _read_csv(path: pathlib.Path) -> list[dict]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _float(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def v_effect_finding(policies_csv: pathlib.Path) -> str:
    """How much V moves DSSRA's total latency, per cluster count N, from the policies sweep's CSV."""
    spread: dict[int, float] = defaultdict(float)  # N -> largest relative change over V
    max_y: dict[int, float] = defaultdict(float)
    values_v: set[float] = set()
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in _read_csv(policies_csv):
        n, v, total, y = (_float(r.get(key)) for key in ("N", "V", "total_latency_s", "max_Y"))
        if r.get("policy") != "dssra" or None in (n, v, total, y):
            continue
        groups[(r.get("setting"), int(n))].append(total)
        values_v.add(v)
        max_y[int(n)] = max(max_y[int(n)], y)
    for (_, n), totals in groups.items():
        spread[n] = max(spread[n], (max(totals) - min(totals)) / min(totals) if min(totals) > 0 else 0.0)
    if len(values_v) < 2 or not groups:
        return (f"V has no effect while the queues stay 0: {V_REASON} (the policies sweep has not run here "
                "to show it).")
    parts = [f"N = {n}: DSSRA's total latency "
             + ("is the same for every V" if spread[n] == 0 else f"moves by at most {100 * spread[n]:.2g}% over V")
             + f", its largest queue Y_n is {format_value(max_y[n])}" for n in sorted(spread)]
    vs = ", ".join(format_value(v) for v in sorted(values_v))
    zero = [n for n in sorted(spread) if max_y[n] == 0.0]
    head = (f"V changes nothing at N = {', '.join(map(str, zero))}" if zero
            else "V has an effect in every setting of the policies sweep")
    return (f"{head} (V ∈ {{{vs}}}, policies sweep; {'; '.join(parts)}). Why: {V_REASON}. With more clusters "
            "than channels the queues grow and V starts to trade latency against the bound.")


def reading_finding(summaries: dict) -> str:
    """Under which pipeline reading (gpipe, pipedream) the paper's Fig. 9/10 direction appears, from
    the learning-vs-s-m sweep's claims (each names its reading in its setting)."""
    claims = (summaries.get("learning-vs-s-m") or {}).get("claims") or []
    if not claims:
        return "Fig. 9/10 (learning against S and m): the learning-vs-s-m sweep has not run here."
    parts = []
    for c in claims:
        reading = c["setting"].split("pipeline reading ")[-1].split(",")[0] if "pipeline reading" in c["setting"] \
            else "gpipe"
        lo, hi = c.get("ci95") or (float("nan"), float("nan"))
        verdict = "in the paper's direction" if c["reproduced"] else (
            "not measured (at the floor)" if c["why"].startswith("not measured") else "not in the paper's direction")
        parts.append(f"{c['id']} under {reading}: {verdict} (n = {c.get('n')}, 95% interval [{lo:.3g}, {hi:.3g}])")
    return ("Fig. 9/10 per pipeline reading (gpipe: synchronous, the same gradient for every S and m; pipedream: "
            "asynchronous 1F1B with stale weights): " + "; ".join(parts) + ".")


def training_settings_finding(summaries: dict) -> str:
    """The training sweep's per-task settings and what each task's runs cost (wall time)."""
    training = summaries.get("training") or {}
    settings, cost = training.get("settings"), training.get("task_seconds")
    if not isinstance(settings, dict) or not isinstance(cost, dict):
        return "The training sweep's per-task settings: the training sweep has not run here."
    return ("Training sweep settings per task (every framework the same; N = 3 clusters): " + "; ".join(
        f"{task}: {s.get('model')} model, {s.get('rounds')} rounds of {s.get('local_steps')} local steps of "
        f"{s.get('batch')}, lr {s.get('lr')}, seq len {s.get('seq_len') or 'the model default'}, "
        f"{s.get('max_eval_examples')} test examples; its runs took {cost.get(task, float('nan')):.0f} s"
        for task, s in settings.items()) + ".")


def findings_section(out: pathlib.Path, summaries: dict) -> list[str]:
    return ["## Findings a reader could misread", "",
            f"- {same_latency_finding(summaries)}",
            f"- {v_effect_finding(out / 'policies' / 'policies.csv')}",
            f"- {reading_finding(summaries)}",
            f"- {training_settings_finding(summaries)}", ""]


def collect_claims(summaries: dict) -> list[dict]:
    """Every sweep's claims, checked against the format, in sweep order."""
    claims = [c for s in summaries.values() for c in s.get("claims", [])]
    for c in claims:
        check_claim(c)
    return claims


def sweep_section(out: pathlib.Path, name: str, s: dict) -> list[str]:
    """A sweep's figures, findings and links to its files (no JSON in the report)."""
    seconds = s.get("seconds")
    head = f"scale `{s.get('scale')}`" + (f", {seconds:.1f} s" if _is_number(seconds) else "")
    if s.get("tunable") not in (None, "full"):
        head += f", uploads: full and {s['tunable']}"
    lines = [f"## {name}", "", head + ".", ""]
    folder = out / name
    lines += [f"![{png.stem}]({name}/{png.name})" for png in sorted(folder.glob("*.png"))]
    lines.append("")
    findings = s.get("findings")
    if isinstance(findings, list) and findings:
        lines += [f"- {f}" for f in findings] + [""]
    files = [p.name for p in sorted(folder.glob("*.csv"))] + ["summary.json"]
    lines += ["Data: " + ", ".join(f"[`{f}`]({name}/{f})" for f in files) + ".", ""]
    return lines


def write_report(out: pathlib.Path, summaries: dict) -> pathlib.Path:
    claims = collect_claims(summaries)
    atomic_write_json(out / "claims.json", claims)
    lines = ["# CollaPipe reproduction report", "",
             "Generated by `collapipe sweep`; every number below was computed by the sweep named in",
             "its section (CSV and PNG next to it). Paper values are quoted from the paper's text; the",
             "claims are also in `claims.json`.", ""]
    if claims:
        lines += claims_section(claims)
    missing = missing_ids(claims)
    if missing:
        lines += [f"Not measured (their sweeps have not run in `{out}`): {', '.join(missing)}.", ""]
    lines += findings_section(out, summaries)
    if claims:
        lines += settings_section(claims)
    for name, s in summaries.items():
        lines += sweep_section(out, name, s)
    path = out / "REPORT.md"
    atomic_write_text(path, "\n".join(lines))
    return path
