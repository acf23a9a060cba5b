"""claims.json: the format, the reproduction rules by hand, every listed id computed by a sweep's
`findings` from (small, synthetic) tables, and the report that renders them."""

import itertools
import json
import math
import types

import numpy as np
import pytest

from collapipe_jax.errors import ValidationError
from collapipe_jax.report import write_report
from collapipe_jax.sweep import frameworks, memory, policies, segments, training, training_claims
from collapipe_jax.sweep.claims import (CLAIM_IDS, FIELDS, SEED_FIELDS, change_pct, claim, is_measurement,
                                        within_factor_two)

VARIANTS = ("paper", "consistent")


def test_claim_format_and_errors():
    c = claim("fig11-vs-random", "DSSRA vs random", -7.12, -5.0, "N=3", True)
    assert list(c) == list(FIELDS) and c["why"] == ""
    for bad in (dict(id="fig99"), dict(measured=float("nan")), dict(measured="12%"), dict(measured=True),
                dict(measured={"a": "x"}), dict(measured=[]), dict(setting=3)):
        kw = {**dict(id="fig11-vs-random", claim="c", paper=-7.12, measured=-5.0, setting="s", reproduced=True), **bad}
        with pytest.raises(ValidationError):
            claim(**kw)
    assert is_measurement({"S": [5.0, 4.0], "m": 3}) and not is_measurement({"S": [float("inf")]})


def test_reproduction_rule_by_hand():
    assert change_pct(84.91, 100.0) == pytest.approx(-15.09)
    assert within_factor_two(-15.09, -15.09) and within_factor_two(-7.6, -15.09) and within_factor_two(-30.1, -15.09)
    assert not within_factor_two(-7.5, -15.09) and not within_factor_two(-30.2, -15.09)
    assert not within_factor_two(15.09, -15.09) and not within_factor_two(0.0, -15.09)


# --------------------------------------------------------------------------- synthetic tables


def segment_tables():
    fig4 = []
    for flops, _ in segments.FLOPS:
        for variant in VARIANTS:
            for S in (1, 2, 3, 6):
                for m in range(1, 9):
                    # interior optimum at (2, 2) under paper, the boundary (1, 8) under consistent
                    tau = (S - 2) ** 2 + (m - 2) ** 2 + 1.0 if variant == "paper" else S + 1.0 / m
                    fig4.append({"flops": flops, "variant": variant, "S": S, "m": m, "tau_pipe_s": tau, "draws": 2})
    fig5 = []
    for tunable in ("full", "lora:8"):
        for flops, _ in segments.FLOPS:
            for variant in VARIANTS:
                S, m = ([5, 4, 3], [13, 10, 9]) if variant == "paper" else ([3, 3, 3], [64, 64, 64])
                for t in range(2):
                    for rank in range(3):
                        fig5.append({"flops": flops, "variant": variant, "tunable": tunable, "round": t, "rank": rank,
                                     "cluster": rank, "S": S[rank], "m": m[rank], "min_S_memory": 3,
                                     "tau_pipe_s": 2.0, "uniform_tau_pipe_s": 3.0, "uniform_m": 1})
    return {"fig4": fig4, "fig5": fig5}


def framework_tables():
    cmp = {"collapipe": 84.91, "collapipe-wo-ss": 103.97, "vanilla-fl": 100.0, "pipeline": 142.84, "titanic": 104.79}
    rows = []
    for figure, model in frameworks.FIGURES:
        for tunable in ("full", "lora:8"):
            for variant in VARIANTS:
                for name, _, _ in frameworks.ENTRANTS:
                    latency = 40.0 if name == "collapipe" else 100.0
                    rows.append({"figure": figure, "model": model, "tunable": tunable, "variant": variant,
                                 "framework": name, "rounds": 5, "total_cmp_s": cmp[name], "total_dd_s": 1.0,
                                 "total_up_s": 10.0, "total_latency_s": latency,
                                 "violating_rounds": 5 if name == "vanilla-fl" else 0,
                                 "violated": "C7" if name == "vanilla-fl" else "", "mean_S": 3.0, "mean_m": 2.0,
                                 "n": 5})
    return {"frameworks": rows, "frameworks-changes": paired_changes(rows)}


