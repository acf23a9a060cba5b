"""A user's own JAX rule (scheduling/user_policy.py, docs/extending.md) on both engines: the
shipped example's totals equal on the host and the device engine; the constraint flags against
the host solvers' own checks; every way a rule can be wrong is one `collapipe: error:` line
naming the policy.

The scenario is test_device_engine's seeded one (paper-bert lora:8, SEEDED_ROUNDS rounds, at
most 8 seeds), so the programs of the registry rules compiled there are reused.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapipe_jax.scenario import draw_state, round_key, scenario_preset
from collapipe_jax.scheduling import dssra as host
from collapipe_jax.scheduling.schedule import ScheduleConfig, run_schedule, run_schedule_seeds
from collapipe_jax.scheduling.user_policy import USER_VIOLATIONS, load_policy
from collapipe_jax.system.report import constraint_violations
from tests.test_device_engine import SEEDED_ROUNDS
from tests.test_reliability import assert_one_line_error, run

ROOT = pathlib.Path(__file__).resolve().parents[1]
BEST_CHANNEL = f"{ROOT}/examples/policies/best_channel.py:best_channel"


def scenario():
    return scenario_preset("paper-bert").replace(tunable="lora:8")


def both_engines(policy: str, seeds: str = "0:8", rounds: int = SEEDED_ROUNDS, s=None):
    cfg = ScheduleConfig(rounds=rounds, policy=policy, seeds=seeds, progress=False)
    s = scenario() if s is None else s
    return run_schedule_seeds(s, dataclasses.replace(cfg, engine="device")), run_schedule_seeds(s, cfg)


def test_best_channel_gives_equal_totals_on_both_engines():
    dev, ref = both_engines(BEST_CHANNEL)
    assert len(dev["runs"]) == 8 and dev["policy"] == BEST_CHANNEL
    for d, r in zip(dev["runs"], ref["runs"]):
        assert d["infeasible"] is None and r["infeasible"] is None
        np.testing.assert_allclose(d["total_latency_s"], r["total_latency_s"], rtol=1e-4)
        np.testing.assert_allclose(d["final_Y"], r["final_Y"], rtol=1e-4, atol=1e-9)
        assert d["violations"] == r["violations"] == []


def test_best_channel_decides_what_it_says():
    """Even split over all K devices, m = 4, and per cluster (in index order) the free channel
    of the shortest upload at the highest power meeting C8 and C11' (checked with the host's
    own float64 bisection, `resources.power_upper_bounds`)."""
    from collapipe_jax.scenario import even_split
    from collapipe_jax.scheduling import resources as rs

    s = scenario()
    result = run_schedule(s, ScheduleConfig(rounds=2, policy=BEST_CHANNEL, seed=3, progress=False))
    for record in result["rounds"]:
        state = draw_state(s, round_key(3, record["round"]))
        up = host.round_problem(s, state).uplink
        p_ub = rs.power_upper_bounds(up)
        assert record["delta"] == [even_split(s.L, s.K)] * s.N and record["m"] == [4] * s.N
        free = set(range(s.J))
        for n in range(s.N):
            delays = {j: float(rs.upload_delay(up, p_ub[n, j], n, j)) for j in free if np.isfinite(p_ub[n, j])}
            best = min(delays, key=delays.get)
            assert record["channel"][n] == best
            np.testing.assert_allclose(record["p_n_w"][n], p_ub[n, best], rtol=1e-5)
            free.discard(best)
        assert record["violations"] == []


BREAKER = '''
import jax.numpy as jnp
from collapipe_jax import Decision, index_order, even_delta

def all_on_channel_0(inputs):
    """Every cluster on channel 0 (C6) at twice P_max (C8), m = 4, the even split."""
    delta = even_delta(inputs.L, inputs.K, inputs.N)
    return Decision(delta=delta, rank=index_order(delta), m=jnp.full(inputs.N, 4, jnp.int32),
                    channel=jnp.zeros(inputs.N, jnp.int32), p_n_w=2.0 * inputs.state.P_max_n_w)
'''


def test_a_breaking_rule_is_flagged_as_the_host_checks_it(tmp_path):
    """The flags of one function (both engines) against the host solvers' own checks of the
    same decisions (`dssra.check_decision`: C1, C2, C6, C8, C11'; `constraint_violations`: C7,
    C9', C11' on the charge), round by round; both engines count the same rounds."""
    path = tmp_path / "breaker.py"
    path.write_text(BREAKER)
    spec = f"{path}:all_on_channel_0"
    s = scenario()
    result = run_schedule(s, ScheduleConfig(rounds=2, policy=spec, progress=False))
    for record in result["rounds"]:
        state = draw_state(s, round_key(0, record["round"]))
        problem = host.round_problem(s, state)
        plans = [host.sg.SegmentPlan(tuple(d), tuple(o), m, 0.0)
                 for d, o, m in zip(record["delta"], record["order"], record["m"])]
        channel = np.array([-1 if c is None else c for c in record["channel"]])
        expected = {v["constraint"] for v in host.check_decision(problem, plans, channel, record["p_n_w"])}
        from collapipe_jax.scenario import Decision

        decision = Decision(delta=jnp.asarray(record["delta"]), rank=jnp.asarray(
            [[row.index(k) if k in row else -1 for k in range(s.K)] for row in record["order"]]),
            m=jnp.asarray(record["m"]), channel=jnp.asarray(channel), p_n_w=jnp.asarray(record["p_n_w"], jnp.float32))
        from collapipe_jax.system import evaluate

        expected |= {v["constraint"] for v in constraint_violations(state, decision, evaluate(state, decision))}
        assert {v["constraint"] for v in record["violations"]} == expected
        assert {"C6", "C8"} <= expected
    dev, ref = both_engines(spec, seeds="0:2", rounds=2)
    for d, r in zip(dev["runs"], ref["runs"]):
        assert sorted(d["violations"], key=str) == sorted(r["violations"], key=str)
        assert {v["constraint"] for v in d["violations"]} >= {"C6", "C8"}
        np.testing.assert_allclose(d["total_latency_s"], r["total_latency_s"], rtol=1e-4)


def test_user_violation_names_are_the_constraints_of_the_design():
    assert USER_VIOLATIONS == ("C1", "C2", "m", "C6", "C7", "C8", "C9'", "C11'")


BAD = '''
import jax.numpy as jnp
from collapipe_jax import Decision, index_order, even_delta

def two_args(a, b):
    pass

def _good(inputs, **changes):
    delta = even_delta(inputs.L, inputs.K, inputs.N)
    fields = dict(delta=delta, rank=index_order(delta), m=jnp.full(inputs.N, 4, jnp.int32),
                  channel=jnp.full(inputs.N, -1, jnp.int32), p_n_w=jnp.zeros(inputs.N))
    fields.update(changes)
    return Decision(**fields)

def wrong_shape(inputs):
    return _good(inputs, m=jnp.full(inputs.N + 1, 4, jnp.int32))

def wrong_dtype(inputs):
    return _good(inputs, channel=jnp.full(inputs.N, -1.0))

def not_a_decision(inputs):
    return {"delta": 0}

def raises(inputs):
    raise RuntimeError("my bug")

def nan_late(inputs):
    channel = jnp.arange(inputs.N, dtype=jnp.int32)
    p = jnp.where(inputs.t >= 1, jnp.nan, 0.1) * jnp.ones(inputs.N)
    return _good(inputs, channel=jnp.where(channel < inputs.J, channel, -1), p_n_w=p)
'''


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("policies") / "bad.py"
    path.write_text(BAD)
    (path.parent / "syntax.py").write_text("def rule(:\n")
    return path


@pytest.mark.parametrize("function, fragments", [
    ("two_args", ["must take one argument"]),
    ("wrong_shape", ["returned m of shape (4,), expected (3,)"]),
    ("wrong_dtype", ["returned channel of dtype float32", "integer"]),
    ("not_a_decision", ["must return a collapipe_jax.Decision", "not dict"]),
    ("raises", ["raised RuntimeError: my bug"]),
    ("missing", ["has no function 'missing'", "functions there, the closest first: raises"]),
])
def test_a_wrong_rule_is_one_error_line_naming_the_policy(bad_file, function, fragments):
    spec = f"{bad_file}:{function}"
    for engine in ("host", "device"):
        out = run("schedule", "--preset", "paper-bert", "--tunable", "lora:8", "--rounds", 2, "--seeds", "0:2",
                  "--engine", engine, "--policy", spec)
        assert_one_line_error(*out, "invalid policy", spec, *fragments)


@pytest.mark.parametrize("engine", ["host", "device"])
def test_a_non_finite_power_is_one_error_line_naming_seed_and_round(bad_file, engine):
    spec = f"{bad_file}:nan_late"
    out = run("schedule", "--preset", "paper-bert", "--tunable", "lora:8", "--rounds", 2, "--seeds", "1:3",
              "--engine", engine, "--policy", spec)
    assert_one_line_error(*out, spec, "non-finite p_n_w", "seed 1, round 1")


@pytest.mark.parametrize("spec, fragment", [
    ("syntax.py:rule", "SyntaxError at line 1"),
    ("nowhere.py:rule", "no such file"),
    ("no_such_package.module:rule", "no module named 'no_such_package'"),
    ("bad.py:", "must be FILE.py:FUNCTION or package.module:function"),
    ("dssr", "must be one of"),
])
def test_a_policy_that_cannot_be_loaded_is_one_error_line(bad_file, spec, fragment):
    if spec.endswith(".py:rule") or spec.startswith("bad.py"):
        spec = f"{bad_file.parent}/{spec}"
    out = run("schedule", "--preset", "paper-bert", "--tunable", "lora:8", "--rounds", 2, "--policy", spec)
    assert_one_line_error(*out, "invalid policy", fragment)


def test_a_module_path_loads_the_same_rule_once():
    import sys

    sys.path.insert(0, str(ROOT / "examples" / "policies"))
    try:
        rule = load_policy("best_channel:best_channel")
    finally:
        sys.path.remove(str(ROOT / "examples" / "policies"))
    assert rule.fn.__name__ == "best_channel" and load_policy(BEST_CHANNEL) is load_policy(BEST_CHANNEL)
    with jax.enable_x64(False):  # the rule traces in float32 too
        from collapipe_jax.scheduling.device.problem import EngineConfig
        from collapipe_jax.scheduling.user_policy import check_policy_shapes

        check_policy_shapes(rule, scenario(), EngineConfig.of(scenario()))


def test_train_takes_a_user_rule(tmp_path):
    """`train --policy FILE.py:FUNCTION` (the settings of test_train's CLI run, so its compiled
    training step is reused): the rule decides every round, and its decision is the one charged."""
    import json

    from tests.test_train import DATA

    argv = ["train", "--task", "ner", "--no-pipeline", "--policy", BEST_CHANNEL, "--rounds", "1", "--batch", "4",
            "--clusters", "2", "--micro-batches", "2", "--max-examples", "24", "--max-eval-examples", "8",
            "--seq-len", "16", "--data-dir", str(DATA), "--no-progress", "--log-dir", str(tmp_path / "run"), "--json"]
    code, out, err = run(*argv)
    assert code == 0, err[-800:]
    result = json.loads(out)
    assert result["policy"] == BEST_CHANNEL and result["rounds"][0]["tau_round_s"] > 0
    missing = f"{ROOT}/examples/policies/best_channel.py:nope"
    bad = run(*[missing if a == BEST_CHANNEL else a for a in argv[:-3]])
    assert_one_line_error(*bad, "invalid policy", "has no function 'nope'")


# --------------------------------------------------------------------------- the policies sweep with a user's rule


def fake_run_policy(scenario, policy, variant, seeds, rounds, Vs, scale):
    """`policies.run_policy` without the engine: seed s of rule p at V has total (1 + s/100)·c_p,
    c_p from the rule's name, the same per-round arrays for every rule."""
    count = len(seeds) * len(Vs)
    c = 10.0 + sum(map(ord, policy)) % 7
    total = np.tile(c * (1 + np.asarray(seeds) / 100), len(Vs))
    return {"totals": {"total_latency_s": total, "total_cmp_s": total / 2, "total_up_s": total / 2,
                       "max_Y": np.zeros(count), "mean_Gamma": np.full(count, 0.01), "code": np.zeros(count, int),
                       "violation_rounds": np.zeros((count, 3), int)},
            "rounds": {"tau_round_s": np.tile(total[:, None] / rounds, (1, rounds)),
                       "charged": np.ones((count, rounds), bool), "Y_next": np.zeros((count, rounds, scenario.N)),
                       "Gamma": np.full((count, rounds, scenario.N), 0.01)}, "engine": "device"}


