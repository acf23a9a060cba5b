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
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Callable

from tqdm import tqdm

from collapipe_jax.choices import DEFAULT_TUNABLE, SCALES  # noqa: F401 (re-exported)
from collapipe_jax.errors import ValidationError
from collapipe_jax.io import atomic_write_json, check_finite, first_non_finite, read_json, write_csv
from collapipe_jax.options import as_finite_float
from collapipe_jax.programs import bound_maps
from collapipe_jax.sweep.claims import check_claim

Tables = dict[str, list[dict]]


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    compute: Callable[..., Tables]
    plot: Callable[[Tables, pathlib.Path], None]
    findings: Callable[[Tables], dict]
    takes_tunable: bool = False  # compute(scale, work_dir, progress, tunable=...)
    takes_extra_policies: bool = False  # compute(..., extra_policies=(FILE.py:FUNCTION, ...)): users' rules too


class Progress:
    """A sweep's progress bar: `expect(n)` adds n steps to its total (so it shows "i/total" and an
    ETA), `progress(n)` counts n steps done."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, n: int = 1) -> None:
        self.bar.update(n)
        bound_maps()  # a step's programs are done with: a safe point to release them (programs.py)

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


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def summary_problem(summary, name: str) -> str | None:
    """What makes `summary` unusable as sweep `name`'s summary (the report reads every field
    below), or None: a damaged file, another sweep's, or valid JSON of the wrong types."""
    if not isinstance(summary, dict):
        return "is not a readable JSON object"
    if summary.get("sweep") != name:
        return f"is the summary of {summary.get('sweep')!r}, not of {name!r}"
    if not isinstance(summary.get("scale"), str):
        return "has no scale string"
    seconds = summary.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return f"has seconds {seconds!r}, not a finite number"
    if not isinstance(summary.get("findings", []), list) or not all(isinstance(f, str) for f in summary.get("findings", [])):
        return "has findings that are not a list of sentences"
    if not isinstance(summary.get("tunable", ""), (str, type(None))):
        return "has a tunable that is not a string"
    if not _strings(summary.get("extra_policies", [])):
        return "has extra_policies that are not a list of strings"
    claims = summary.get("claims", [])
    if not isinstance(claims, list):
        return "has claims that are not a list"
    for c in claims:
        try:
            check_claim(c)
        except ValidationError as err:
            return f"has a malformed claim ({err})"
    if (hit := first_non_finite(summary)) is not None:
        return f"holds the non-finite number {hit[0]} = {hit[1]}"
    return None


def finished_summary(out: pathlib.Path, name: str, action: str = "", warn: bool = True) -> dict | None:
    """The summary of a finished sweep in `out`, or None (not run, or its summary is damaged or
    of the wrong types: then one warning line on stderr says so and what happens, `action`,
    unless `warn` is False: a look ahead that the run itself will warn about)."""
    path = out / name / "summary.json"
    if not path.exists():
        return None
    summary = read_json(path)
    problem = summary_problem(summary, name)
    if problem is None:
        return summary
    if warn:
        action = action or f"left out (`collapipe sweep {name}` recomputes it)"
        print(f"collapipe: warning: {path} {problem}: {action}", file=sys.stderr)
    return None


def tables_problem(saved) -> str | None:
    """What makes a tables.json unusable for --replot, or None: `{"scale", "tables": {name:
    [flat rows of finite numbers, strings, booleans, null]}}`."""
    if not isinstance(saved, dict) or not isinstance(saved.get("tables"), dict) or not saved["tables"]:
        return "is missing, damaged, or holds no tables"
    if not _strings(saved.get("extra_policies", [])):
        return "has extra_policies that are not a list of strings"
    if not isinstance(saved.get("scale", ""), str) or not isinstance(saved.get("tunable", ""), (str, type(None))):
        return "has a scale or tunable that is not a string"
    for table, rows in saved["tables"].items():
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            return f"has a table {table!r} that is not a non-empty list of rows"
        if any(isinstance(v, (dict, list)) for r in rows for v in r.values()):
            return f"has a table {table!r} whose rows are not flat"
    if (hit := first_non_finite(saved["tables"])) is not None:
        return f"holds the non-finite number {hit[0]} = {hit[1]}"
    for table, rows in saved["tables"].items():
        for i, row in enumerate(rows):
            for key, value in row.items():
                if (why := _unreadable_number(value)) is not None:
                    return f"holds {why} at {table}[{i}].{key}"
    return None


def _unreadable_number(value) -> str | None:
    """Why a table value would not come back as a finite number, or None: a string that the
    figures' float() reads as NaN or inf ("NaN", "Infinity", "1e999"), an integer past float's
    range (a 400-digit integer: OverflowError in the figures)."""
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            return None  # a label
        return None if math.isfinite(x) else f"the non-finite number {value!r} (a string)"
    if isinstance(value, int) and not isinstance(value, bool) and as_finite_float(value) is None:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits, past a float's range"
    return None


