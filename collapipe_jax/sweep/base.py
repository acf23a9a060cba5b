"""The sweep engine: each experiment is compute → tables, plot(tables), findings(tables).

`compute(scale, work_dir, progress)` returns named tables (lists of flat dict rows) and may cache
intermediate results under `work_dir` (the training sweep caches each run); it reports its work
through `progress` (a `Progress`: `progress.expect(n)` when n steps become known, `progress(1)`
after each), which the progress bar turns into a total and an ETA; a sweep whose
results depend on what the CUs upload (`takes_tunable`) gets `tunable=` as well and runs both the
full upload and that LoRA setting (`tunables`). `plot(tables, out_dir)` draws the PNGs;
`findings(tables)` returns the summary: `findings` (sentences), `claims` (the paper's claims next
to measured numbers, in the format of claims.py) and any other numbers. Numbers are therefore
tested without matplotlib, and figures are redrawn from `tables.json` without recomputing
(`collapipe sweep NAME --replot`).

Files per sweep, in `out/NAME/`: `<table>.csv` per table, `tables.json` (all tables), the
PNGs, and `summary.json`, written last: a sweep whose summary is readable is finished and is
skipped on a rerun (a damaged or missing summary is recomputed), so a killed `make sweep`
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Callable

from tqdm import tqdm

from collapipe_jax.choices import DEFAULT_TUNABLE, SCALES  # noqa: F401 (re-exported)
from collapipe_jax.errors import ValidationError
from collapipe_jax.io import atomic_write_json, read_json, write_csv

Tables = dict[str, list[dict]]


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    compute: Callable[..., Tables]
    plot: Callable[[Tables, pathlib.Path], None]
    findings: Callable[[Tables], dict]
    takes_tunable: bool = False  # compute(scale, work_dir, progress, tunable=...)


class Progress:
    """A sweep's progress bar: `expect(n)` adds n steps to its total (so it shows "i/total" and an
    ETA), `progress(n)` counts n steps done."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, n: int = 1) -> None:
        self.bar.update(n)

    def expect(self, n: int) -> None:
        self.bar.total = (self.bar.total or 0) + n
        self.bar.refresh()


def tunables(tunable: str) -> tuple[str, ...]:
    """The upload settings a sweep runs: the full encoder, and `tunable` unless it is "full"."""
    return ("full",) if tunable == "full" else ("full", tunable)


SWEEPS: dict[str, Sweep] = {}


def register(sweep: Sweep) -> Sweep:
    SWEEPS[sweep.name] = sweep
    return sweep


def finished_summary(out: pathlib.Path, name: str) -> dict | None:
    """The summary of a finished sweep in `out`, or None (not run, or its summary is damaged)."""
    summary = read_json(out / name / "summary.json")
    return summary if isinstance(summary, dict) and summary.get("sweep") == name else None


def write_outputs(sweep: Sweep, tables: Tables, folder: pathlib.Path, scale: str, seconds: float,
                  tunable: str | None = None) -> dict:
    """CSVs, plots and the summary of computed tables (the summary last: it marks completion)."""
    for table, rows in tables.items():
        write_csv(folder / f"{table}.csv", rows)
    sweep.plot(tables, folder)
    summary = {"sweep": sweep.name, "scale": scale, "seconds": seconds}
    if sweep.takes_tunable:
        summary["tunable"] = tunable
    summary.update(sweep.findings(tables))
    atomic_write_json(folder / "summary.json", summary)
    return summary


def reusable_summary(sweep: Sweep, out: pathlib.Path, tunable: str = DEFAULT_TUNABLE) -> dict | None:
    """The summary of a finished run of `sweep` in `out` that a rerun reuses (for a sweep that
    takes a tunable, one run with the same tunable), or None."""
    summary = finished_summary(out, sweep.name)
    if summary is not None and (not sweep.takes_tunable or summary.get("tunable") == tunable):
        return summary
    return None


def run_sweep(sweep: Sweep, scale: str, out: pathlib.Path, force: bool = False,
              tunable: str = DEFAULT_TUNABLE, place: str = "") -> dict:
    """Compute (or reuse, when finished with the same `tunable`) one sweep; returns its summary.
    `place` ("3 of 9") says where the sweep stands in a run of several, on the progress bar."""
    folder = out / sweep.name
    label = f"sweep {place + ' ' if place else ''}{sweep.name}"
    summary = None if force else reusable_summary(sweep, out, tunable)
    if summary is not None:
        print(f"{label}: reused, finished earlier in {folder} (--force recomputes it)", file=sys.stderr)
        return summary
    start = time.perf_counter()
    extra = {"tunable": tunable} if sweep.takes_tunable else {}
    with tqdm(desc=label, unit="step", file=sys.stderr) as bar:
        tables = sweep.compute(scale, folder, Progress(bar), **extra)
        bar.total = bar.n  # the work announced and the work done agree at the end
    atomic_write_json(folder / "tables.json", {"scale": scale, **extra, "tables": tables})
    return write_outputs(sweep, tables, folder, scale, time.perf_counter() - start, extra.get("tunable"))


def replot(sweep: Sweep, out: pathlib.Path) -> dict:
    """Redraw the figures and the summary of a computed sweep from its tables.json."""
    folder = out / sweep.name
    saved = read_json(folder / "tables.json")
    if not isinstance(saved, dict) or "tables" not in saved:
        raise ValidationError("replot", f"no readable tables.json in {folder}: run the sweep first", sweep.name)
    old = finished_summary(out, sweep.name) or {}
    return write_outputs(sweep, saved["tables"], folder, saved.get("scale", "?"), old.get("seconds", 0.0),
                         saved.get("tunable"))
