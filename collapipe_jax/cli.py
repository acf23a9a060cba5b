"""The `collapipe` command (docs/design.md §6); every command-line option of the package is here.

Subcommands print a readable table by default and one JSON object with `--json`. Bad input is
one line on stderr and exit code 2, never a traceback. The options of `schedule`, `train` and
`sweep` are generated from their config dataclasses (`options.option` fields: flag, default,
help and choices are written once, in the dataclass), so a default is never typed twice.

JAX reads XLA's flags when its backends start, not when it is imported: `main` sets the host
device count (`--host-devices`) before any computation.

The parser is built from modules that import no JAX (the config dataclasses and choices.py), so
`collapipe --help` and `collapipe SUB --help` answer at once; each command's handler imports
the simulator, scheduler or trainer it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import os
import pathlib
import re
import shutil
import sys
import time
import typing

from collapipe_jax.choices import DEFAULT_TUNABLE, PRESETS, SCALES, SWEEP_NAMES, TUNABLE_HELP, VARIANTS
from collapipe_jax.distributed import ascii_int, initialize_from_env
from collapipe_jax.errors import InfeasibleError, ValidationError
from collapipe_jax.io import check_finite, check_output_dir, redirect_fd, to_json
from collapipe_jax.options import INT32_MAX, MEMORY_SHARE, SEED_MAX, check_fields, check_float, check_seed, flag_name
from collapipe_jax.options import memory_budget, option
from collapipe_jax.comparison import CompareConfig
from collapipe_jax.programs import compile_failure, prefer_fast_cpu_compiles, use_compilation_cache
from collapipe_jax.scheduling.schedule import ScheduleConfig
from collapipe_jax.train_config import TrainConfig, bare_default_note, recipe_names, settings_source


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit code 2."""

    def error(self, message):
        raise ValidationError("arguments", message)


class _BadValue(Exception):
    """Carries a converter's ValidationError through argparse, which would replace a ValueError
    by its own "invalid <function> value" message (`parse_args` unwraps it)."""

    def __init__(self, error: ValidationError):
        super().__init__(str(error))
        self.error = error


