"""Sub-1 on the device (`scheduling/device/segments.py`) against the host reference
(`scheduling/segments.py`, `baselines.default_plan`, the frameworks' fixed rules) on random
instances drawn as the rounds draw them, under float64; vmapped calls against per-cluster calls;
float32 against float64."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collapipe_jax.errors import InfeasibleError
from collapipe_jax.scenario import draw_state, round_key, scenario_preset
from collapipe_jax.scheduling import baselines as bl
from collapipe_jax.scheduling import dssra as ds
from collapipe_jax.scheduling import frameworks as fw
from collapipe_jax.scheduling import segments as sg
from collapipe_jax.scheduling.device import constraints as cs
from collapipe_jax.scheduling.device import segments as dsg

VARIANTS = ("paper", "consistent")


@pytest.fixture(autouse=True)
def float64():
    """The host solvers run in float64: compare under x64."""
    with jax.enable_x64(True):
        yield
RTOL = 1e-9

# jitted once per (static arguments, shapes) and reused across cases
front_at_m = jax.jit(dsg.front_at_m, static_argnames=("L", "b", "variant", "method"))
solve = jax.jit(dsg.solve_segments, static_argnames=("L", "b", "variant", "m_rule", "max_m_solves", "method"))
m_terms = jax.jit(dsg.m_terms, static_argnames=("L", "b", "variant"))
latency = jax.jit(dsg.pipeline_latency, static_argnames=("L", "b", "variant"))
violations = jax.jit(dsg.plan_violations, static_argnames=("L", "b", "variant"))
default_plan = jax.jit(dsg.default_plan, static_argnames=("L", "b", "variant", "max_steps"))
fixed_rules = jax.jit(lambda cl, L, b, variant: (dsg.vanilla_fl_plan(cl, L, b, variant),
                                                 dsg.titanic_plan(cl, L, b, variant),
                                                 dsg.default_rule_plan(cl, L, b, variant),
                                                 dsg.default_rule_plan(cl, L, b, variant, 3, 7)),
                      static_argnames=("L", "b", "variant"))


def round_clusters(preset, variant, seed, K=None, L=None, b=None, tight=None):
    """The clusters of one round drawn as `dssra.round_problem` draws them; tight: memory and
    energy budgets shrunk per device by random factors (C7 and C9' binding), "c7" / "c9": an
    instance where memory / energy cannot hold the L TEBs at all."""
    s = scenario_preset(preset)
    s = s.replace(**{k: v for k, v in dict(K=K, L=L, b=b).items() if v is not None})
    problem = ds.round_problem(s, draw_state(s, round_key(seed, 0)), variant)
    rng = np.random.default_rng(seed)
    out = []
    for dev in problem.clusters:
        if tight in ("budgets", "c9"):
            per_teb = dev.gamma_max_bytes / dev.gamma0_bytes
            one = sg.m_terms(dev, 1).energy[:, 1, sg.NONLAST]  # a TEB's energy at m = 1
            emax = one * rng.uniform(1.0, dev.L / 2, dev.K) if tight == "budgets" else one * 0.5
            gmax = dev.gamma0_bytes * (rng.uniform(0.3, 1.2, dev.K) * per_teb + 0.5)
            dev = dataclasses.replace(dev, gamma_max_bytes=gmax, E_max_j=emax, _terms={})
        elif tight == "c7":
            dev = dataclasses.replace(dev, gamma_max_bytes=np.full(dev.K, 1.5 * dev.gamma0_bytes), _terms={})
        out.append(dev)
    return s, out


def host_front(dev):
    """(τ per S with nan where infeasible, m per S, InfeasibleError constraint or None)."""
    try:
        front = sg.solve_segments(dev)
    except InfeasibleError as err:
        return None, None, err.report["constraint"]
    tau = np.array([np.nan if p is None else p.tau_pipe_s for p in front.plans])
    m = np.array([0 if p is None else p.m for p in front.plans])
    return tau, m, None


def check_plan_is_optimal(dev, m, delta, last, want: sg.SegmentPlan):
    """The device plan is the host's, or (a tie) another plan the host evaluates as feasible
    with the same τ_pipe."""
    delta = tuple(int(v) for v in delta)
    if delta == want.delta and int(last) == want.order[-1]:
        return
    order = tuple([k for k in range(dev.K) if delta[k] > 0 and k != last] + [int(last)])
    assert not sg.plan_violations(dev, m, delta, order)
    assert sg.pipeline_latency(dev, m, delta, order) == pytest.approx(want.tau_pipe_s, rel=RTOL)


def check_front_at_m(dev, variant, m, method="auto"):
    cl = dsg.cluster_from_host(dev)
    got = front_at_m(cl, m, L=dev.L, b=dev.b, variant=variant, method=method)
    want = sg.front_exact(dev, m)
    for s, p in enumerate(want):
        assert bool(got.ok[s]) == (p is not None), (s, m)
        if p is None:
            assert np.isinf(got.tau[s])
            continue
        assert float(got.tau[s]) == pytest.approx(p.tau_pipe_s, rel=RTOL)
        assert int(got.m[s]) == m and int(np.sum(np.asarray(got.delta[s]) > 0)) == s + 1
        check_plan_is_optimal(dev, m, got.delta[s], got.last[s], p)


CASES = [  # (preset, K, L, b, tight, seed): two shapes by default (one compilation each)
    ("paper-bert", None, None, None, None, 0),
    ("paper-bert", None, None, None, "budgets", 1),
    ("paper-bert", 10, 24, None, "budgets", 3),
]
SLOW_CASES = [("paper-transformer", None, None, None, "budgets", 2), ("paper-bert", 10, 24, 16, "budgets", 4)]
case_id = lambda c: f"{c[0]}-K{c[1]}-L{c[2]}-b{c[3]}-{c[4]}"  # noqa: E731


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES + [pytest.param(c, marks=pytest.mark.slow) for c in SLOW_CASES], ids=case_id)
def test_front_at_m_equals_the_host(case, variant):
    preset, K, L, b, tight, seed = case
    _, devs = round_clusters(preset, variant, seed, K, L, b, tight)
    for dev in devs[:2]:
        for m in sorted({1, 3, dev.b // 2, dev.b}):
            check_front_at_m(dev, variant, m)


def test_the_dp_equals_the_greedy_under_paper():
    _, devs = round_clusters("paper-bert", "paper", 5, tight="budgets")
    for m in (1, 8, 64):
        check_front_at_m(devs[0], "paper", m, method="dp")


def brute_force_bounds(stage, L):
    """[S, ℓ]: the smallest chunk time T under which some S devices including ℓ, each with a cap
    ≥ 1, have caps summing to ≥ L (every subset tried); inf if none."""
    import itertools

    K = stage.shape[0]
    values = np.unique(stage[:, 1:][np.isfinite(stage[:, 1:])])
    out = np.full((K, K), np.inf)
    for T in values[::-1]:  # the smallest T that holds is written last
        cap = np.sum(stage[:, 1:] <= T, axis=1)
        for S in range(1, min(K, L) + 1):
            for last in range(K):
                others = [k for k in range(K) if k != last]
                if any(cap[last] >= 1 and all(cap[k] >= 1 for k in A) and cap[last] + sum(cap[k] for k in A) >= L
                       for A in itertools.combinations(others, S - 1)):
                    out[S - 1, last] = T
    return out


def test_greedy_bounds_equal_a_brute_force_over_subsets():
    """The paper greedy's smallest bound per (S, ℓ) against every subset of devices, on chunk
    times with many ties (small integers) and disallowed suffixes (C7/C9' cut δ at a prefix)."""
    rng = np.random.default_rng(0)
    bounds = jax.jit(dsg._greedy_bounds, static_argnames="L")
    for trial in range(40):
        K, L = ((6, 12), (5, 7), (6, 4))[trial % 3]
        steps = rng.integers(1, 4, (K, L))
        stage = np.concatenate([np.zeros((K, 1)), np.cumsum(steps, axis=1) + rng.integers(0, 3, (K, 1))], 1)
        allowed_up_to = rng.integers(0, L + 1, K)  # δ ≤ this is allowed (0: the device holds none)
        stage = np.where(np.arange(L + 1)[None, :] <= allowed_up_to[:, None], stage, np.inf)
        np.testing.assert_array_equal(np.asarray(bounds(jnp.asarray(stage), L=L)), brute_force_bounds(stage, L))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES + [("paper-bert", None, None, None, "c7", 4),
                                          ("paper-bert", None, None, None, "c9", 5)]
                         + [pytest.param(c, marks=pytest.mark.slow) for c in SLOW_CASES], ids=case_id)
def test_solve_segments_equals_the_host(case, variant):
    """Same m sequence as the host: τ and m per S equal; infeasibility named as the host does."""
    preset, K, L, b, tight, seed = case
    _, devs = round_clusters(preset, variant, seed, K, L, b, tight)
    for dev in devs:
        tau, m, error = host_front(dev)
        got, code = solve(dsg.cluster_from_host(dev), L=dev.L, b=dev.b, variant=variant)
        assert cs.name(int(code)) == (error or "")
        if error is not None:
            assert not np.any(got.ok)
            continue
        np.testing.assert_array_equal(np.asarray(got.ok), ~np.isnan(tau))
        np.testing.assert_allclose(np.where(got.ok, got.tau, np.nan), tau, rtol=RTOL)
        np.testing.assert_array_equal(np.where(got.ok, got.m, 0), m)


def test_every_plan_places_all_tebs_outside_jit():
    """A measured instance (paper-bert, full upload, round 5 of seed 12, cluster 1) where XLA,
    compiling the m rule's while loop outside jit, rounded the chunk times an ulp apart in the
    bound and in the fill, and the 3-stage plan lost a TEB (Σ δ = L − 1, a τ below the host's)."""
    scenario = scenario_preset("paper-bert").replace(tunable="full", E_max_n_j=1e3)
    problem = ds.round_problem(scenario, draw_state(scenario, round_key(12, 5)), "paper", lyapunov="paper")
    dev = problem.clusters[1]
    tau, m, _ = host_front(dev)
    got, _ = dsg.solve_segments(dsg.cluster_from_host(dev), dev.L, dev.b, "paper")  # eager, not `solve`
    ok = np.asarray(got.ok)
    np.testing.assert_array_equal(np.asarray(got.delta).sum(axis=1)[ok], dev.L)
    np.testing.assert_allclose(np.where(ok, got.tau, np.nan), tau, rtol=RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exhaustive_m_rule_equals_the_host(variant):
    _, devs = round_clusters("paper-bert", variant, 6, tight="budgets")
    dev = devs[0]
    want = sg.solve_segments(dev, m_rule="exhaustive")
    got, code = solve(dsg.cluster_from_host(dev), L=dev.L, b=dev.b, variant=variant, m_rule="exhaustive")
    assert int(code) == cs.FEASIBLE
    for s, p in enumerate(want.plans):
        assert bool(got.ok[s]) == (p is not None)
        if p is not None:
            assert float(got.tau[s]) == pytest.approx(p.tau_pipe_s, rel=RTOL) and int(got.m[s]) == p.m


@pytest.mark.parametrize("variant", VARIANTS)
def test_terms_latency_and_violations_equal_the_host(variant):
    _, devs = round_clusters("paper-bert", variant, 7, tight="budgets")
    rng = np.random.default_rng(7)
    for dev in devs:
        cl = dsg.cluster_from_host(dev)
        for m in (1, 5, 64):
            want, got = sg.m_terms(dev, m), m_terms(cl, m, L=dev.L, b=dev.b, variant=variant)
            for name in ("c", "d", "cycles", "stage", "energy", "cost_per_teb", "cost_role"):
                np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-12, err_msg=name)
            np.testing.assert_array_equal(got.allowed, want.allowed)
            for _ in range(4):  # random plans, feasible or not
                S = int(rng.integers(1, dev.K + 1))
                order = [int(k) for k in rng.permutation(dev.K)[:S]]
                delta = np.zeros(dev.K, int)
                delta[order] = np.bincount(rng.integers(0, S, dev.L - S), minlength=S) + 1
                args = (cl, m, delta, order[-1])
                assert float(latency(*args, L=dev.L, b=dev.b, variant=variant)) == pytest.approx(
                    sg.pipeline_latency(dev, m, delta, order), rel=1e-12)
                flags = violations(*args, L=dev.L, b=dev.b, variant=variant)
                names = [n for n, bad in zip(("C1", "C2", "C7", "C9'"), np.asarray(flags)) if bad]
                assert names == sg.plan_violations(dev, m, delta, order)


def plan_equals(got: dsg.Plan, want: sg.SegmentPlan):
    assert tuple(int(v) for v in got.delta) == want.delta
    assert int(got.last) == want.order[-1] and int(got.m) == want.m
    assert float(got.tau) == pytest.approx(want.tau_pipe_s, rel=RTOL)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tight", [None, "budgets", "c7", "c9"])
def test_default_plan_equals_the_baselines(variant, tight):
    _, devs = round_clusters("paper-bert", variant, 8, tight=tight)
    rng = np.random.default_rng(8)
    for dev in devs:
        cl = dsg.cluster_from_host(dev)
        for order in (np.arange(dev.K), rng.permutation(dev.K)):
            got, code = default_plan(cl, order, L=dev.L, b=dev.b, variant=variant)
            try:
                want = bl.default_plan(dev, 0, order)
            except InfeasibleError as err:
                assert cs.name(int(code)) == err.report["constraint"] and not bool(got.ok)
                continue
            assert int(code) == cs.FEASIBLE and bool(got.ok)
            plan_equals(got, want)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tight", [None, "budgets", "c7"])
def test_fixed_rules_equal_the_frameworks(variant, tight):
    _, devs = round_clusters("paper-bert", variant, 9, tight=tight)
    for dev in devs:
        vanilla, titanic, default, default_s3 = fixed_rules(dsg.cluster_from_host(dev), L=dev.L, b=dev.b,
                                                            variant=variant)
        k = fw.fastest_fitting_device(dev)
        delta = np.zeros(dev.K, int)
        delta[k] = dev.L
        plan_equals(vanilla, fw.fixed_plan(dev, delta, [k], 1))
        speed = fw.device_speed(dev)
        chosen = np.argsort(-speed, kind="stable")[:min(dev.L, -(-dev.K // 2))]
        delta = np.zeros(dev.K, int)
        delta[chosen] = fw.proportional_split(dev.L, speed[chosen], fw.teb_capacity(dev)[chosen])
        plan_equals(titanic, fw.fixed_plan(dev, delta, [int(k) for k in chosen if delta[k] > 0], 4))
        for got, S, m in ((default, dev.K, 4), (default_s3, 3, 7)):
            delta = np.asarray(sg.even_split(dev.L, dev.K, S))
            plan_equals(got, fw.fixed_plan(dev, delta, [k for k in range(dev.K) if delta[k] > 0], m))
        for got in (vanilla, titanic, default, default_s3):  # kept even when infeasible; ok says so
            order = [k for k in range(dev.K) if got.delta[k] > 0 and k != got.last] + [int(got.last)]
            assert bool(got.ok) == (not sg.plan_violations(dev, int(got.m), np.asarray(got.delta), order))


def stack(clusters):
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *clusters)


@pytest.mark.parametrize("variant", ["consistent", pytest.param("paper", marks=pytest.mark.slow)])
def test_a_vmapped_batch_equals_the_per_cluster_calls(variant):
    devs = [d for seed in (10, 11) for d in round_clusters("paper-bert", variant, seed, tight="budgets")[1]]
    clusters = [dsg.cluster_from_host(d) for d in devs]
    L, b = devs[0].L, devs[0].b
    batched, codes = jax.jit(jax.vmap(functools.partial(dsg.solve_segments, L=L, b=b, variant=variant)))(
        stack(clusters))
    for n, cl in enumerate(clusters):
        one, code = solve(cl, L=L, b=b, variant=variant)
        assert int(codes[n]) == int(code)
        for field in ("delta", "last", "m", "tau", "ok"):
            np.testing.assert_array_equal(getattr(batched, field)[n], getattr(one, field), err_msg=field)


@pytest.mark.parametrize("variant", ["paper", pytest.param("consistent", marks=pytest.mark.slow)])
def test_float32_runs_and_is_close_to_float64(variant):
    _, devs = round_clusters("paper-bert", variant, 12, tight="budgets")
    for dev in devs:
        wide, _ = solve(dsg.cluster_from_host(dev, jnp.float64), L=dev.L, b=dev.b, variant=variant)
        narrow, code = solve(dsg.cluster_from_host(dev, jnp.float32), L=dev.L, b=dev.b, variant=variant)
        assert narrow.tau.dtype == jnp.float32 and int(code) == cs.FEASIBLE
        np.testing.assert_array_equal(narrow.ok, wide.ok)
        assert np.all(np.isfinite(np.asarray(narrow.tau)[np.asarray(narrow.ok)]))
        np.testing.assert_allclose(np.where(wide.ok, narrow.tau, 0), np.where(wide.ok, wide.tau, 0), rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [("paper-bert", None, None, None), ("paper-transformer", None, None, 32),
                                   ("paper-bert", 10, 24, 64)], ids=str)
def test_many_instances_equal_the_host(shape, variant):
    preset, K, L, b = shape
    for seed in range(20, 32):
        tight = (None, "budgets", "budgets", "c9")[seed % 4]
        _, devs = round_clusters(preset, variant, seed, K, L, b, tight)
        for dev in devs:
            tau, m, error = host_front(dev)
            got, code = solve(dsg.cluster_from_host(dev), L=dev.L, b=dev.b, variant=variant)
            assert cs.name(int(code)) == (error or "")
            if error is None:
                np.testing.assert_allclose(np.where(got.ok, got.tau, np.nan), tau, rtol=RTOL)
                np.testing.assert_array_equal(np.where(got.ok, got.m, 0), m)
            check_front_at_m(dev, variant, 1 + seed % dev.b)
