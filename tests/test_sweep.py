"""Sweeps write CSV + PNG + summary atomically, resume without recomputing, and report."""

import csv
import json

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