def paired_changes(rows):
    """The per-seed changes a seeded frameworks sweep reports, as if every seed gave the rows'
    values (an interval of ±1 point around the change)."""
    out = []
    for key, g in frameworks.groups(rows).items():
        for a, b in frameworks.PAIRS:
            for quantity in ("total_cmp_s", "total_latency_s"):
                change = change_pct(g[a][quantity], g[b][quantity])
                out.append(dict(zip(("figure", "model", "tunable", "variant"), key), framework=a, reference=b,
                                quantity=quantity, n=5, change_pct=change, change_pct_lo=change - 1.0,
                                change_pct_hi=change + 1.0))
    return out


def policy_tables():
    latency = {"dssra": 53.56, "loss-only": 100.0, "delay-only": 100.0, "random": 100.0}
    totals, per_round, changes = [], [], []
    for N, J in policies.CLUSTERS:
        for tunable in ("full", "lora:8"):
            for variant in VARIANTS:
                label = policies.setting_label(tunable, N, J, variant)
                for V in policies.VS:
                    for p in policies.POLICIES:
                        totals.append({"setting": label, "N": N, "J": J, "tunable": tunable, "variant": variant,
                                       "V": V, "policy": p, "uses_V": p in policies.V_POLICIES, "rounds": 4,
                                       "total_latency_s": latency.get(p, 70.0), "total_cmp_s": 1.0, "total_up_s": 30.0,
                                       "mean_solve_ms": 1.0, "max_Y": 0.0, "mean_Gamma": 0.03,
                                       "violating_rounds": 0, "n": 5})
                        per_round += [{"setting": label, "V": V, "policy": p, "round": t, "tau_round_s": 1.0,
                                       "max_Y": 0.0, "mean_Gamma": 0.03, "solve_ms": 1.0} for t in range(4)]
                    for p in policies.POLICIES[1:]:
                        change = change_pct(latency["dssra"], latency.get(p, 70.0))
                        changes.append({"setting": label, "V": V, "baseline": p, "n": 5, "change_pct": change,
                                        "change_pct_lo": change - 1.0, "change_pct_hi": change + 1.0})
    return {"policies": totals, "policies-per-round": per_round, "policies-changes": changes}