def write_outputs(sweep: Sweep, tables: Tables, folder: pathlib.Path, scale: str, seconds: float,
                  tunable: str | None = None, plot: bool = True, extra_policies=()) -> dict:
    """CSVs, plots and the summary of computed tables (the summary last: it marks completion)."""
    for table, rows in tables.items():
        write_csv(folder / f"{table}.csv", rows)
    if plot:
        sweep.plot(tables, folder)
    summary = {"sweep": sweep.name, "scale": scale, "seconds": seconds}
    if sweep.takes_tunable:
        summary["tunable"] = tunable
    if sweep.takes_extra_policies:
        summary["extra_policies"] = list(extra_policies or ())
    summary.update(sweep.findings(tables))
    atomic_write_json(folder / "summary.json", summary)
    return summary


def reusable_summary(sweep: Sweep, out: pathlib.Path, tunable: str = DEFAULT_TUNABLE,
                     warn: bool = True, extra_policies: tuple[str, ...] = ()) -> dict | None:
    """The summary of a finished run of `sweep` in `out` that a rerun reuses (for a sweep that
    takes a tunable, one run with the same tunable; for one that takes users' rules, one run
    with the same rules), or None."""
    summary = finished_summary(out, sweep.name, "recomputing the sweep", warn)
    if summary is None or (sweep.takes_tunable and summary.get("tunable") != tunable):
        return None
    if sweep.takes_extra_policies and list(summary.get("extra_policies", [])) != list(extra_policies):
        return None
    return summary


def run_sweep(sweep: Sweep, scale: str, out: pathlib.Path, force: bool = False,
              tunable: str = DEFAULT_TUNABLE, place: str = "", extra_policies: tuple[str, ...] = ()) -> dict:
    """Compute (or reuse, when finished with the same `tunable` and `extra_policies`) one sweep;
    returns its summary. `place` ("3 of 9") says where the sweep stands in a run of several, on
    the progress bar; `extra_policies` (users' rules, FILE.py:FUNCTION) go to the sweeps that
    take them."""
    folder = out / sweep.name
    label = f"sweep {place + ' ' if place else ''}{sweep.name}"
    extra_policies = tuple(extra_policies) if sweep.takes_extra_policies else ()
    summary = None if force else reusable_summary(sweep, out, tunable, extra_policies=extra_policies)
    if summary is not None:
        print(f"{label}: reused, finished earlier in {folder} (--force recomputes it)", file=sys.stderr)
        return summary
    start = time.perf_counter()
    extra = {"tunable": tunable} if sweep.takes_tunable else {}
    if sweep.takes_extra_policies:
        extra["extra_policies"] = list(extra_policies)
    with tqdm(desc=label, unit="step", file=sys.stderr) as bar:
        tables = sweep.compute(scale, folder, Progress(bar), **extra)
        bar.total = bar.n  # the work announced and the work done agree at the end
    atomic_write_json(folder / "tables.json", {"scale": scale, **extra, "tables": tables})
    summary = write_outputs(sweep, tables, folder, scale, time.perf_counter() - start, extra.get("tunable"),
                            extra_policies=extra_policies)
    bound_maps()  # the next sweep compiles programs of its own
    return summary


def replot(sweep: Sweep, out: pathlib.Path) -> dict:
    """Redraw the figures and the summary of a computed sweep from its tables.json."""
    folder = out / sweep.name
    path = folder / "tables.json"
    saved = read_json(path)
    if (problem := tables_problem(saved)) is not None:
        raise ValidationError("replot", f"{path} {problem}: run the sweep (with --force) first", sweep.name)
    tables = saved["tables"]
    # findings and figures first, the figures into a temporary folder: tables of another shape
    # (rows missing keys, another sweep's tables) fail here, before any file is replaced
    with tempfile.TemporaryDirectory(dir=folder, prefix=".replot-") as tmp:
        try:
            check_finite(sweep.findings(tables))
            sweep.plot(tables, pathlib.Path(tmp))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError) as err:
            if isinstance(err, ValidationError):
                raise
            raise ValidationError("replot", f"{path} does not hold the tables of this sweep ({type(err).__name__}: "
                                            f"{str(err)[:120]}): run the sweep (with --force) first", sweep.name) from None
        for figure in pathlib.Path(tmp).iterdir():
            os.replace(figure, folder / figure.name)
    old = finished_summary(out, sweep.name, "its seconds are left at 0") or {}
    return write_outputs(sweep, tables, folder, saved.get("scale", "?"), old.get("seconds", 0.0),
                         saved.get("tunable"), plot=False, extra_policies=saved.get("extra_policies", ()))
