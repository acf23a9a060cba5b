"""The `collapipe` command: contract keys, one-line errors with exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

from collapipe_jax.cli import main

LATENCY_INPUT_KEYS = [
    "N", "K", "J", "L", "b", "f_hz", "phi_flops_per_cycle", "p_k_w", "h_dd", "I_dd_w", "B_dd_hz", "N0_w_per_hz",
    "B_U_hz", "h_n", "I_i_w", "p_n_w", "o_fwd_flops", "o_bwd_flops", "z_bits", "g_bits", "z_enc_bits",
    "theta_enc_bits", "kappa", "gamma0_bytes", "gamma_max_k_bytes", "E_max_k_j", "E_max_n_j", "P_max_n_w",
    "delta", "order", "m", "assignment",
]
LATENCY_KEYS = ["tau_dd_s", "tau_pipe_s", "tau_up_s", "tau_round_s", "E_com_j", "E_sch_j", "E_pipe_j", "Gamma"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_latency_json_has_every_contract_key(capsys):
    code, out, _ = run_cli(capsys, "latency", "--json", "--delta", "1,2,3,2,2,2;2,2,2,2,2,2;12,0,0,0,0,0",
                           "--m", "2,4,8", "--p-n", "0.2,0.3,0.4", "--order", "5,4,3,2,1,0;0,1,2,3,4,5;0")
    assert code == 0
    result = json.loads(out)
    for key in LATENCY_KEYS + ["inputs"]:
        assert key in result, key
    for key in LATENCY_INPUT_KEYS:
        assert key in result["inputs"], key
    inputs = result["inputs"]
    assert inputs["delta"][2] == [12, 0, 0, 0, 0, 0] and inputs["order"] == [[5, 4, 3, 2, 1, 0], list(range(6)), [0]]
    assert inputs["m"] == [2, 4, 8] and inputs["p_n_w"] == pytest.approx([0.2, 0.3, 0.4])
    assert inputs["assignment"] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert len(result["E_sch_j"]) == 3 and len(result["E_sch_j"][0]) == 6
    assert result["tau_round_s"] == pytest.approx(max(a + b for a, b in zip(result["tau_pipe_s"], result["tau_up_s"])))


def test_sensitivity_json_and_gradient_sign(capsys):
    code, out, _ = run_cli(capsys, "sensitivity", "--json", "--preset", "paper-transformer", "--seed", "3")
    assert code == 0
    result = json.loads(out)
    for key in ("inputs", "tau_round_s", "dtau_dp_n", "smooth_temperature_s", "tau_round_smooth_s",
                "dtau_smooth_dp_n"):
        assert key in result
    # more power, faster upload: only the slowest cluster moves the hard max, and downwards
    hard = result["dtau_dp_n"]
    assert sum(1 for g in hard if g != 0) == 1 and min(hard) < 0
    assert all(g <= 0 for g in result["dtau_smooth_dp_n"])
    assert result["tau_round_smooth_s"] >= result["tau_round_s"]


def test_table_output_is_readable(capsys):
    code, out, _ = run_cli(capsys, "latency", "--preset", "paper-transformer")
    assert code == 0 and "round latency" in out and "tau_pipe[s]" in out


@pytest.mark.parametrize("argv, field", [
    (["latency", "--delta", "1,1,1,1,1,1"], "delta"),  # sums to 6, not L = 12
    (["latency", "--delta", "2,2,2"], "delta"),
    (["latency", "--p-n", "-0.1"], "p_n"),
    (["latency", "--p-n", "0.1,0.2"], "p_n"),
    (["latency", "--p-n", "nan"], "p_n"),
    (["latency", "--m", "x"], "m"),
    (["latency", "--channel", "0,0,1"], "channel"),
    (["latency", "--preset", "nope"], "preset"),
    (["latency", "--variant", "other"], "variant"),
    (["latency", "--bogus"], "arguments"),
    (["sensitivity", "--temperature", "-1"], "temperature"),
    (["latency", "--host-devices", "0"], "host-devices"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, argv, field):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"invalid {field}" in lines[0] and "Traceback" not in err


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "collapipe_jax.cli", "latency", "--delta", "1;2"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_latency_paper_variant_is_eq15_as_printed_on_a_hand_example(capsys):
    """A worked example: cluster 1 (δ = 2 on each of the 6 devices, m = 3) gives 2.833 s under
    Eq. 15 as printed (the GPipe makespan gave 2.735 s); every cluster equals the hand reading."""
    from system_by_hand import pipeline_by_hand

    delta = "0,3,0,4,5,0;2,2,2,2,2,2;12,0,0,0,0,0"
    code, out, _ = run_cli(capsys, "latency", "--json", "--preset", "paper-bert", "--seed", "0", "--delta", delta,
                           "--m", "4,3,1", "--variant", "paper")
    assert code == 0
    result = json.loads(out)
    inputs = result["inputs"]
    orders = [[k for k, d in enumerate(row) if d > 0] for row in inputs["delta"]]  # default: index order
    want = pipeline_by_hand(inputs, orders, [4, 3, 1], "paper")
    assert result["tau_pipe_s"] == pytest.approx([tau for tau, _ in want], rel=1e-5)
    assert round(result["tau_pipe_s"][1], 3) == 2.833
    code, out, _ = run_cli(capsys, "latency", "--json", "--preset", "paper-bert", "--seed", "0", "--delta", delta,
                           "--m", "4,3,1", "--variant", "consistent")
    want = pipeline_by_hand(json.loads(out)["inputs"], orders, [4, 3, 1], "consistent")
    assert json.loads(out)["tau_pipe_s"] == pytest.approx([tau for tau, _ in want], rel=1e-5)


# ---------------------------------------------------------------- help, without JAX


def test_parser_and_every_help_are_built_without_importing_jax():
    """`collapipe --help` and `collapipe SUB --help` print from the config dataclasses alone:
    JAX (seconds to import) stays out of the process."""
    code = ("import sys\n"
            "from collapipe_jax import cli\n"
            "for argv in ([], ['latency'], ['sensitivity'], ['schedule'], ['train'], ['sweep'], ['plot']):\n"
            "    try:\n"
            "        cli.main(argv + ['--help'])\n"
            "    except SystemExit as stop:\n"
            "        assert stop.code == 0, (argv, stop.code)\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax'))\n"
            "print('HEAVY', heavy)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "usage: collapipe train" in proc.stdout and "usage: collapipe plot" in proc.stdout


def test_choices_name_the_tables_they_stand_for():
    from collapipe_jax import choices
    from collapipe_jax.models.config import COMPUTE_DTYPES
    from collapipe_jax.scheduling.frameworks import FRAMEWORKS
    from collapipe_jax.sweep import SWEEPS

    assert choices.FRAMEWORK_NAMES == tuple(FRAMEWORKS)
    assert choices.COMPUTE_DTYPE_NAMES == tuple(COMPUTE_DTYPES)
    assert choices.SWEEP_NAMES == tuple(SWEEPS)


def subcommand_help(name: str) -> str:
    from collapipe_jax.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    return sub.choices[name].format_help()


@pytest.mark.parametrize("name, cls", [
    ("latency", "DecisionOptions"), ("schedule", "ScheduleConfig"), ("train", "TrainConfig"),
    ("sweep", "SweepOptions"), ("plot", "PlotOptions"),
])
def test_help_states_each_default_once_and_never_none(name, cls):
    import dataclasses

    from collapipe_jax import cli

    config = getattr(cli, cls)
    text = " ".join(subcommand_help(name).split())  # argparse wraps lines
    assert "[default: None]" not in text
    for field in dataclasses.fields(config):
        meta = field.metadata
        if not meta.get("cli") or isinstance(field.default, bool):
            continue
        helped = cli.option_help(field)
        stated = helped.count("[default") + helped.count("(default")
        assert stated <= 1, helped
        if field.default is not None and stated == 0:
            raise AssertionError(f"{field.name}: its default {field.default} is not stated")
        assert "".join(helped.split()) in "".join(text.split()), field.name


def test_no_progress_says_it_hides_the_bar():
    for name in ("train", "schedule"):
        text = " ".join(subcommand_help(name).split())
        assert "--no-progress hide the progress bar" in text


def test_sweep_without_a_name_is_all(tmp_path):
    from collapipe_jax.cli import SweepOptions, config_from_args, parse_args

    args = parse_args(["sweep", "--out", str(tmp_path)])
    assert config_from_args(SweepOptions, args).name == "all"
    assert "[default: all]" in " ".join(subcommand_help("sweep").split())


def test_recipes_are_listed_in_train_help_and_in_the_config_error(capsys):
    from collapipe_jax.train_config import RECIPE_DIR

    recipes = sorted(p.stem for p in RECIPE_DIR.glob("*.json"))
    assert len(recipes) >= 2
    text = " ".join(subcommand_help("train").split())
    assert all(r in text for r in recipes)
    code, out, err = run_cli(capsys, "train", "--config", "nosuch", "--no-progress")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "invalid config" in lines[0]
    assert all(r in lines[0] for r in recipes)


# ---------------------------------------------------------------- collapipe plot


def write_run(directory, rows, result=None):
    """A run directory as `collapipe train` leaves it: rounds.csv (and result.json when finished)."""
    from collapipe_jax.io import atomic_write_json, write_csv

    names = sorted({k for r in rows for k in r} - {"round", "loss", "tau_round_s", "energy_j"})
    write_csv(directory / "rounds.csv", rows, ["round", "loss", "tau_round_s", "energy_j", *names])
    if result is not None:
        atomic_write_json(directory / "result.json", result)
    return str(directory)


def test_plot_draws_the_metric_by_round_and_by_simulated_latency(tmp_path, capsys):
    from collapipe_jax.run_plot import curve, read_run

    a = write_run(tmp_path / "a", [
        {"round": 0, "loss": 2.0, "tau_round_s": 1.0, "energy_j": 1.0},  # not evaluated
        {"round": 1, "loss": 1.5, "tau_round_s": 2.0, "energy_j": 1.0, "accuracy": 0.3},
        {"round": 2, "loss": 1.0, "tau_round_s": 0.5, "energy_j": 1.0, "accuracy": 0.4},
    ], {"task": "toutiao", "framework": "collapipe", "seed": 3})
    b = write_run(tmp_path / "b", [
        {"round": 0, "loss": 2.5, "tau_round_s": 4.0, "energy_j": 1.0, "accuracy": 0.1},
    ])  # still running: no result.json
    # by hand: the latency of an evaluated round is every round's τ up to and including it
    assert curve(read_run(a), "accuracy") == ([1.0, 2.0], [3.0, 3.5], [0.3, 0.4])
    assert curve(read_run(a), "loss") == ([0.0, 1.0, 2.0], [1.0, 3.0, 3.5], [2.0, 1.5, 1.0])
    png = tmp_path / "out" / "both.png"
    code, out, err = run_cli(capsys, "plot", a, b, "--out", str(png), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["metric"] == "accuracy" and result["out"] == str(png)
    assert [r["label"] for r in result["runs"]] == ["toutiao/collapipe, seed 3", "b (unfinished)"]
    assert [r["points"] for r in result["runs"]] == [2, 1]
    assert [r["simulated_latency_s"] for r in result["runs"]] == [3.5, 4.0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run_cli(capsys, "plot", a, "--metric", "loss")
    assert code == 0 and (tmp_path / "a" / "curves.png").is_file() and "loss by round" in out


@pytest.mark.parametrize("case, field", [
    ("missing", "run"), ("empty dir", "run"), ("not a number", "run"), ("no round column", "run"),
    ("unknown metric", "metric"), ("not png", "out"),
])
def test_plot_bad_input_is_one_line(tmp_path, capsys, case, field):
    good = write_run(tmp_path / "good", [{"round": 0, "loss": 2.0, "tau_round_s": 1.0, "energy_j": 1.0}])
    bad = tmp_path / "bad"
    bad.mkdir()
    argv = {"missing": [str(tmp_path / "nope")], "empty dir": [str(bad)], "unknown metric": [good, "--metric", "bleu"],
            "not png": [good, "--out", str(tmp_path / "x.pdf")]}.get(case)
    if case == "not a number":
        (bad / "rounds.csv").write_text("round,loss,tau_round_s,energy_j\n0,abc,1,1\n")
        argv = [str(bad)]
    if case == "no round column":
        (bad / "rounds.csv").write_text("a,b\n1,2\n")
        argv = [str(bad)]
    code, out, err = run_cli(capsys, "plot", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and f"invalid {field}" in lines[0]


def test_new_run_dirs_are_distinct(tmp_path):
    import re

    from collapipe_jax.cli import new_run_dir

    first, second = new_run_dir("ner", "titanic", tmp_path), new_run_dir("ner", "titanic", tmp_path)
    assert first != second and first.is_dir() and second.is_dir()
    assert all(re.fullmatch(r"ner-titanic-\d{8}T\d{6}Z(-\d+)?", p.name) for p in (first, second))