def memory_tables(vanilla_bytes=5.5e9, segment_bytes=2.0e9):
    rows = []
    for preset, L in (("paper-bert", 12), ("paper-transformer", 6)):
        for delta in sorted({1, 2, L // 3, L // 2, L}):
            peak = {2: segment_bytes, L: vanilla_bytes}.get(delta, vanilla_bytes * delta / L)
            rows.append({"preset": preset, "delta": delta, "L": L, "batch": 64, "xla_peak_bytes": peak,
                         "xla_temp_bytes": 0.0, "xla_argument_bytes": 0.0, "analytic_bytes": peak})
    return {"memory": rows}


def training_tables(bleu=None, accuracy=None, S_m=None):
    bleu = bleu or {"collapipe": 23.9, "vanilla-fl": 20.0, "pipeline": 19.0, "titanic": 20.0}
    accuracy = accuracy or {"collapipe": 0.8500, "vanilla-fl": 0.85, "pipeline": 0.8318, "titanic": 0.8485}
    S_m = S_m or {"collapipe": (2, 2), "vanilla-fl": (1, 1), "pipeline": (6, 4), "titanic": (3, 4)}
    loss = {"collapipe": 1.0, "vanilla-fl": 1.1, "pipeline": 1.3, "titanic": 1.2}
    metric = {"multi30k": "bleu", "ner": "entity_f1", "toutiao": "accuracy"}
    rows, finals = [], []
    for task in training.TASKS:
        for f in training.FRAMEWORKS:
            value = {"multi30k": bleu[f], "toutiao": accuracy[f], "ner": 0.5}[task]
            for t in range(2):
                rows.append({"task": task, "framework": f, "round": t, "loss": loss[f] + 1 - t, "tau_round_s": 1.0,
                             "cumulative_latency_s": t + 1.0, "energy_j": 1.0, f"metric_{metric[task]}": value,
                             "S": float(S_m[f][0]), "m": float(S_m[f][1])})
            finals.append({"task": task, "framework": f, "rounds": 2, "model": "tiny", "batch": 8,
                           "final_loss": loss[f], "total_latency_s": 2.0, "total_energy_j": 2.0,
                           f"final_{metric[task]}": value})
    return {"training": rows, "training-final": finals}


def s_m_tables(losses=None, bleu=None):
    """learning-vs-s-m rows: (S, m) plans of the Transformer (multi30k) and BERT (ner) runs."""
    plans = ((1, 4), (2, 2), (4, 4), (4, 1), (4, 8))
    losses = losses or {(1, 4): 1.3, (2, 2): 1.0, (4, 4): 1.2, (4, 1): 0.9, (4, 8): 1.25}
    bleu = bleu or {(1, 4): 10.0, (2, 2): 14.0, (4, 4): 11.0, (4, 1): 12.0, (4, 8): 9.0}
    rows = []
    for task in training.SM_TASKS:
        for S, m in plans:
            for t in range(2):
                value = {"multi30k": {"metric_bleu": bleu[(S, m)]}, "ner": {"metric_entity_f1": 0.4}}[task]
                rows.append({"task": task, "S": S, "m": m, "model": "tiny", "rounds": 2, "round": t,
                             "loss": losses[(S, m)] + 1 - t, "tau_round_s": 1.0, "cumulative_latency_s": t + 1.0,
                             "energy_j": 1.0, **value})
    return {"learning-vs-s-m": rows}


SWEEP_TABLES = {"segments": (segments, segment_tables), "frameworks": (frameworks, framework_tables),
                "policies": (policies, policy_tables), "memory": (memory, memory_tables),
                "training": (training, training_tables),
                "learning-vs-s-m": (types.SimpleNamespace(findings=training.sm_findings), s_m_tables)}


def all_claims():
    return {name: module.findings(build())["claims"] for name, (module, build) in SWEEP_TABLES.items()}


def by_id(claims, cid):
    return [c for c in claims if c["id"] == cid]


def test_every_listed_id_is_computed_by_a_sweep_with_a_number():
    found = [c for claims in all_claims().values() for c in claims]
    assert {c["id"] for c in found} == set(CLAIM_IDS)
    for c in found:
        assert list(c) in (list(FIELDS), list(FIELDS) + list(SEED_FIELDS)) and is_measurement(c["measured"])
        if "n" in c and not isinstance(c["measured"], dict):  # measured over seeds: the mean lies in its interval
            lo, hi = c["ci95"]
            assert c["n"] >= 1 and lo <= c["measured"] <= hi
        assert c["reproduced"] or c["why"], c  # an unreproduced claim says why
        json.dumps(c, allow_nan=False)


def test_claims_follow_the_tables():
    claims = all_claims()
    fw = claims["frameworks"]
    # −15.09% by construction in every setting: reproduced, measured = the tables' change
    for c in by_id(fw, "fig7-vs-vanillafl"):
        assert c["measured"] == pytest.approx(-15.09) and c["reproduced"]
    assert len(by_id(fw, "fig7-vs-vanillafl")) == 4  # both uploads x both variants
    for c in by_id(fw, "fig8-vanillafl-vs-pipeline"):
        assert c["measured"] == pytest.approx(change_pct(100.0, 142.84)) and "vanilla-fl breaks C7" in c["setting"]
    for c in by_id(fw, "abstract-latency"):  # 40 against 100 for every baseline: −60% ≤ −48.98%
        assert c["measured"]["largest_change_pct"] == pytest.approx(-60.0) and c["reproduced"]
    pol = claims["policies"]
    assert len(by_id(pol, "fig11-vs-loss-only")) == 8  # N ∈ {3, 6} x uploads x variants
    for c in by_id(pol, "fig11-vs-loss-only"):
        assert c["measured"] == pytest.approx(-46.44) and c["reproduced"] and "V = 0.01" in c["setting"]
    assert any("N=6, J=4" in c["setting"] for c in pol)
    seg = claims["segments"]
    fig4 = {c["setting"].split(", ")[-2]: c for c in by_id(seg, "fig4-best-S-m")}
    assert fig4["paper"]["measured"]["S"] == 2 and fig4["paper"]["measured"]["m"] == 2 and fig4["paper"]["reproduced"]
    assert fig4["consistent"]["measured"]["m"] == 8 and not fig4["consistent"]["reproduced"]
    for c in by_id(seg, "fig5-S-m-heterogeneous"):
        assert c["reproduced"] == ("paper" in c["setting"].split(", "))  # m 13 vs 14 within 1.5x; 64 is not
    (mem,) = claims["memory"]
    assert mem["measured"]["ratio"] == pytest.approx(2.0 / 5.5) and mem["reproduced"]
    tr = claims["training"]
    (bleu,) = by_id(tr, "fig6-bleu")
    assert bleu["measured"]["least_gain_pct"] == pytest.approx(100 * (23.9 / 20.0 - 1)) and bleu["reproduced"]
    (acc,) = by_id(tr, "fig6-accuracy-vs-pipeline")
    assert acc["measured"]["difference_pp"] == pytest.approx(1.82) and acc["reproduced"]
    sm = claims["learning-vs-s-m"]
    (fig9,) = by_id(sm, "fig9-best-S-m-transformer")
    assert (fig9["measured"]["S"], fig9["measured"]["m"]) == (2, 2) and fig9["reproduced"]  # best BLEU at (2, 2)
    (fig10,) = by_id(sm, "fig10-smaller-m-better")
    assert fig10["measured"]["smallest_m"] == 1 and fig10["measured"]["largest_m"] == 8 and fig10["reproduced"]


def test_unreproduced_and_unlearned_claims_say_why():
    tr = training.findings(training_tables(bleu={"collapipe": 0.0, "vanilla-fl": 0.0, "pipeline": 0.0,
                                                 "titanic": 0.0}))["claims"]
    (bleu,) = by_id(tr, "fig6-bleu")
    assert not bleu["reproduced"] and "not learned" in bleu["why"]
    assert all(math.isfinite(v) for v in bleu["measured"].values())
    # losses equal up to float noise and the same BLEU: no plan learns better, whatever its S and m
    plans = ((1, 4), (2, 2), (4, 4), (4, 1), (4, 8))
    tables = s_m_tables(losses={p: 1.0 + 1e-7 * p[1] for p in plans}, bleu=dict.fromkeys(plans, 20.0))
    sm = training.sm_findings(tables)["claims"]
    for cid in ("fig10-smaller-m-better", "fig9-best-S-m-transformer"):
        (c,) = by_id(sm, cid)
        assert not c["reproduced"] and "gradient" in c["why"]
    (mem,) = memory.findings(memory_tables(vanilla_bytes=3.5e9, segment_bytes=0.6e9))["claims"]
    assert not mem["reproduced"] and "XLA peak" in mem["why"]


def toutiao_seed_finals(accuracy: dict) -> dict:
    """training-final rows of Toutiao only, one per framework and seed."""
    finals = [{"task": "toutiao", "framework": f, "seed": s, "rounds": 20, "model": "small", "batch": 32,
               "final_loss": 1.0, "total_latency_s": 2.0, "total_energy_j": 2.0, "final_accuracy": a}
              for f, values in accuracy.items() for s, a in enumerate(values)]
    return {"training": [], "training-final": finals}


def test_learning_claims_over_seeds_carry_n_and_the_student_t_interval():
    """Paired per-seed differences 1, 2, 2 points: mean 5/3, s = 1/sqrt(3), half-width
    t(0.975, 2) s / sqrt(3) with t = 4.302653 (the table value)."""
    tables = toutiao_seed_finals({"collapipe": [0.80, 0.82, 0.81], "pipeline": [0.79, 0.80, 0.79],
                                  "titanic": [0.80, 0.82, 0.81]})
    (acc,) = by_id(training.framework_claims(tables), "fig6-accuracy-vs-pipeline")
    half = 4.302653 * (1 / math.sqrt(3)) / math.sqrt(3)
    assert acc["n"] == 3 and acc["measured"]["difference_pp"] == pytest.approx(5 / 3)
    assert acc["ci95"] == pytest.approx([5 / 3 - half, 5 / 3 + half], rel=1e-5)
    assert acc["reproduced"]  # within a factor two of 1.82 and the interval excludes zero
    (tit,) = by_id(training.framework_claims(tables), "fig6-accuracy-vs-titanic")
    assert tit["ci95"] == pytest.approx([0.0, 0.0], abs=1e-9) and not tit["reproduced"]
    # a mean within a factor two but an interval across zero: not reproduced
    noisy = toutiao_seed_finals({"collapipe": [0.84, 0.79, 0.825], "pipeline": [0.80, 0.80, 0.80],
                                 "titanic": [0.8, 0.8, 0.8]})
    (acc,) = by_id(training.framework_claims(noisy), "fig6-accuracy-vs-pipeline")
    assert within_factor_two(acc["measured"]["difference_pp"], 1.82) and acc["ci95"][0] < 0 < acc["ci95"][1]
    assert not acc["reproduced"]


def test_claims_at_the_floor_are_not_measured():
    tables = toutiao_seed_finals({"collapipe": [0.30, 0.32, 0.31], "pipeline": [0.29, 0.30, 0.29],
                                  "titanic": [0.28, 0.3, 0.3]})
    for c in training.framework_claims(tables):
        assert not c["reproduced"] and "not measured at this scale" in c["why"] and c["n"] == 3


def test_a_claim_is_measured_only_when_both_runs_leave_the_floor():
    """The floor applies to the mean over seeds of each compared run: CollaPipe and Titanic at
    0.6-0.62 are measured, PipeLine's mean of 0.59 (one seed above 0.6) is not."""
    tables = toutiao_seed_finals({"collapipe": [0.60, 0.61, 0.62], "pipeline": [0.58, 0.585, 0.605],
                                  "titanic": [0.60, 0.60, 0.60]})
    (pipe,) = by_id(training.framework_claims(tables), "fig6-accuracy-vs-pipeline")
    (tit,) = by_id(training.framework_claims(tables), "fig6-accuracy-vs-titanic")
    assert "not measured at this scale" in pipe["why"] and "0.5900 (pipeline)" in pipe["why"]
    assert "not measured" not in tit["why"] and tit["measured"]["difference_pp"] == pytest.approx(1.0)
    assert tit["ci95"][0] < 0 < tit["ci95"][1] and not tit["reproduced"]  # differences 0, 1, 2 points


def test_report_writes_claims_json_and_renders_them_first(tmp_path):
    summaries = {name: {"sweep": name, "scale": "quick", "seconds": 1.0, **module.findings(build())}
                 for name, (module, build) in SWEEP_TABLES.items() if name not in ("training", "learning-vs-s-m")}
    path = write_report(tmp_path, summaries)
    claims = json.loads((tmp_path / "claims.json").read_text())
    learning = {c["id"] for name in ("training", "learning-vs-s-m") for c in all_claims()[name]}
    assert {c["id"] for c in claims} == set(CLAIM_IDS) - learning
    text = path.read_text()
    assert text.index("## Claims") < text.index("## segments")
    assert "| fig11-vs-random |" in text and "Not measured" in text and "fig6-bleu" in text.split("Not measured")[1]
    with pytest.raises(ValidationError):
        write_report(tmp_path, {"x": {"claims": [{"id": "fig4-best-S-m"}]}})


def test_plots_draw_from_synthetic_tables(tmp_path):
    for name in ("segments", "frameworks", "policies"):
        module, build = SWEEP_TABLES[name]
        module.plot(build(), tmp_path)
    assert {p.name for p in tmp_path.glob("*.png")} >= {"fig4-uniform-split.png", "fig5-heterogeneous.png",
                                                         "frameworks.png", "policies.png", "queues.png"}


def test_mean_ci95_is_the_student_t_interval_of_the_mean():
    import numpy as np
    from scipy import stats

    from collapipe_jax.sweep.claims import mean_ci95

    x = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0])
    lo, hi = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
    assert np.allclose(mean_ci95(x), (x.mean(), lo, hi))
    assert mean_ci95([2.5]) == (2.5, 2.5, 2.5)


