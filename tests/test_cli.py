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