def parse_args(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except _BadValue as bad:
        raise bad.error from None


# --------------------------------------------------------------------------- options from dataclasses


def option_help(field: dataclasses.Field) -> str:
    """The help of a config field's option: its text, its choices, and its default unless the
    default is None (the text says what applies then) or the text already states one."""
    meta, default = field.metadata, field.default
    choices = meta.get("choices")
    text = meta["help"] + (f" ({'|'.join(map(str, choices))})" if choices else "")
    if note := bare_default_note(field):  # train without --config: the task's CPU recipe's
        return f"{text} {note}"
    if default is None or re.search(r"[\[(]default\b", meta["help"]):
        return text
    return f"{text} [default: {default}]"


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One option per `option` field of the config dataclass `cls` (parsed defaults None: the
    dataclass's own default applies, stated once in the help by `option_help`)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if not meta.get("cli", False) or field.name in skip:
            continue
        kind = hints[field.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        default = field.default
        help_text = option_help(field).replace("%", "%%")  # argparse formats help with %
        if meta.get("positional"):  # optional: the dataclass's default when left out
            parser.add_argument(field.name, nargs="?", default=None, help=help_text)
        elif base is bool:  # a switch; a True default is turned off by --no-NAME, with its own help
            flag = ("--no-" if default else "--") + flag_name(field)
            parser.add_argument(flag, dest=field.name, action="store_false" if default else "store_true",
                                default=None, help=(meta.get("off_help") or meta["help"]) if default else meta["help"])
        else:
            parser.add_argument("--" + flag_name(field), dest=field.name, type=_typed(base, field), default=None,
                                help=help_text)


def _typed(base, field):
    """argparse type converter with the one-line error of the field (a config field or a name);
    ranges are the config's `__post_init__`'s."""
    expected = {int: "an integer", float: "a number"}.get(base, "a string")
    name = field if isinstance(field, str) else flag_name(field)

    def convert(text: str):
        try:
            value = base(text)
        except ValueError:
            raise _BadValue(ValidationError(name, f"must be {expected}", text)) from None
        if base is float and not math.isfinite(value):
            raise _BadValue(ValidationError(name, "must be a finite number", text))
        return value

    return convert


def _seed(text: str) -> int:
    value = _typed(int, "seed")(text)
    try:
        check_seed("seed", value)
    except ValidationError as err:
        raise _BadValue(err) from None
    return value


def config_from_args(cls, args, **extra):
    """The config dataclass from the parsed options that were given (others keep defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return cls(**{**values, **extra})


# --------------------------------------------------------------------------- latency / sensitivity


@dataclasses.dataclass(frozen=True)
class DecisionOptions:
    """The decision evaluated by `latency` and `sensitivity` (defaults: `default_decision`)."""

    delta: str | None = option(None, 'TEBs per device, "d11,d12,...;d21,..." (one row = all clusters)')
    order: str | None = option(None, 'pipeline order of the scheduled devices, "k,k,..;.." (default: index order)')
    m: str | None = option(None, "micro-batches, 1 or N values")
    channel: str | None = option(None, "uplink channel per cluster (-1 = none), N values")
    p_n: str | None = option(None, "CU transmit power in W, 1 or N values")
    variant: str = option("paper", "Eq. 15 as printed (paper) or b̂-scaled with the exact GPipe makespan "
                                   "(consistent)", choices=VARIANTS)
    mean_state: bool = option(False, "use the middle of every range instead of a seeded random draw")
    tunable: str | None = option(None, TUNABLE_HELP)

    def __post_init__(self):
        check_fields(self)
        if self.tunable is not None:
            from collapipe_jax.scenario import tunable_rank

            tunable_rank(self.tunable)


def parse_int_list(field: str, text: str) -> list[int]:
    """Comma-separated integers within int32 ("2.0" and "1e1" are integers too)."""
    values = []
    for item in text.split(","):
        try:
            value = int(item)
        except ValueError:
            try:
                real = float(item)
            except ValueError:
                raise ValidationError(field, "must be comma-separated integers", text) from None
            if not math.isfinite(real) or real != int(real):
                raise ValidationError(field, "must be comma-separated integers", text)
            value = int(real)
        if abs(value) > INT32_MAX:
            raise ValidationError(field, f"must be integers within int32 (|x| <= {INT32_MAX})", text)
        values.append(value)
    return values


def parse_float_list(field: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValidationError(field, "must be comma-separated numbers", text) from None
    if any(not math.isfinite(v) for v in values):
        raise ValidationError(field, "must be finite numbers", text)
    return values


def per_cluster(field: str, values: list, n: int) -> list:
    """One value broadcasts to all N clusters; otherwise exactly N values."""
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ValidationError(field, f"must give 1 or N={n} values", len(values))
    return values


def parse_rows(field: str, text: str, n: int, parse) -> list[list]:
    """`"r1;r2;..."`: one row broadcasts to all clusters, otherwise N rows."""
    return per_cluster(field, [parse(field, row) for row in text.split(";")], n)


def decision_from_options(scenario, opts: DecisionOptions):
    """The decision given on the command line, defaults from `default_decision`."""
    import numpy as np

    from collapipe_jax.scenario import default_decision, make_decision, orders_of

    s = scenario
    base = default_decision(s)
    delta = np.asarray(base.delta)
    if opts.delta is not None:
        rows = parse_rows("delta", opts.delta, s.N, parse_int_list)
        if any(len(r) != s.K for r in rows):
            raise ValidationError("delta", f"each row must have K={s.K} values", opts.delta)
        delta = np.asarray(rows)
    orders = None
    if opts.order is not None:
        orders = parse_rows("order", opts.order, s.N, parse_int_list)
    elif opts.delta is None:
        orders = orders_of(base)
    m = np.asarray(base.m) if opts.m is None else per_cluster("m", parse_int_list("m", opts.m), s.N)
    channel = (np.asarray(base.channel) if opts.channel is None
               else per_cluster("channel", parse_int_list("channel", opts.channel), s.N))
    p_n = (np.asarray(base.p_n_w) if opts.p_n is None
           else per_cluster("p_n", parse_float_list("p_n", opts.p_n), s.N))
    return make_decision(s, delta, m, channel, p_n, orders)


def evaluated_decision(args):
    """(scenario, state, decision, options) of a `latency`/`sensitivity` command line."""
    import jax

    from collapipe_jax.scenario import draw_state, load_scenario, mean_state

    opts = config_from_args(DecisionOptions, args)
    scenario = load_scenario(args.preset, args.scenario, opts.tunable)
    state = mean_state(scenario) if opts.mean_state else draw_state(scenario, jax.random.PRNGKey(args.seed))
    return scenario, state, decision_from_options(scenario, opts), opts


def run_latency(args):
    from collapipe_jax.system import evaluate
    from collapipe_jax.system.report import constraint_violations, inputs_dict, metrics_dict

    scenario, state, decision, opts = evaluated_decision(args)
    metrics = evaluate(state, decision, opts.variant)
    violations = constraint_violations(state, decision, metrics)
    result = {"variant": opts.variant, "tunable": scenario.tunable, "seed": args.seed,
              "inputs": inputs_dict(scenario, state, decision),
              **metrics_dict(metrics), "violations": violations}
    rows = [[n, int(metrics.n_stages[n]), int(decision.m[n]), result["inputs"]["channel"][n],
             float(decision.p_n_w[n]), float(metrics.tau_pipe_s[n]), float(metrics.tau_up_s[n]),
             float(metrics.E_com_j[n]), float(metrics.E_pipe_j[n]), float(metrics.Gamma[n])]
            for n in range(scenario.N)]
    table = format_table(["cluster", "S", "m", "channel", "p_n[W]", "tau_pipe[s]", "tau_up[s]",
                          "E_com[J]", "E_pipe[J]", "Gamma"], rows)
    head = f"scenario {scenario.name}, variant {opts.variant}, tunable {scenario.tunable}, seed {args.seed}"
    lines = [head, table,
             f"round latency tau(t) = {result['tau_round_s']:.6g} s"]
    lines += [f"violates {v['constraint']} (cluster {v['cluster']}): {v['message']}" for v in violations]
    return result, "\n".join(lines)


def run_sensitivity(args):
    import jax

    from collapipe_jax.system import evaluate, round_latency_of_power
    from collapipe_jax.system.report import inputs_dict

    check_float("temperature", args.temperature, low=0.0, strict_low=True, optional=True)
    scenario, state, decision, opts = evaluated_decision(args)
    metrics = evaluate(state, decision, opts.variant)
    tau = float(metrics.tau_round_s)
    temperature = args.temperature if args.temperature is not None else max(0.01 * tau, 1e-9)
    hard = jax.grad(round_latency_of_power)(decision.p_n_w, state, decision, opts.variant)
    smooth_fn = lambda p: round_latency_of_power(p, state, decision, opts.variant, temperature)  # noqa: E731
    smooth_value, smooth = jax.value_and_grad(smooth_fn)(decision.p_n_w)
    result = {
        "variant": opts.variant, "tunable": scenario.tunable, "seed": args.seed,
        "inputs": inputs_dict(scenario, state, decision),
        "tau_round_s": tau,
        "dtau_dp_n": [float(g) for g in hard],
        "smooth_temperature_s": float(temperature),
        "tau_round_smooth_s": float(smooth_value),
        "dtau_smooth_dp_n": [float(g) for g in smooth],
    }
    rows = [[n, float(decision.p_n_w[n]), float(metrics.tau_pipe_s[n] + metrics.tau_up_s[n]),
             float(hard[n]), float(smooth[n])] for n in range(scenario.N)]
    table = format_table(["cluster", "p_n[W]", "tau_n[s]", "dtau/dp_n[s/W]", "smooth dtau/dp_n"], rows)
    text = "\n".join([
        f"scenario {scenario.name}, variant {opts.variant}, tunable {scenario.tunable}, seed {args.seed}", table,
        f"tau(t) = {tau:.6g} s (max); log-sum-exp max at T = {temperature:.4g} s: {float(smooth_value):.6g} s",
    ])
    return result, text


# --------------------------------------------------------------------------- schedule / train / sweep


def run_schedule_command(args):
    from collapipe_jax.scenario import load_scenario
    from collapipe_jax.scheduling.schedule import run_schedule, run_schedule_seeds

    scenario = load_scenario(args.preset, args.scenario)
    cfg = config_from_args(ScheduleConfig, args, seed=args.seed)
    if cfg.seeds is not None or cfg.engine == "device":
        result = run_schedule_seeds(scenario, cfg)
        return result, format_schedule_runs(result)
    result = run_schedule(scenario, cfg)
    return result, format_schedule(result)


def format_schedule_runs(result: dict) -> str:
    """One row per seed, then the mean total latency with its 95% interval."""
    def cell(value, fmt="{:.6g}"):
        return "-" if value is None else fmt.format(value)

    rows = [[r["seed"], cell(r["total_latency_s"]), cell(None if r["final_Y"] is None else max(r["final_Y"])),
             ",".join(f"{v['constraint']}x{v['rounds']}" for v in r["violations"]) or "-",
             "-" if r["infeasible"] is None else
             f"{r['infeasible']['constraint']} (cluster {r['infeasible']['cluster']}, round {r['infeasible']['round']})"]
            for r in result["runs"]]
    table = format_table(["seed", "total latency (simulated) [s]", "final max Y", "violations", "infeasible"], rows)
    head = (f"scenario {result['scenario']}, tunable {result['tunable']}, policy {result['policy']}, variant "
            f"{result['variant']}, lyapunov {result['lyapunov']}, V = {result['V']:g}, {result['rounds_per_run']} rounds "
            f"per seed, engine {result['engine']} on {result['device']}")
    s = result["summary"]
    tail = f"{s['feasible']} of {s['seeds']} seeds feasible"
    if "ci95" in s:
        tail += (f"; mean total latency {s['mean_total_latency_s']:.6g} s, 95% interval "
                 f"[{s['ci95'][0]:.6g}, {s['ci95'][1]:.6g}] s")
    return "\n".join([head, table, tail + f"; {result['seconds']:.3g} s wall time"])


def format_schedule(result: dict) -> str:
    def join(values, fmt="{}"):
        return ",".join("-" if v is None else fmt.format(v) for v in values)

    rows = [[r["round"], r["tau_round_s"], join(r["S"]), join(r["m"]), join(r["channel"]),
             join(r["p_n_w"], "{:.3g}"), max(r["Y"]), sum(r["Gamma"]), r["solve_ms"]] for r in result["rounds"]]
    table = format_table(["round", "tau[s]", "S", "m", "channel", "p_n[W]", "max Y", "sum Gamma", "solve[ms]"], rows)
    head = (f"scenario {result['scenario']}, tunable {result['tunable']}, policy {result['policy']}, "
            f"variant {result['variant']}, "
            f"lyapunov {result['lyapunov']}, solver {result['solver']}, V = {result['V']:g}, seed {result['seed']}")
    tail = (f"total latency over {len(result['rounds'])} rounds: {result['total_latency_s']:.6g} s; "
            f"mean solve time {result['mean_solve_ms']:.3g} ms")
    return "\n".join([head, table, tail])


def run_compare_command(args):
    from collapipe_jax.comparison import CompareConfig, format_compare, run_compare
    from collapipe_jax.scenario import load_scenario

    if args.seed_given:
        raise ValidationError("seed", "compare runs every seed of --seeds A:B; it takes no --seed", args.seed)
    result = run_compare(load_scenario(args.preset, args.scenario), config_from_args(CompareConfig, args))
    return result, format_compare(result, format_table)


@dataclasses.dataclass(frozen=True)
class ScenarioOptions:
    fields: bool = option(False, "list every scenario field with its unit, default and meaning")
    tunable: str | None = option(None, TUNABLE_HELP)

    def __post_init__(self):
        check_fields(self)


def run_scenario_command(args):
    """The resolved scenario (--preset/--scenario/--tunable), or with --fields its fields' table."""
    from collapipe_jax.scenario import load_scenario
    from collapipe_jax.scenario_fields import field_rows

    opts = config_from_args(ScenarioOptions, args)
    if opts.fields:
        rows = field_rows()
        result = {"fields": [dict(zip(("field", "unit", "default", "meaning"), row)) for row in rows]}
        return result, format_table(["field", "unit", "default", "meaning"], [list(r) for r in rows])
    scenario = load_scenario(args.preset, args.scenario, opts.tunable)
    result = scenario.to_dict()
    return result, format_table(["field", "value"], [[k, str(v)] for k, v in result.items()])


def run_train_command(args):
    from collapipe_jax.train import config_with_recipe, train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    shared = {"seed": args.seed if args.seed_given else None, "preset": args.preset, "scenario": args.scenario}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None and k not in shared}
    cfg = config_with_recipe({**given, **{k: v for k, v in shared.items() if v is not None}})
    made = None
    if cfg.log_dir is None and cfg.checkpoint_dir is None:  # every run from the command line leaves a record
        made = new_run_dir(cfg.task, cfg.framework)
        cfg = dataclasses.replace(cfg, log_dir=str(made))
    try:
        if cfg.seeds is not None:
            from collapipe_jax.sweep.seeds import train_seeds

            result, text = seeds_output(cfg, train_seeds(cfg))
        else:
            result = train(cfg)
            text = format_train(cfg, result)
    except BaseException:
        if made is not None:
            remove_unused_run_dir(made)
        raise
    result["log_dir"] = where = cfg.log_dir or cfg.checkpoint_dir
    if cfg.seeds is not None:
        seeds = " ".join(f"{where}/seed-{s}" for s in result["seeds"][:3]) + (" ..." if len(result["seeds"]) > 3 else "")
        args.notes = [f"records of this run: {where}/result.json (the seeds' mean), each seed's in {where}/seed-<s>/ "
                      f"(draw them with: collapipe plot {seeds})"]
    else:
        args.notes = [f"records of this run (result.json, rounds.csv): {where} (draw them with: collapipe plot {where})"]
    return result, text


def remove_unused_run_dir(made: pathlib.Path) -> None:
    """A default run directory whose run failed before its first round holds no record (only
    lock files and empty seed-<s>/ folders): removed, runs/ too when nothing else is there."""
    from collapipe_jax.checkpoints import LOCK_NAME

    if any(p.is_file() and p.name != LOCK_NAME for p in made.rglob("*")):
        return
    shutil.rmtree(made, ignore_errors=True)
    with contextlib.suppress(OSError):
        made.parent.rmdir()


def new_run_dir(task: str, framework: str, root: str = "runs") -> pathlib.Path:
    """A fresh `runs/<task>-<framework>-<UTC time>/` (a suffix -2, -3, ... when taken): made
    here, so two runs started in the same second do not share it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for suffix in ("", *(f"-{i}" for i in range(2, 1000))):
        path = pathlib.Path(root) / f"{task}-{framework}-{stamp}{suffix}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise ValidationError("log-dir", f"the default {root}/ cannot be written ({err.strerror}): give "
                                             "--log-dir", str(path)) from None
    raise ValidationError("log-dir", "no free default name: give --log-dir", str(path))


def format_train(cfg, result: dict) -> str:
    """The train table: the simulated latency and energy of each round (the system model's
    charge for the decision, not the time this process took) beside the wall time and metrics."""
    metric_names = sorted({k for r in result["rounds"] for k in r["metrics"]})
    rows = [[r["round"], r["loss"], r["tau_round_s"], r["energy_j"], r["wall_s"],
             *[r["metrics"].get(n) for n in metric_names]] for r in result["rounds"]]
    table = format_table(["round", "loss", "sim_latency[s]", "sim_energy[J]", "wall[s]", *metric_names], rows)
    return "\n".join([
        f"task {cfg.task}, framework {cfg.framework} (policy {cfg.resolved_policy}), model {result['model']}, "
        f"N={result['clusters']}, pipelined={result['pipelined']}", settings_source(cfg), table,
        "sim_latency, sim_energy: the simulated wireless-edge latency τ(t) and energy the system model charges for "
        "the round's decision (Eq. 26; 12, 14, 16), not wall time",
        "wall: the seconds this process took for the round (round 0 includes compiling); '-': not evaluated",
        "final: " + ", ".join(f"{k} = {v:.4g}" for k, v in result["final_metrics"].items()),
        *reference_lines(result)])


def reference_lines(result: dict) -> list[str]:
    """The gap to a `--reference` run, when one was given."""
    if "reference" not in result:
        return []
    ref = result["reference"]
    return [f"gap to the {ref['framework']} reference in points: "
            + ", ".join(f"{k} {v:+.3g}" for k, v in ref["gap_points"].items())
            + ("" if ref["same_samples"] else " (the runs took different samples)")]


def seeds_output(cfg: TrainConfig, result: dict):
    """`train --seeds`: one row per seed, then the mean and its 95% interval."""
    names = sorted(result["final_metrics"])
    rows = [[r["seed"], r["final_loss"], *[r["final_metrics"].get(n) for n in names]] for r in result["per_seed"]]
    table = format_table(["seed", "final loss", *names], rows)
    lines = [f"task {cfg.task}, framework {cfg.framework}, model {result['model']}, N={result['clusters']}, "
             f"{result['n']} seeds", settings_source(cfg), table,
             "mean (95% interval): " + ", ".join(f"{n} = {result['final_metrics'][n]:.4g} "
                                                 f"[{result['ci95'][n][0]:.4g}, {result['ci95'][n][1]:.4g}]"
                                                 for n in names)]
    return result, "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    name: str = option("all", f"a sweep name or 'all' ({', '.join(SWEEP_NAMES)})", positional=True)
    scale: str = option("quick", "quick (minutes on 2 CPU cores) or paper", choices=SCALES)
    out: str = option("results", "output directory")
    force: bool = option(False, "recompute sweeps that already finished")
    replot: bool = option(False, "redraw figures and summaries of finished sweeps from their tables.json")
    tunable: str = option(DEFAULT_TUNABLE, "the LoRA upload (lora:R) the sweeps compare with the full encoder "
                                           "upload, or full for the full upload alone")

    def __post_init__(self):
        check_fields(self)
        from collapipe_jax.scenario import tunable_rank

        tunable_rank(self.tunable)
        if self.name != "all" and self.name not in SWEEP_NAMES:
            raise ValidationError("sweep", f"unknown sweep, choose 'all' or one of {list(SWEEP_NAMES)}", self.name)


def extra_policies(specs, sweeps, replot: bool) -> tuple[str, ...]:
    """The users' rules of `--extra-policy` (each loaded here, so that a bad one is one error line
    before any sweep starts), for the sweeps among `sweeps` that take them."""
    from collapipe_jax.scheduling.user_policy import is_user_policy, load_policy

    specs = tuple(dict.fromkeys(specs or ()))
    if not specs:
        return ()
    takers = [s.name for s in sweeps if s.takes_extra_policies]
    if not takers or replot:
        raise ValidationError("extra-policy", "applies to the sweeps that run every policy (policies) and not "
                                              "to --replot", specs[0])
    for spec in specs:
        if not is_user_policy(spec):
            raise ValidationError("extra-policy", "must be a rule of your own, FILE.py:FUNCTION or "
                                                  "package.module:function (the built-in rules already run)", spec)
        load_policy(spec)
    return specs


def run_sweep_command(args):
    from collapipe_jax.report import write_report
    from collapipe_jax.sweep import SWEEPS, finished_summary, replot, run_sweep
    from collapipe_jax.sweep.base import reusable_summary

    for name in ("preset", "scenario"):
        if getattr(args, name) is not None:
            raise ValidationError(name, "sweep runs the paper's own settings; it takes no --preset or --scenario",
                                  getattr(args, name))
    if args.seed_given:  # each sweep draws its own seeds (the paper's settings): a --seed would change nothing
        raise ValidationError("seed", "sweep runs each sweep's own fixed seeds; it takes no --seed", args.seed)
    opts = config_from_args(SweepOptions, args)
    names = list(SWEEPS) if opts.name == "all" else [opts.name]
    extra = extra_policies(args.extra_policy, [SWEEPS[name] for name in names], opts.replot)
    out = check_output_dir("out", opts.out)
    if not opts.replot:  # a rerun (after a crash, or of one sweep) reuses the programs
        use_compilation_cache(out / ".jax-cache")
    reused = set() if opts.replot or opts.force else {
        name for name in names if reusable_summary(SWEEPS[name], out, opts.tunable, warn=False,
                                                   extra_policies=extra) is not None}
    summaries = {name: (replot(SWEEPS[name], out) if opts.replot else run_sweep(SWEEPS[name], opts.scale, out,
                                                                              opts.force, opts.tunable,
                                                                              f"{i} of {len(names)}", extra))
                 for i, name in enumerate(names, 1)}
    for name in SWEEPS:  # the report covers every finished sweep in `out`, not only this call's
        if name not in summaries and (summary := finished_summary(out, name)) is not None:
            summaries[name] = summary
    summaries = {name: summaries[name] for name in SWEEPS if name in summaries}
    report = write_report(out, summaries)
    lines = [f"{name}: {out / name}" + (" (reused: finished earlier)" if name in reused else "")
             for name in summaries] + [f"report: {report}",
                                                               f"claims: {report.with_name('claims.json')}"]
    return {"sweeps": summaries, "report": str(report)}, "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class PlotOptions:
    out: str | None = option(None, "the PNG to write (default: curves.png in the first RUN_DIR)")
    metric: str | None = option(None, "the rounds.csv column to draw: a task metric (accuracy, entity_f1, bleu) or "
                                      "loss (default: the first task metric every run has, else loss)")


def run_plot_command(args):
    from collapipe_jax.run_plot import plot_runs

    opts = config_from_args(PlotOptions, args)
    result = plot_runs(args.runs, opts.out, opts.metric)
    rows = [[r["label"], r["rounds"], r["points"], r["simulated_latency_s"], r["run"]] for r in result["runs"]]
    table = format_table(["run", "rounds", "points", "sim_latency[s]", "directory"], rows)
    return result, "\n".join([f"{result['metric']} by round and by simulated latency: {result['out']}", table])


# --------------------------------------------------------------------------- tables and main


def format_table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v + 0.0:.4g}"  # + 0.0 prints -0.0 as 0
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in text]
    return "\n".join(lines)


COMMANDS = (
    # (name, help, handler, config dataclass, fields the shared options already cover)
    ("latency", "latency, energy and Γ of one decision (Eq. 10-28)", run_latency, DecisionOptions, ()),
    ("sensitivity", "∂τ/∂p_n by jax.grad, hard and smooth max", run_sensitivity, DecisionOptions, ()),
    ("schedule", "run DSSRA or a baseline policy for T rounds", run_schedule_command, ScheduleConfig, ()),
    ("train", "federated CollaPipe training on a real task", run_train_command, TrainConfig, ()),
    ("scenario", "a scenario's values, or (--fields) every field with unit, default and meaning",
     run_scenario_command, ScenarioOptions, ()),
    ("compare", "several policies on the same seeds, each paired seed by seed with the first", run_compare_command,
     CompareConfig, ()),
    ("sweep", "reproduce the paper's figures and tables", run_sweep_command, SweepOptions, ()),
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="collapipe", description="CollaPipe simulator, scheduler and trainer (JAX)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True
    shared = _Parser(add_help=False)
    shared.add_argument("--preset", help=f"scenario preset: {' | '.join(PRESETS)} (default: the command's)")
    shared.add_argument("--scenario", help="scenario JSON file (may name a base \"preset\" and override fields)")
    shared.add_argument("--seed", type=_seed, default=None, help=f"seed of the random draws, 0..{SEED_MAX} (default 0)")
    shared.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    shared.add_argument("--host-devices", dest="host_devices", help="number of XLA host (CPU) devices, set before "
                                                                    "JAX starts")
    for name, help_text, handler, cls, skip in COMMANDS:
        epilog = (f"without --config, a run takes the learning settings of its task's CPU recipe (<task>-cpu: "
                  f"each option's [default without --config]); recipes for --config (sweeps/recipes/): "
                  f"{', '.join(recipe_names())}") if name == "train" else None
        p = sub.add_parser(name, parents=[shared], help=help_text, epilog=epilog)
        add_config_arguments(p, cls, skip)
        if name == "sensitivity":
            p.add_argument("--temperature", type=_typed(float, "temperature"),
                           help="log-sum-exp temperature in s (default 1%% of τ)")
        if name == "sweep":
            p.add_argument("--extra-policy", action="append", metavar="FILE.py:FUNCTION",
                           help="a scheduling rule of your own (docs/extending.md) that the policies sweep runs "
                                "beside the built-in ones, paired with DSSRA on the same seeds (repeatable)")
        p.set_defaults(handler=handler)
    p = sub.add_parser("plot", help="draw the learning curves of train runs (their rounds.csv) to a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run's directory (the --log-dir of collapipe train)")
    add_config_arguments(p, PlotOptions)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(handler=run_plot_command, seed=None)
    return parser


# Host devices (docs/design.md §8 size guard). Each XLA host device holds about 1.2 MB in a sharded
# computation (measured: one sharded sum at 1024 devices peaks 1.38 GB, at 2048 2.60 GB), and
# start-up and compile times grow about quadratically with the count (the same sum took 43 s at
# 1024 devices and 149 s at 2048 on 2 CPU cores), so the count is capped at 1024 as well.
HOST_DEVICE_BYTES = 1_200_000
MAX_HOST_DEVICES = 1024


def max_host_devices() -> int:
    return max(1, min(MAX_HOST_DEVICES, memory_budget() // HOST_DEVICE_BYTES))


def jax_started() -> bool:
    """Whether JAX's backends have started in this process (its XLA flags are then fixed)."""
    from jax._src import xla_bridge  # backends_are_initialized: no public equivalent

    return xla_bridge.backends_are_initialized()


def check_jax_platforms() -> None:
    """JAX_PLATFORMS (JAX's own variable) names platforms that start here: a bad name fails when
    the first computation starts JAX's backends, as a traceback deep in the command; started here,
    before the command, it is one line naming the variable."""
    value = os.environ.get("JAX_PLATFORMS", "").strip()
    if not value:
        return
    import jax

    try:
        jax.devices()
    except RuntimeError as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValidationError("JAX_PLATFORMS", f"JAX cannot start the platform(s) it names: {reason}", value) from None


def set_host_devices(argv: list[str]) -> None:
    """XLA reads its flags once, when JAX's backends start: set the host device count before."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--host-devices" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--host-devices="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        limit = max_host_devices()
        count = ascii_int(value)  # "²" and "３" pass str.isdigit; 5,000 digits pass it and int() refuses them
        if count is None or not 1 <= count <= limit:
            raise ValidationError("host-devices", f"must be an integer in [1, {limit}] in ASCII digits (at most "
                                                  f"{MAX_HOST_DEVICES}, and {HOST_DEVICE_BYTES / 1e6:.2g} MB per device "
                                                  f"within 1/{MEMORY_SHARE} of this machine's memory)", value)
        if "jax" in sys.modules and jax_started():
            import jax

            if jax.device_count() != count and jax.default_backend() == "cpu":
                raise ValidationError("host-devices", "JAX was already started in this process", value)
            return
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])


CACHED_COMMANDS = ("schedule", "compare", "train")  # `sweep` keeps its programs in OUT/.jax-cache by default


def main(argv: list[str] | None = None) -> int:
    """Run one command; stdout carries only its table or its one JSON object.

    While the command runs, anything else written to stdout (by Python code or, below it, by C
    libraries such as HiGHS) goes to stderr; every number of the result is checked finite
    before anything is printed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _stderr_to_devnull_if_closed()
    if sys.stdout is None or not _is_open(sys.stdout):  # `>&-`: the result could go nowhere
        print("collapipe: error: stdout is closed: the result would be lost (redirect it to a file or /dev/null)",
              file=sys.stderr)
        return 2
    try:
        if argv and argv[0] == "sweep":  # compile-bound: hundreds of CPU programs (programs.py)
            prefer_fast_cpu_compiles()
        set_host_devices(argv)
        initialize_from_env(argv[0] if argv and not argv[0].startswith("-") else None)  # multi-host
        args = parse_args(argv)  # --help prints on stdout and exits here
        if args.command != "plot":  # the one command that draws without JAX
            check_jax_platforms()
        if args.command in CACHED_COMMANDS:  # later processes load the programs compiled here (programs.py)
            use_compilation_cache()
        args.seed_given = args.seed is not None  # a recipe's seed stands unless --seed is given
        args.seed = 0 if args.seed is None else args.seed
        with redirect_fd(1, 2), contextlib.redirect_stdout(sys.stderr):
            result, text = args.handler(args)
            check_finite(result)
            out = to_json(result, indent=None) if args.json else text
    except (ValidationError, InfeasibleError) as err:
        print(f"collapipe: error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    except OSError as err:  # the environment (disk full, permissions) after the checks at the start
        where = f": {err.filename}" if err.filename else ""
        print(f"collapipe: error: {err.strerror or err}{where}".replace("\n", " "), file=sys.stderr)
        return 2
    except Exception as err:  # an XLA compilation out of memory maps or memory: say what to do, in one line
        if (why := compile_failure(err)) is None:
            raise
        print(f"collapipe: error: {why}".replace("\n", " "), file=sys.stderr)
        return 2
    try:
        print(out, flush=True)
    except OSError as err:  # the reader left (`| head`), or the disk is full (`> /dev/full`)
        with contextlib.suppress(OSError, ValueError):  # keep Python's own flush at exit quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        why = ("stdout was closed before the whole result was written" if isinstance(err, BrokenPipeError)
               else f"the result could not be written to stdout ({err.strerror or err})")
        print(f"collapipe: error: {why}", file=sys.stderr)
        return 2
    for note in getattr(args, "notes", ()):  # after the result: where a run's records are, ...
        print(note, file=sys.stderr)
    return 0


def _stderr_to_devnull_if_closed() -> None:
    """With stderr closed (`2>&-`) Python sets `sys.stderr` to None, and `print(file=None)` writes
    the error line to stdout, which must carry only results; and the next file opened would take
    descriptor 2 and receive what C libraries write there. Descriptor 2 becomes /dev/null: the
    error lines go nowhere, the exit code still says what happened."""
    if sys.stderr is not None and _is_open(sys.stderr):
        return
    try:
        os.fstat(2)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 2:
            os.dup2(fd, 2)
            os.close(fd)
    sys.stderr = open(2, "w", closefd=False)


def _is_open(stream) -> bool:
    """Whether `stream` can be written: its descriptor, where it has one, is open."""
    try:
        os.fstat(stream.fileno())
    except io.UnsupportedOperation:  # an in-memory stream (tests, notebooks); before OSError, its base
        return True
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