def test_a_change_over_seeds_reproduces_only_when_its_interval_excludes_zero():
    from collapipe_jax.sweep.claims import change_reproduced, claim

    assert change_reproduced(-10.0, [-12.0, -8.0], -15.0)
    assert not change_reproduced(-10.0, [-21.0, 1.0], -15.0)  # the interval holds zero
    assert not change_reproduced(-40.0, [-45.0, -35.0], -15.0)  # beyond a factor of two
    c = claim("fig11-vs-random", "x", -7.0, -8.0, "s", True, n=4, ci95=(-9.0, -7.0))
    assert c["n"] == 4 and c["ci95"] == [-9.0, -7.0]
    with pytest.raises(ValidationError):
        claim("fig11-vs-random", "x", -7.0, -8.0, "s", True, n=4, ci95=(-7.0, -9.0))


def s_m_reading_rows(schedule: str, bleu, loss, f1=0.3, seeds=(0, 1, 2)) -> list[dict]:
    """learning-vs-s-m rows of one pipeline reading over seeds: bleu(plan, seed) and loss(plan,
    seed) give the final values (two rounds, evaluated at the last)."""
    rows = []
    for task, seed, (S, m) in itertools.product(training.SM_TASKS, seeds, ((1, 4), (2, 2), (4, 1), (4, 4))):
        for t in range(2):
            metric = ({"metric_bleu": bleu((S, m), seed)} if task == "multi30k" else {"metric_entity_f1": f1}) \
                if t == 1 else {}
            rows.append({"task": task, "S": S, "m": m, "seed": seed, "schedule": schedule, "model": "tiny",
                         "rounds": 2, "round": t, "loss": loss((S, m), seed) + 1 - t, "tau_round_s": 1.0,
                         "cumulative_latency_s": t + 1.0, **metric})
    return rows


