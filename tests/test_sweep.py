"""Sweeps write CSV + PNG + summary atomically, resume without recomputing, and report."""

import csv
import json

import pytest

from collapipe_jax.cli import main


def test_power_sweep_writes_files_and_resumes(tmp_path, capsys):
    assert main(["sweep", "latency-vs-power", "--out", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
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
    assert "latency-vs-power" in (tmp_path / "REPORT.md").read_text()


def test_bad_sweep_arguments(capsys):
    assert main(["sweep", "nope"]) == 2
    assert main(["sweep", "all", "--scale", "huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "invalid sweep" in err[0] and "invalid scale" in err[1]
