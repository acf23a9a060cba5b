"""Sweeps write CSV + PNG + summary atomically, resume without recomputing, and report."""

import csv
import json

import numpy as np
import pytest

from collapipe_jax.cli import main


def test_power_sweep_writes_files_and_resumes(tmp_path, capsys):
    assert main(["sweep", "latency-vs-power", "--out", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    out = json.loads(out)
    # its progress: one step per preset (paper-bert, paper-transformer), announced before the first
    assert "sweep 1 of 1 latency-vs-power" in err and "0/2" in err and "2/2" in err
    folder = tmp_path / "latency-vs-power"
    rows = list(csv.DictReader(open(folder / "latency-vs-power.csv")))
    assert len(rows) == 24 and (folder / "latency-vs-power.png").stat().st_size > 1000
    # more power: shorter upload, negative derivative everywhere
    bert = [r for r in rows if r["preset"] == "paper-bert"]
    taus = [float(r["tau_up_s"]) for r in bert]
    assert taus == sorted(taus, reverse=True) and all(float(r["dtau_up_dp_n"]) < 0 for r in bert)
    assert out["sweeps"]["latency-vs-power"]["min_upload_energy_j"]["paper-bert"] == pytest.approx(
        min(float(r["E_com_j"]) for r in bert), rel=1e-6)
    stamp = (folder / "summary.json").stat().st_mtime_ns
    assert main(["sweep", "latency-vs-power", "--out", str(tmp_path)]) == 0  # resumed: not recomputed
    assert (folder / "summary.json").stat().st_mtime_ns == stamp
    out, err = capsys.readouterr()
    assert "latency-vs-power: reused, finished earlier" in err and "(reused: finished earlier)" in out
    assert "latency-vs-power" in (tmp_path / "REPORT.md").read_text()


def test_bad_sweep_arguments(capsys):
    assert main(["sweep", "nope"]) == 2
    assert main(["sweep", "all", "--scale", "huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "invalid sweep" in err[0] and "invalid scale" in err[1]


def test_progress_has_a_total_and_a_place(tmp_path, capsys):
    """A sweep announces its steps (`progress.expect`), the bar shows "done/total" and where the
    sweep stands among several; a finished sweep is reused and said so."""
    from collapipe_jax.sweep.base import Sweep, run_sweep

    seen = []

    def compute(scale, work_dir, progress):
        progress.expect(2)
        progress(1)
        seen.append((progress.bar.n, progress.bar.total))
        progress.expect(1)  # more work found on the way
        progress(2)
        seen.append((progress.bar.n, progress.bar.total))
        return {"t": [{"x": 1}]}

    sweep = Sweep("fake", compute, lambda tables, out: None, lambda tables: {"findings": []})
    summary = run_sweep(sweep, "quick", tmp_path, place="2 of 5")
    err = capsys.readouterr().err
    assert seen == [(1, 2), (3, 3)] and summary["sweep"] == "fake"
    assert "sweep 2 of 5 fake" in err and "0/2" in err and "3/3" in err
    assert run_sweep(sweep, "quick", tmp_path, place="2 of 5") == summary
    assert "sweep 2 of 5 fake: reused" in capsys.readouterr().err


def scaling_at_small_sizes(monkeypatch, rules=("dssra", "random")):
    """The scaling sweep shrunk to two N points (one of them past an `N_SCALES` threshold) and one
    K point, two rules."""
    from collapipe_jax.sweep import scaling

    monkeypatch.setattr(scaling, "AXES", {"quick": (("N", (3, 24)), ("K", (6, 10)), ("V", (10.0,)))})
    monkeypatch.setattr(scaling, "SCALES", {"quick": (6, 5)})
    monkeypatch.setattr(scaling, "N_SCALES", {"quick": {24: (4, 3)}})
    monkeypatch.setattr(scaling, "RULES", {"quick": rules})
    return scaling


def test_scaling_sweep_tables_hold_both_engines_cost_and_resume(tmp_path, monkeypatch):
    """The cost table's columns and values from the runs' timings (the runners replaced by stand-ins
    that record their calls: the device's compiled runs are tested elsewhere), J = ⌈N/2⌉ along N,
    fewer seeds past the threshold, the paired change by hand, and a rerun reuses the sweep."""
    from collapipe_jax.sweep import SWEEPS
    from collapipe_jax.sweep.base import run_sweep

    scaling = scaling_at_small_sizes(monkeypatch)
    calls, host_calls = [], []

    def fake_run_seeds(scenario, rule, seeds, rounds, V=None):
        calls.append((scenario.N, scenario.K, scenario.J, rule, len(seeds), rounds))
        latency = 100.0 + np.asarray(seeds, float) + (10.0 if rule == "random" else 0.0)
        return {"totals": {"code": np.zeros(len(seeds), int), "total_latency_s": latency,
                           "max_Y": np.zeros(len(seeds))}}

    def fake_host(scenario, rounds, V):
        host_calls.append((scenario.N, rounds))
        return 0.01 * scenario.N

    monkeypatch.setattr(scaling, "run_seeds", fake_run_seeds)
    monkeypatch.setattr(scaling, "host_seconds_per_round", fake_host)
    run_sweep(SWEEPS["scaling"], "quick", tmp_path)
    folder = tmp_path / "scaling"
    cost = list(csv.DictReader(open(folder / "scaling-cost.csv")))
    assert {"N", "J", "seeds", "rounds", "device_s_per_round", "device_first_call_s", "device_marginal_call_s",
            "host_rounds", "host_s_per_round"} <= set(cost[0])
    assert [(int(c["N"]), int(c["J"]), int(c["seeds"]), int(c["rounds"])) for c in cost] == [(3, 2, 6, 5), (24, 12, 4, 3)]
    for c in cost:
        per_round = float(c["device_marginal_call_s"]) / (int(c["seeds"]) * int(c["rounds"]))
        assert float(c["device_s_per_round"]) == pytest.approx(per_round, rel=1e-9)
        assert float(c["host_s_per_round"]) == pytest.approx(0.01 * int(c["N"]))
        assert int(c["host_rounds"]) == scaling.HOST_ROUNDS[int(c["N"])]
    # along N DSSRA runs twice on the same seeds (the second call is the timed one); K once per rule;
    # the V axis's point V = 10 is the base, run on the K axis already: reused
    assert calls == [(3, 6, 2, "dssra", 6, 5)] * 2 + [(3, 6, 2, "random", 6, 5)] + [(24, 6, 12, "dssra", 4, 3)] * 2 + [
        (24, 6, 12, "random", 4, 3), (6, 6, 4, "dssra", 6, 5), (6, 6, 4, "random", 6, 5), (6, 10, 4, "dssra", 6, 5),
        (6, 10, 4, "random", 6, 5)]
    base = [g for g in csv.DictReader(open(tmp_path / "scaling" / "scaling-gains.csv")) if g["axis"] in "KV"]
    assert [g["axis"] for g in base] == ["K", "K", "V"] and base[0]["change_pct"] == base[2]["change_pct"]
    # one warm-up round at each N, then the timed rounds
    assert host_calls == [(3, 1), (3, scaling.HOST_ROUNDS[3]), (24, 1), (24, scaling.HOST_ROUNDS[24])]
    gains = list(csv.DictReader(open(folder / "scaling-gains.csv")))
    seeds = np.arange(4.0)
    assert float(gains[1]["change_pct"]) == pytest.approx(np.mean(100 * ((100 + seeds) / (110 + seeds) - 1)))
    assert (folder / "scaling-cost.png").stat().st_size > 1000 and (folder / "scaling-N.png").exists()
    findings = json.loads((folder / "summary.json").read_text())["findings"]
    assert any("N = 24" in f and "device engine" in f for f in findings)
    stamp = (folder / "summary.json").stat().st_mtime_ns
    run_sweep(SWEEPS["scaling"], "quick", tmp_path)  # finished: reused, nothing run again
    assert (folder / "summary.json").stat().st_mtime_ns == stamp and len(host_calls) == 4


@pytest.mark.slow
def test_scaling_sweep_times_both_engines_for_real(tmp_path, monkeypatch):
    """The cost columns from real runs (tiny sizes): finite, positive, and the host's time per
    round of the same order as an independent timing of the host loop."""
    from collapipe_jax.sweep import SWEEPS
    from collapipe_jax.sweep.base import run_sweep

    scaling = scaling_at_small_sizes(monkeypatch, rules=("dssra",))
    monkeypatch.setattr(scaling, "AXES", {"quick": (("N", (3,)),)})
    monkeypatch.setattr(scaling, "SCALES", {"quick": (2, 2)})
    run_sweep(SWEEPS["scaling"], "quick", tmp_path)
    (cost,) = csv.DictReader(open(tmp_path / "scaling" / "scaling-cost.csv"))
    values = {k: float(cost[k]) for k in ("device_s_per_round", "device_first_call_s", "host_s_per_round")}
    assert all(np.isfinite(v) and v > 0 for v in values.values()), values
    assert values["device_first_call_s"] > values["device_s_per_round"]
    again = scaling.host_seconds_per_round(scaling.point_scenario(3, 6, 2), 3, 10.0)
    assert 0.1 < values["host_s_per_round"] / again < 10