def test_s_m_claims_carry_each_pipeline_reading_with_its_interval():
    """gpipe: every plan the same curve (not reproduced, and why); pipedream: (2, 2) ahead of the
    runner-up (4, 1) by 2, 3, 4 BLEU over the seeds and m = 1 below m = 4 in loss: reproduced,
    with the Student-t intervals by hand."""
    same = s_m_reading_rows("gpipe", bleu=lambda p, s: 5.0 + s, loss=lambda p, s: 1.0 + 0.1 * s)
    bleu = {(1, 4): 3.0, (2, 2): 9.0, (4, 1): 7.0, (4, 4): 4.0}
    stale = s_m_reading_rows("pipedream", bleu=lambda p, s: bleu[p] + (s if p == (2, 2) else 0.0),
                             loss=lambda p, s: 1.0 + 0.1 * p[1] + 0.01 * s)
    claims = training.sm_findings({"learning-vs-s-m": same + stale})["claims"]
    assert sorted((c["id"], c["setting"].split(",")[0]) for c in claims) == sorted(
        (cid, f"pipeline reading {r}") for cid in ("fig9-best-S-m-transformer", "fig10-smaller-m-better")
        for r in ("gpipe", "pipedream"))
    reading = {(c["id"], c["setting"].split(",")[0].split()[-1]): c for c in claims}
    for cid in ("fig9-best-S-m-transformer", "fig10-smaller-m-better"):
        assert not reading[cid, "gpipe"]["reproduced"] and "gradient" in reading[cid, "gpipe"]["why"]
        assert reading[cid, "pipedream"]["reproduced"] and reading[cid, "pipedream"]["n"] == 3
    fig9 = reading["fig9-best-S-m-transformer", "pipedream"]
    half = 4.302653 * 1.0 / math.sqrt(3)  # gains 2, 3, 4: s = 1
    assert fig9["measured"]["bleu_gain_over_runner_up"] == pytest.approx(3.0)
    assert fig9["ci95"] == pytest.approx([3.0 - half, 3.0 + half], rel=1e-5)
    fig10 = reading["fig10-smaller-m-better", "pipedream"]
    changes = [100 * ((1.1 + 0.01 * s) / (1.4 + 0.01 * s) - 1) for s in range(3)]  # m = 1 against m = 4, final round
    assert fig10["measured"]["loss_change_pct"] == pytest.approx(np.mean(changes))
    findings = " ".join(training.sm_findings({"learning-vs-s-m": same + stale})["findings"])
    assert "fig9-best-S-m-transformer under pipedream: the paper direction appears" in findings


