"""`collapipe plot`: the learning curves of one or more `collapipe train` runs, from their records.

A run directory (`train --log-dir`) holds rounds.csv, one row per finished round: `round`,
`loss`, `tau_round_s` (the simulated round latency τ(t) of the system model, paper Eq. 26),
`energy_j` and the task metrics of the rounds that were evaluated (empty cells otherwise); and,
once the run has finished, result.json (its task, framework and seed label the line). A run
still going is drawn up to its last round.

The figure has two panels, one line per run: the metric against the round, and against the
simulated latency Σ_{s≤t} τ(s) accumulated up to the end of round t (the wireless-edge time the
paper's figures use, not the time the simulation took). A centralized run (`train --framework
centralized`: no wireless round, empty tau_round_s cells) is drawn in the first panel only, so
that it can be compared with the federated runs by round. Labels are drawn as written (no
mathtext).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import pathlib

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from collapipe_jax.errors import ValidationError
from collapipe_jax.io import atomic_write_bytes, read_json
from collapipe_jax.options import FLOAT32_MAX, INT32_MAX, require

BASE_COLUMNS = ("round", "loss", "tau_round_s", "energy_j")  # rounds.csv's columns before the metrics
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v")
METRIC_LABELS = {"loss": "training loss", "accuracy": "accuracy", "entity_f1": "entity F1", "bleu": "BLEU",
                 "bleu_lowercase": "BLEU (lowercased)"}


@dataclasses.dataclass(frozen=True)
class Run:
    path: pathlib.Path
    label: str
    columns: tuple[str, ...]
    rows: list[dict[str, float | None]]  # rounds.csv, numbers (None: an empty cell)


def read_run(path: str | pathlib.Path) -> Run:
    """A run's rounds.csv and label; a missing or malformed record is a one-line error naming it."""
    directory = pathlib.Path(path)
    require(directory.is_dir(), "run", "must be a run directory (the --log-dir of collapipe train)", str(path))
    table = directory / "rounds.csv"
    require(table.is_file(), "run", "holds no rounds.csv: not the --log-dir of collapipe train, or no round has "
                                    "finished yet", str(path))
    try:
        reader = csv.DictReader(io.StringIO(table.read_text(encoding="utf-8")))
        columns = tuple(reader.fieldnames or ())
        raw_rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValidationError("run", f"{table} cannot be read ({err})") from None
    require("round" in columns and "tau_round_s" in columns, "run",
            f"{table} is not a rounds.csv of collapipe train (it has no round and tau_round_s columns)")
    rows = [parse_row(table, line, raw, columns) for line, raw in enumerate(raw_rows, 2)]
    require(bool(rows), "run", f"{table} holds no round yet")
    check_latency_column(table, rows)
    return Run(directory, run_label(directory), columns, rows)


def parse_row(table: pathlib.Path, line: int, raw: dict, columns: tuple[str, ...]) -> dict[str, float | None]:
    row: dict[str, float | None] = {}
    for name in columns:
        text = raw.get(name)
        if text is None or text == "":
            row[name] = None
            continue
        try:
            value = float(text)
        except ValueError:
            raise ValidationError("run", f"{table} line {line}: {name} must be a number", text) from None
        # collapipe train computes in float32: a larger number is no record of it, and one near
        # float64's limit breaks the axes' arithmetic (matplotlib: "arange: cannot compute length")
        require(math.isfinite(value) and abs(value) <= FLOAT32_MAX, "run",
                f"{table} line {line}: {name} must be a finite number within float32's range (|x| <= "
                f"{FLOAT32_MAX:.4g})", text)
        row[name] = value
    rnd = row["round"]
    require(rnd is not None and rnd >= 0 and rnd == int(rnd) and rnd <= INT32_MAX, "run",
            f"{table} line {line}: round must be an integer in [0, {INT32_MAX}]", raw.get("round"))
    return row


def check_latency_column(table: pathlib.Path, rows: list[dict]) -> None:
    """tau_round_s on every row (a federated run's simulated round latency) or on none (a
    centralized run, which has no wireless round to simulate)."""
    given = [row["tau_round_s"] is not None for row in rows]
    if not all(given) and any(given):
        raise ValidationError("run", f"{table}: tau_round_s must be given on every row (a federated run) or on none "
                                     f"(a centralized run); line {given.index(not given[0]) + 2} differs from line 2")