def test_the_policies_sweep_runs_a_users_rule_beside_the_built_in_ones(tmp_path, monkeypatch):
    """--extra-policy: the rule runs in every setting at every V, is paired with DSSRA on the same
    seeds (the paired change computed by hand here), is named in the findings, and a finished
    sweep is reused only for the same rules."""
    from collapipe_jax.sweep import SWEEPS, policies
    from collapipe_jax.sweep.base import reusable_summary, run_sweep

    monkeypatch.setattr(policies, "run_policy", fake_run_policy)
    monkeypatch.setitem(policies.SEEDS, "quick", 5)
    summary = run_sweep(SWEEPS["policies"], "quick", tmp_path, extra_policies=(BEST_CHANNEL,))
    tables = json.loads((tmp_path / "policies" / "tables.json").read_text())["tables"]
    mine = [r for r in tables["policies"] if r["policy"] == BEST_CHANNEL]
    assert {r["V"] for r in mine} == set(policies.VS) and all(r["uses_V"] for r in mine)
    assert len({r["setting"] for r in mine}) == len({r["setting"] for r in tables["policies"]})
    changes = [r for r in tables["policies-changes"] if r["baseline"] == BEST_CHANNEL]
    assert len(changes) == len({r["setting"] for r in mine}) * len(policies.VS)
    c_d, c_u = (10.0 + sum(map(ord, p)) % 7 for p in ("dssra", BEST_CHANNEL))
    assert all(abs(r["change_pct"] - 100 * (c_d / c_u - 1)) < 1e-9 for r in changes), changes[0]
    assert summary["extra_policies"] == [BEST_CHANNEL] and any(BEST_CHANNEL in f for f in summary["findings"])
    assert reusable_summary(SWEEPS["policies"], tmp_path, extra_policies=(BEST_CHANNEL,)) is not None
    assert reusable_summary(SWEEPS["policies"], tmp_path, extra_policies=()) is None


@pytest.mark.parametrize("argv, fragment", [
    (["sweep", "memory", "--extra-policy", BEST_CHANNEL], "applies to the sweeps that run every policy"),
    (["sweep", "policies", "--extra-policy", "random"], "must be a rule of your own"),
    (["sweep", "policies", "--extra-policy", "no/such/file.py:rule"], "no/such/file.py:rule"),
])
def test_a_bad_extra_policy_is_one_error_line(tmp_path, argv, fragment):
    assert_one_line_error(*run(*argv, "--out", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()