def test_s_m_claims_at_the_floor_are_not_measured():
    rows = s_m_reading_rows("pipedream", bleu=lambda p, s: 0.5 if p == (2, 2) else 0.2,
                            loss=lambda p, s: 1.0 + 0.1 * p[1], f1=0.05)
    for c in training.sm_findings({"learning-vs-s-m": rows})["claims"]:
        assert not c["reproduced"] and c["why"].startswith("not measured at this scale") and c["n"] == 3


def test_report_says_under_which_reading_the_papers_direction_appears():
    from collapipe_jax.report import reading_finding

    same = s_m_reading_rows("gpipe", bleu=lambda p, s: 5.0 + s, loss=lambda p, s: 1.0 + 0.1 * s)
    bleu = {(1, 4): 3.0, (2, 2): 9.0, (4, 1): 7.0, (4, 4): 4.0}
    stale = s_m_reading_rows("pipedream", bleu=lambda p, s: bleu[p] + (s if p == (2, 2) else 0.0),
                             loss=lambda p, s: 1.0 + 0.1 * p[1] + 0.01 * s)
    summary = training.sm_findings({"learning-vs-s-m": same + stale})
    text = reading_finding({"learning-vs-s-m": summary})
    assert "fig9-best-S-m-transformer under pipedream: in the paper's direction (n = 3" in text
    assert "fig9-best-S-m-transformer under gpipe: not in the paper's direction" in text
    assert "has not run" in reading_finding({})


