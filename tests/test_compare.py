"""`collapipe compare` (comparison.py): the JSON contract, and its paired changes against the
same changes computed from separate `schedule --seeds` runs over the same seeds; an infeasible
seed is left out by its report. The scenario and rules are test_device_engine's and
test_user_policy's (their compiled programs are reused)."""

from __future__ import annotations

import json

import numpy as np
from scipy import stats

from collapipe_jax import compare
from collapipe_jax.scenario import scenario_preset
from collapipe_jax.scheduling.schedule import ScheduleConfig, run_schedule_seeds
from tests.test_device_engine import SEEDED_ROUNDS
from tests.test_reliability import assert_one_line_error, run
from tests.test_user_policy import BEST_CHANNEL

POLICIES = ["dssra", "random", BEST_CHANNEL]


def separate_runs(scenario, policy, seeds):
    cfg = ScheduleConfig(rounds=SEEDED_ROUNDS, policy=policy, seeds=seeds, engine="device", progress=False)
    return run_schedule_seeds(scenario, cfg)["runs"]


def paired_by_hand(runs, base):
    """(mean, lo, hi, n) of 100 (x − x0)/x0 over the seeds feasible for both (Student-t)."""
    pairs = [(r["total_latency_s"], b["total_latency_s"]) for r, b in zip(runs, base)
             if r["infeasible"] is None and b["infeasible"] is None]
    change = np.array([100.0 * (x - x0) / x0 for x, x0 in pairs])
    half = stats.t.ppf(0.975, change.size - 1) * change.std(ddof=1) / np.sqrt(change.size)
    return change.mean(), change.mean() - half, change.mean() + half, change.size


def test_compare_json_matches_the_contract_and_separate_schedules():
    code, out, err = run("compare", "--preset", "paper-bert", "--tunable", "lora:8", "--rounds", SEEDED_ROUNDS,
                         "--seeds", "0:8", "--policies", ",".join(POLICIES), "--json")
    assert code == 0, err[-800:]
    result = json.loads(out)
    assert {"baseline", "engine", "device", "seconds", "n", "policies"} <= set(result)
    assert result["baseline"] == "dssra" and result["engine"] == "device" and result["n"] == 8
    assert [p["policy"] for p in result["policies"]] == POLICIES
    scenario = scenario_preset("paper-bert").replace(tunable="lora:8")
    base = separate_runs(scenario, "dssra", "0:8")
    for p in result["policies"]:
        assert {"policy", "mean_total_latency_s", "ci95", "infeasible_seeds", "vs_baseline_pct"} <= set(p)
        runs = separate_runs(scenario, p["policy"], "0:8")
        totals = [r["total_latency_s"] for r in runs]
        np.testing.assert_allclose(p["mean_total_latency_s"], np.mean(totals), rtol=1e-12)
        assert p["infeasible_seeds"] == []
        if p["policy"] == "dssra":
            assert p["vs_baseline_pct"] is None
            continue
        mean, lo, hi, n = paired_by_hand(runs, base)
        np.testing.assert_allclose([p["vs_baseline_pct"]["mean"], *p["vs_baseline_pct"]["ci95"]], [mean, lo, hi],
                                   rtol=1e-9)
        assert p["vs_baseline_pct"]["n"] == n == 8


def test_infeasible_seeds_are_left_out_by_their_report():
    # E_n^max = 1.1 J: some seeds meet a round where DSSRA has no feasible upload (C11'), reported
    # with a total of the charged rounds only; best_channel then leaves the cluster out instead
    scenario = scenario_preset("paper-bert").replace(tunable="lora:8", E_max_n_j=1.1)
    result = compare(scenario, ["dssra", BEST_CHANNEL], range(0, 8), rounds=SEEDED_ROUNDS)
    base, own = separate_runs(scenario, "dssra", "0:8"), separate_runs(scenario, BEST_CHANNEL, "0:8")
    infeasible = [r["seed"] for r in base if r["infeasible"] is not None]
    assert 0 < len(infeasible) < 6
    assert result["policies"][0]["infeasible_seeds"] == infeasible
    feasible = [r["total_latency_s"] for r in base if r["infeasible"] is None]
    np.testing.assert_allclose(result["policies"][0]["mean_total_latency_s"], np.mean(feasible), rtol=1e-12)
    mean, lo, hi, n = paired_by_hand(own, base)
    change = result["policies"][1]["vs_baseline_pct"]
    assert change["n"] == n == 8 - len(infeasible)
    np.testing.assert_allclose([change["mean"], *change["ci95"]], [mean, lo, hi], rtol=1e-9)


def test_compare_bad_input_is_one_error_line():
    base = ["compare", "--preset", "paper-bert", "--rounds", 2]
    assert_one_line_error(*run(*base, "--policies", "dssra,dssra"), "invalid policies", "dssra repeated")
    assert_one_line_error(*run(*base, "--policies", "dssra,,random"), "invalid policies")
    assert_one_line_error(*run(*base, "--policies", "dssra,nope"), "invalid policy", "must be one of")
    assert_one_line_error(*run(*base, "--seeds", "3:1"), "invalid seeds")
    assert_one_line_error(*run(*base, "--seed", 1), "invalid seed", "--seeds A:B")
