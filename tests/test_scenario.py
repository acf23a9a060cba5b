"""Scenario presets, unit conversion, draws, JSON round trip, and one clear error per bad field."""

import json
import math

import jax
import numpy as np
import pytest

from collapipe_jax.errors import ValidationError
from collapipe_jax.models import cost
from collapipe_jax.models.config import model_preset
from collapipe_jax.scenario import (Scenario, default_decision, draw_state, load_scenario, make_decision,
                                    round_key, scenario_preset)


def test_table_ii_units_are_converted_once():
    s = scenario_preset("paper-bert")
    assert s.N0_w_per_hz == pytest.approx(10 ** (-174 / 10) / 1000)  # −174 dBm/Hz
    assert s.h_dd == pytest.approx(1e-3)  # −30 dB
    assert s.h_n == pytest.approx((10 ** -0.012, 10 ** -0.008))
    assert s.f_hz == (1e8, 8e8) and s.B_U_hz == (4e5, 6e5)
    assert (s.N, s.K, s.J, s.L, s.b) == (3, 6, 4, 12, 64)
    assert scenario_preset("paper-transformer").L == 6
    cfg = model_preset("paper-bert")
    assert s.theta_enc_bits == cost.encoder_param_bits(cfg)
    assert s.gamma0_bytes == cost.teb_training_memory_bytes(cfg, 64)


def test_draws_are_seeded_and_within_ranges():
    s = scenario_preset("paper-transformer")
    a, b = draw_state(s, round_key(3, 7)), draw_state(s, round_key(3, 7))
    c = draw_state(s, round_key(3, 8))
    np.testing.assert_array_equal(a.f_hz, b.f_hz)
    assert not np.allclose(a.f_hz, c.f_hz)
    for name, rng in (("f_hz", s.f_hz), ("phi_flops_per_cycle", s.phi_flops_per_cycle), ("p_k_w", s.p_k_w),
                      ("h_n", s.h_n), ("I_i_w", s.I_i_w), ("B_U_hz", s.B_U_hz)):
        x = np.asarray(getattr(a, name))
        assert np.all(x >= rng[0] * (1 - 1e-6)) and np.all(x <= rng[1] * (1 + 1e-6)), name
    assert a.f_hz.shape == (3, 6) and a.I_i_w.shape == (4,)


def test_json_round_trip_and_preset_override(tmp_path):
    s = scenario_preset("paper-bert").replace(E_max_n_j=1000.0)
    path = tmp_path / "s.json"
    s.to_json(path)
    assert Scenario.from_json(path) == s
    path.write_text(json.dumps({"preset": "paper-transformer", "N": 5, "J": 2}))
    t = load_scenario(path=path)
    assert (t.N, t.J, t.L) == (5, 2, 6) and t.theta_enc_bits == scenario_preset("paper-transformer").theta_enc_bits


@pytest.mark.parametrize("changes, field", [
    ({"N": 0}, "N"), ({"J": 0}, "J"), ({"K": 2.5}, "K"), ({"b": -1}, "b"),
    ({"f_hz": (8e8, 1e8)}, "f_hz"), ({"I_i_w": (-0.1, 0.1)}, "I_i_w"), ({"B_U_hz": (float("nan"), 1.0)}, "B_U_hz"),
    ({"P_max_n_w": -0.5}, "P_max_n_w"), ({"E_max_k_j": float("inf")}, "E_max_k_j"), ({"kappa": 0.0}, "kappa"),
    ({"theta_enc_bits": -1.0}, "theta_enc_bits"), ({"fading": "rician"}, "fading"),
    ({"p_k_w": (0.1, 0.3)}, "p_k_w"),
])
def test_every_invalid_scenario_field_names_itself(changes, field):
    with pytest.raises(ValidationError) as err:
        Scenario(**changes)
    assert err.value.field == field
    assert str(err.value).startswith(f"invalid {field}:")


def test_unknown_preset_and_bad_files(tmp_path):
    with pytest.raises(ValidationError, match="preset"):
        scenario_preset("paper-gpt")
    with pytest.raises(ValidationError, match="does not exist"):
        load_scenario(path=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        load_scenario(path=bad)
    bad.write_text(json.dumps({"preset": "paper-bert", "Nclusters": 3}))
    with pytest.raises(ValidationError, match="unknown field"):
        load_scenario(path=bad)


@pytest.mark.parametrize("kwargs, field", [
    ({"delta": [[2, 2, 2, 2, 2, 1]] * 3}, "delta"),  # sums to 11, not L = 12
    ({"delta": [[13, -1, 0, 0, 0, 0]] * 3}, "delta"),
    ({"delta": [[2] * 6] * 2}, "delta"),  # wrong number of rows
    ({"m": [0, 1, 1]}, "m"), ({"m": [65, 1, 1]}, "m"), ({"m": [1, 2]}, "m"),
    ({"channel": [0, 0, 1]}, "channel"), ({"channel": [0, 1, 4]}, "channel"),
    ({"p_n_w": [0.1, -0.1, 0.2]}, "p_n"), ({"p_n_w": [0.1, float("nan"), 0.2]}, "p_n"),
    ({"p_n_w": [0.1, 0.6, 0.2]}, "p_n"), ({"p_n_w": [0.0, 0.1, 0.2]}, "p_n"),
    ({"orders": [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5]]}, "order"),
])
def test_every_invalid_decision_field_names_itself(kwargs, field):
    s = scenario_preset("paper-bert")
    args = {"delta": [[2] * 6] * 3, "m": [4, 4, 4], "channel": [0, 1, 2], "p_n_w": [0.5] * 3, "orders": None}
    args.update(kwargs)
    with pytest.raises(ValidationError) as err:
        make_decision(s, args["delta"], args["m"], args["channel"], args["p_n_w"], args["orders"])
    assert err.value.field == field


def test_default_decision_is_uniform_and_valid():
    s = scenario_preset("paper-transformer").replace(N=5)
    d = default_decision(s)
    assert np.asarray(d.delta).sum(axis=1).tolist() == [6] * 5
    assert np.asarray(d.channel).tolist() == [0, 1, 2, 3, -1]
    assert math.isclose(float(d.p_n_w[0]), 0.5)