def ner_loss_tables(early: dict, f1: float = 0.3, rounds: int = 4, seeds=(0, 1, 2)):
    """NER rows of the training sweep: framework f's loss is early[f][seed] in the first half of
    the rounds and 0.5 after it."""
    rows, finals = [], []
    for f in training.FRAMEWORKS:
        for seed in seeds:
            for t in range(rounds):
                rows.append({"task": "ner", "framework": f, "seed": seed, "round": t,
                             "loss": early[f][seed] if t < (rounds + 1) // 2 else 0.5})
            finals.append({"task": "ner", "framework": f, "seed": seed, "rounds": rounds, "model": "tiny", "batch": 8,
                           "final_entity_f1": f1})
    return {"training": rows, "training-final": finals}


def test_ner_early_loss_claim_by_hand():
    from scipy import stats

    early = {"collapipe": [0.90, 0.80, 0.85], "vanilla-fl": [1.00, 0.90, 1.00], "pipeline": [1.20, 1.10, 1.30],
             "titanic": [0.95, 0.85, 0.90]}
    (c,) = by_id(training_claims.framework_claims(ner_loss_tables(early)), "fig6-ner-early-loss")
    closest = [100 * (0.90 / 0.95 - 1), 100 * (0.80 / 0.85 - 1), 100 * (0.85 / 0.90 - 1)]  # titanic every seed
    half = stats.t.ppf(0.975, 2) * np.std(closest, ddof=1) / np.sqrt(3)
    assert c["measured"]["closest_change_pct"] == pytest.approx(np.mean(closest))
    assert c["ci95"] == pytest.approx([np.mean(closest) - half, np.mean(closest) + half])
    assert c["measured"]["change_vs_pipeline_pct"] == pytest.approx(np.mean([100 * (a / b - 1) for a, b in
                                                                             zip(early["collapipe"], early["pipeline"])]))
    assert c["n"] == 3 and c["reproduced"]
    same = dict(early, collapipe=early["titanic"])  # no faster start than TITANIC
    (c,) = by_id(training_claims.framework_claims(ner_loss_tables(same)), "fig6-ner-early-loss")
    assert not c["reproduced"] and c["measured"]["closest_change_pct"] == pytest.approx(0.0)
    assert "gradient" in c["why"]
    (c,) = by_id(training_claims.framework_claims(ner_loss_tables(early, f1=0.05)), "fig6-ner-early-loss")
    assert not c["reproduced"] and "not measured at this scale" in c["why"]