def run_label(directory: pathlib.Path) -> str:
    """task/framework, seed from result.json; the directory's name while the run has none."""
    result = read_json(directory / "result.json")
    if isinstance(result, dict) and all(k in result for k in ("task", "framework", "seed")):
        return f"{result['task']}/{result['framework']}, seed {result['seed']}"
    return f"{directory.name} (unfinished)"


def metrics_of(run: Run) -> list[str]:
    return [c for c in run.columns if c not in BASE_COLUMNS]


def default_metric(runs: list[Run]) -> str:
    """The first task metric every run has, else the loss."""
    shared = [m for m in metrics_of(runs[0]) if all(m in r.columns for r in runs[1:])]
    return shared[0] if shared else "loss"


def has_latency(run: Run) -> bool:
    """Whether the run has a simulated latency (a centralized run has none: `check_latency_column`)."""
    return run.rows[0]["tau_round_s"] is not None


def curve(run: Run, metric: str) -> tuple[list[float], list[float] | None, list[float]]:
    """(rounds, simulated latency Σ τ up to the end of each round, values) of the rounds where
    `metric` was measured; the latency is None for a run that has none."""
    rounds, latency, values, elapsed = [], [], [], 0.0
    for row in run.rows:
        elapsed += row["tau_round_s"] or 0.0
        if row.get(metric) is not None:
            rounds.append(row["round"])
            latency.append(elapsed)
            values.append(row[metric])
    return rounds, latency if has_latency(run) else None, values


def literal(text: str) -> str:
    """`text` drawn as written: matplotlib reads a pair of `$` as mathtext (a run folder named
    `$\\frac{` fails to parse), an escaped `\\$` is a dollar sign."""
    return text.replace("$", r"\$")


def unique_labels(runs: list[Run]) -> list[str]:
    """Each run's label, with its directory's name where two runs would read the same."""
    labels = [r.label for r in runs]
    return [f"{label} ({r.path.name})" if labels.count(label) > 1 else label for label, r in zip(labels, runs)]


def plot_runs(paths: list[str], out: str | None = None, metric: str | None = None) -> dict:
    """Draw `metric` of every run against the round and the simulated latency into the PNG
    `out` (default: curves.png in the first run's directory); returns what was drawn."""
    runs = [read_run(p) for p in paths]
    metric = metric or default_metric(runs)
    for run in runs:
        require(metric in run.columns, "metric", f"{run.path} has no column {metric!r} (it has: "
                                                 f"{', '.join(['loss', *metrics_of(run)])})", metric)
    target = pathlib.Path(out) if out else runs[0].path / "curves.png"
    require(target.suffix.lower() == ".png", "out", "must be a .png file", str(target))
    require(not target.is_dir(), "out", "must be a file, and is a directory", str(target))
    name = literal(METRIC_LABELS.get(metric, metric))
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    by_round, by_latency = fig.subplots(1, 2)
    drawn = []
    for i, (run, label) in enumerate(zip(runs, unique_labels(runs))):
        rounds, latency, values = curve(run, metric)
        # a line style and marker per run: runs whose curves coincide (the same losses under
        # two frameworks) stay visible one over the other
        style = dict(linestyle=LINE_STYLES[i % len(LINE_STYLES)], label=literal(label), markersize=4,
                     marker=MARKERS[i % len(MARKERS)] if len(values) <= 30 else None, fillstyle="none",
                     color=f"C{i % 10}")
        by_round.plot(rounds, values, **style)
        if latency is not None:  # a centralized run is drawn by round only
            by_latency.plot(latency, values, **style)
        drawn.append({"run": str(run.path), "label": label, "points": len(values), "rounds": len(run.rows),
                      "simulated_latency_s": sum(r["tau_round_s"] for r in run.rows) if latency is not None else None})
    by_round.set(title=f"{name} by round", xlabel="round t", ylabel=name)
    by_latency.set(title=f"{name} by simulated latency", xlabel="simulated latency Σ τ(t) [s] (not wall time)",
                   ylabel=name)
    if not any(has_latency(run) for run in runs):
        by_latency.text(0.5, 0.5, "no simulated latency:\ncentralized runs have no wireless rounds", ha="center",
                        va="center", transform=by_latency.transAxes)
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (by_round, by_latency):
        ax.grid(alpha=0.3)
    by_round.legend(fontsize=8, loc="best")  # every run is in this panel; a centralized one is not by latency
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(target, buf.getvalue())
    return {"out": str(target), "metric": metric, "runs": drawn}
