"""The `collapipe` command (DESIGN.md §6).

Subcommands print a readable table by default and one JSON object with `--json`. Bad input
is one line on stderr and exit code 2, never a traceback. JAX is imported only after the
arguments are parsed, so `--host-devices` can set XLA's host device count first.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys

from collapipe_jax.distributed import initialize_from_env
from collapipe_jax.errors import InfeasibleError, ValidationError

# Subcommands whose modules live elsewhere in the package: (name, module, help).
EXTERNAL_COMMANDS = (
    ("schedule", "collapipe_jax.scheduling.cli_schedule", "run DSSRA or a baseline policy for T rounds"),
    ("train", "collapipe_jax.train", "federated CollaPipe training on a real task"),
    ("sweep", "collapipe_jax.sweep", "reproduce the paper's figures and tables"),
)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit code 2."""

    def error(self, message):
        raise ValidationError("arguments", message)


# --------------------------------------------------------------------------- parsing helpers


def parse_int_list(field: str, text: str) -> list[int]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValidationError(field, "must be comma-separated integers", text)
    if any(not math.isfinite(v) or v != int(v) for v in values):
        raise ValidationError(field, "must be comma-separated integers", text)
    return [int(v) for v in values]


def parse_float_list(field: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValidationError(field, "must be comma-separated numbers", text)
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
    rows = [parse(field, row) for row in text.split(";")]
    return per_cluster(field, rows, n)


def decision_from_args(scenario, args):
    """The decision given on the command line, defaults from `default_decision`."""
    import numpy as np

    from collapipe_jax.scenario import default_decision, make_decision, orders_of

    base = default_decision(scenario)
    s = scenario
    delta = np.asarray(base.delta)
    if args.delta is not None:
        rows = parse_rows("delta", args.delta, s.N, parse_int_list)
        if any(len(r) != s.K for r in rows):
            raise ValidationError("delta", f"each row must have K={s.K} values", args.delta)
        delta = np.asarray(rows)
    orders = None
    if args.order is not None:
        orders = parse_rows("order", args.order, s.N, parse_int_list)
    elif args.delta is None:
        orders = orders_of(base)
    m = np.asarray(base.m) if args.m is None else per_cluster("m", parse_int_list("m", args.m), s.N)
    channel = (np.asarray(base.channel) if args.channel is None
               else per_cluster("channel", parse_int_list("channel", args.channel), s.N))
    p_n = (np.asarray(base.p_n_w) if args.p_n is None
           else per_cluster("p_n", parse_float_list("p_n", args.p_n), s.N))
    return make_decision(s, delta, m, channel, p_n, orders)


def add_decision_arguments(parser):
    parser.add_argument("--delta", help='TEBs per device, "d11,d12,...;d21,..." (one row = all clusters)')
    parser.add_argument("--order", help='pipeline order of the scheduled devices, "k,k,..;.." (default: index order)')
    parser.add_argument("--m", help="micro-batches, 1 or N values")
    parser.add_argument("--channel", help="uplink channel per cluster (-1 = none), N values")
    parser.add_argument("--p-n", dest="p_n", help="CU transmit power in W, 1 or N values")
    parser.add_argument("--variant", default="paper", choices=["paper", "consistent"],
                        help="Eq. 15 literally (paper) or with b̂-scaled backward and D2D (consistent)")
    parser.add_argument("--mean-state", action="store_true",
                        help="use the middle of every range instead of a seeded random draw")


def resolve_state(scenario, args):
    import jax

    from collapipe_jax.scenario import draw_state, mean_state

    if args.mean_state:
        return mean_state(scenario)
    return draw_state(scenario, jax.random.PRNGKey(args.seed))


def load_scenario_from_args(args):
    from collapipe_jax.scenario import load_scenario

    return load_scenario(args.preset, args.scenario)


# --------------------------------------------------------------------------- latency / sensitivity


def run_latency(args):
    from collapipe_jax.system import evaluate
    from collapipe_jax.system.report import constraint_violations, format_table, inputs_dict, metrics_dict

    scenario = load_scenario_from_args(args)
    state = resolve_state(scenario, args)
    decision = decision_from_args(scenario, args)
    metrics = evaluate(state, decision, args.variant)
    violations = constraint_violations(state, decision, metrics)
    result = {"variant": args.variant, "seed": args.seed, "inputs": inputs_dict(scenario, state, decision),
              **metrics_dict(metrics), "violations": violations}
    rows = []
    for n in range(scenario.N):
        rows.append([n, int(metrics.n_stages[n]), int(decision.m[n]), result["inputs"]["channel"][n],
                     float(decision.p_n_w[n]), float(metrics.tau_pipe_s[n]), float(metrics.tau_up_s[n]),
                     float(metrics.E_com_j[n]), float(metrics.E_pipe_j[n]), float(metrics.Gamma[n])])
    table = format_table(["cluster", "S", "m", "channel", "p_n[W]", "tau_pipe[s]", "tau_up[s]",
                          "E_com[J]", "E_pipe[J]", "Gamma"], rows)
    lines = [f"scenario {scenario.name}, variant {args.variant}, seed {args.seed}", table,
             f"round latency tau(t) = {result['tau_round_s']:.6g} s"]
    lines += [f"violates {v['constraint']} (cluster {v['cluster']}): {v['message']}" for v in violations]
    return result, "\n".join(lines)


def run_sensitivity(args):
    import jax

    from collapipe_jax.system import evaluate, round_latency_of_power
    from collapipe_jax.system.report import format_table, inputs_dict

    scenario = load_scenario_from_args(args)
    state = resolve_state(scenario, args)
    decision = decision_from_args(scenario, args)
    metrics = evaluate(state, decision, args.variant)
    tau = float(metrics.tau_round_s)
    if args.temperature is not None and not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ValidationError("temperature", "must be a finite number > 0 (seconds)", args.temperature)
    temperature = args.temperature if args.temperature is not None else max(0.01 * tau, 1e-9)
    hard = jax.grad(round_latency_of_power)(decision.p_n_w, state, decision, args.variant)
    smooth_fn = lambda p: round_latency_of_power(p, state, decision, args.variant, temperature)  # noqa: E731
    smooth_value, smooth = jax.value_and_grad(smooth_fn)(decision.p_n_w)
    result = {
        "variant": args.variant, "seed": args.seed,
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
        f"scenario {scenario.name}, variant {args.variant}, seed {args.seed}", table,
        f"tau(t) = {tau:.6g} s (max); log-sum-exp max at T = {temperature:.4g} s: {float(smooth_value):.6g} s",
    ])
    return result, text


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="collapipe", description="CollaPipe simulator, scheduler and trainer (JAX)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True
    shared = _Parser(add_help=False)
    shared.add_argument("--preset", help="scenario preset: paper-bert (default) or paper-transformer")
    shared.add_argument("--scenario", help="scenario JSON file (may name a base \"preset\" and override fields)")
    shared.add_argument("--seed", type=int, default=0, help="seed of the random draws (default 0)")
    shared.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    shared.add_argument("--host-devices", dest="host_devices", type=int,
                        help="number of XLA host (CPU) devices, set before JAX starts")

    p = sub.add_parser("latency", parents=[shared], help="latency, energy and Γ of one decision (Eq. 10-28)")
    add_decision_arguments(p)
    p.set_defaults(handler=run_latency)

    p = sub.add_parser("sensitivity", parents=[shared], help="∂τ/∂p_n by jax.grad, hard and smooth max")
    add_decision_arguments(p)
    p.add_argument("--temperature", type=float, help="log-sum-exp temperature in s (default 1%% of τ)")
    p.set_defaults(handler=run_sensitivity)

    for name, module_name, help_text in EXTERNAL_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # that part of the package is not built yet: no command, no stub
            raise
        p = sub.add_parser(name, parents=[shared], help=help_text)
        module.add_arguments(p)
        p.set_defaults(handler=module.run)
    return parser


def _set_host_devices(argv: list[str]) -> None:
    """XLA reads its flags once, at JAX start-up: set the host device count before that."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--host-devices" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--host-devices="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ValidationError("host-devices", "must be an integer >= 1", value)
        if "jax" in sys.modules:
            import jax

            if jax.device_count() != int(value) and jax.default_backend() == "cpu":
                raise ValidationError("host-devices", "JAX was already started in this process", value)
            return
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={value}"])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _set_host_devices(argv)
        initialize_from_env(argv[0] if argv and not argv[0].startswith("-") else None)  # multi-host
        args = build_parser().parse_args(argv)
        result, text = args.handler(args)
    except (ValidationError, InfeasibleError) as err:
        print(f"collapipe: error: {err}".replace("\n", " "), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, allow_nan=False))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
