"""Sub-2 on the device (scheduling/device/resources.py) against the host reference
(scheduling/resources.py, dssra.py, baselines.py, frameworks.py) on random rounds drawn as the
host draws them, under float64; plus brute force for the matching and a property test of C6,
C8 and C11' on everything returned.

Each device function is compiled once per shape (vmapped over the instances of that shape)."""

import dataclasses
import functools
import itertools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from collapipe_jax.errors import InfeasibleError
from collapipe_jax.scenario import draw_state, round_key, scenario_from_model
from collapipe_jax.scheduling import baselines as bl
from collapipe_jax.scheduling import dssra as ds
from collapipe_jax.scheduling import frameworks as fw
from collapipe_jax.scheduling import resources as rs
from collapipe_jax.scheduling.device import resources as dr


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def round_instance(seed, preset="paper-bert", tunable="full", N=3, J=4, fading="mean"):
    """A round problem drawn as the host draws it, with E_n^max set between 0.6× and 4× the
    cluster's least upload energy so that C11' rules out some pairs (every 4th seed: below it,
    so that no cluster can upload)."""
    scenario = scenario_from_model(preset).replace(N=N, J=J, fading=fading, tunable=tunable)
    problem = ds.round_problem(scenario, draw_state(scenario, round_key(seed, 0)))
    up = problem.uplink
    e_min = rs.min_upload_energy(up, np.arange(N)[:, None], np.arange(J)[None, :]).min(axis=1)
    rng = np.random.default_rng(seed)
    factor = rng.uniform(0.5, 0.99, N) if seed % 4 == 3 else rng.uniform(0.6, 4.0, N)  # every 4th: infeasible
    up = dataclasses.replace(up, E_max_n_j=e_min * factor)
    return dataclasses.replace(problem, uplink=up)


def instances(N, J, fading, count, start=0):
    """`count` uplinks of one shape over the presets and what is uploaded."""
    kinds = list(itertools.product(["paper-bert", "paper-transformer", "tiny"], ["full", "lora:8"]))
    return [round_instance(start + i, *kinds[(start + i) % len(kinds)], N=N, J=J, fading=fading)
            for i in range(count)]


def stack(ups):
    """The device uplinks of same-shape host uplinks, stacked on a leading batch axis."""
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *[dr.uplink_from_host(u) for u in ups])


def sub1_inputs(seed, N, scale):
    """Random τ_pipe (around the upload delays' scale), S and positive queue weights."""
    rng = np.random.default_rng(seed + 10_000)
    return rng.uniform(0.1, 2.0, N) * scale, rng.integers(1, 7, N), rng.uniform(0.1, 20.0, N)


# --------------------------------------------------------------------------- compiled functions


@functools.cache
def p_ub_fn():
    return jax.jit(jax.vmap(dr.power_upper_bounds))


@functools.cache
def solve_fn(lyapunov, method=None):
    def solve(up, tau_pipe, S, w, V, p_ub):
        return dr.solve_resources(up, tau_pipe, S, w, V, lyapunov, p_ub, method=method)

    return jax.jit(jax.vmap(solve, in_axes=(0, 0, 0, 0, None, 0)))


@functools.cache
def match_fn(method):
    return jax.jit(jax.vmap(functools.partial(dr.match_channels, method=method)))


# --------------------------------------------------------------------------- uplink quantities


@jax.jit
def uplink_quantities(d, p, budget, cap, S, channel):
    n, j = jnp.arange(d.N)[:, None], jnp.arange(d.J)[None, :]
    return (dr.upload_delay(d, p, n, j), dr.upload_energy(d, p, n, j), dr.min_upload_energy(d, n, j),
            dr.power_for_delay(d, budget, n, j), dr.power_for_delay(d, budget, n, j, cap),
            dr.convergence_gap(d, S, p[:, 0], channel))


@pytest.mark.parametrize("fading", ["mean", "rayleigh"])
def test_power_bounds_delays_and_energies_equal_the_host(fading):
    ups = [p.uplink for p in instances(6, 4, fading, 6)]
    got = np.asarray(p_ub_fn()(stack(ups)))
    rng = np.random.default_rng(0)
    n, j = np.arange(6)[:, None], np.arange(4)[None, :]
    for b, up in enumerate(ups):
        want = rs.power_upper_bounds(up)
        assert np.array_equal(np.isnan(got[b]), np.isnan(want))
        np.testing.assert_allclose(got[b], want, rtol=1e-9)
        p = rng.uniform(0.0, 0.5, (6, 4)) * (rng.uniform(size=(6, 4)) > 0.1)  # some p = 0
        budget = rs.upload_delay(up, rng.uniform(0.01, 0.6, (6, 4)), n, j) * np.where(rng.uniform(size=(6, 4)) < 0.1, -1, 1)
        cap = np.where(np.isnan(want), 0.0, want)
        S, channel = rng.integers(1, 7, 6), np.array([2, -1, 0, 3, -1, 1])
        delay, energy, e_min, p_free, p_capped, gap = uplink_quantities(dr.uplink_from_host(up), p, budget, cap, S, channel)
        np.testing.assert_allclose(delay, rs.upload_delay(up, p, n, j), rtol=1e-12)
        np.testing.assert_allclose(energy, rs.upload_energy(up, p, n, j), rtol=1e-12)
        np.testing.assert_allclose(e_min, rs.min_upload_energy(up, n, j), rtol=1e-12)
        np.testing.assert_allclose(p_free, rs.power_for_delay(up, budget, n, j), rtol=1e-9)
        np.testing.assert_allclose(p_capped, rs.power_for_delay(up, budget, n, j, cap), rtol=1e-9)
        np.testing.assert_allclose(gap, rs.convergence_gap(up, S, p[:, 0], channel), rtol=1e-12)


# --------------------------------------------------------------------------- matching


def brute_matching(cost, cost_none):
    N, J = cost.shape
    cols = list(range(J)) + [-1 - i for i in range(max(0, N - J))]
    best = math.inf
    for perm in itertools.permutations(cols, N):
        best = min(best, sum(cost[n, c] if c >= 0 else cost_none[n] for n, c in enumerate(perm)))
    return best


def scipy_matching(cost, cost_none):
    """The optimum by scipy on the finite entries only (inf: no finite matching)."""
    N, J = cost.shape
    matrix = np.concatenate([cost, np.repeat(cost_none[:, None], max(0, N - J), axis=1)], axis=1)
    try:
        rows, cols = linear_sum_assignment(matrix)  # raises when infeasible
    except ValueError:
        return math.inf
    return float(matrix[rows, cols].sum())


def check_c6(channel, cost, cost_none):
    N, J = cost.shape
    used = channel[channel >= 0]
    assert len(set(used.tolist())) == len(used) == min(N, J)  # no channel twice, min(N, J) uploads
    assert np.all(channel < J) and np.all(channel >= -1)
    for n, c in enumerate(channel):  # no forbidden pair
        assert np.isfinite(cost[n, c] if c >= 0 else cost_none[n])


@pytest.mark.parametrize("method", ["dp", "hungarian"])
@pytest.mark.parametrize("N,J", [(3, 4), (4, 4), (6, 4), (5, 2)])
def test_matching_equals_scipy_and_brute_force(method, N, J):
    rng = np.random.default_rng(N * 10 + J)
    B = 40
    cost = rng.uniform(0, 10, (B, N, J))
    cost[rng.uniform(size=cost.shape) < 0.3] = np.inf  # forbidden pairs (C11')
    cost_none = rng.uniform(0, 10, (B, N))
    cost_none[rng.uniform(size=cost_none.shape) < 0.2] = np.inf  # e.g. a selected CU must upload
    channel, total, ok = map(np.asarray, match_fn(method)(jnp.asarray(cost), jnp.asarray(cost_none)))
    for b in range(B):
        want = scipy_matching(cost[b], cost_none[b])
        assert want == pytest.approx(brute_matching(cost[b], cost_none[b]), rel=1e-12)
        assert ok[b] == np.isfinite(want)
        if ok[b]:
            assert total[b] == pytest.approx(want, rel=1e-12)
            check_c6(channel[b], cost[b], cost_none[b])
            host = rs.match_channels(cost[b], cost_none[b])
            assert host is not None and np.array_equal(host[0], channel[b])  # continuous costs: unique


@functools.cache
def tie_match_fn(method):
    return jax.jit(jax.vmap(lambda c, cn, t, tn: dr.match_channels(c, cn, method, t, tn)))


@pytest.mark.parametrize("method", ["dp", "hungarian"])
@pytest.mark.parametrize("N,J", [(3, 4), (6, 4)])
def test_ties_are_broken_as_the_host_breaks_them(method, N, J):
    """Rows of weight 0 (Y_n = 0; every row in a quarter of the instances) make ties: both
    methods return the host's matching, the least Σ tie among the least Σ cost."""
    rng = np.random.default_rng(N * 10 + J + 1)
    B = 40
    zero = (rng.uniform(size=(B, N)) < 0.5) | (np.arange(B) % 4 == 0)[:, None]
    weight = np.where(zero, 0.0, rng.uniform(0.1, 10, (B, N)))
    cost = weight[:, :, None] * rng.uniform(0, 1, (B, N, J))
    cost[rng.uniform(size=cost.shape) < 0.2] = np.inf
    cost_none = weight * rng.uniform(0, 1, (B, N))
    tie, tie_none = rng.uniform(0.1, 1, (B, N, J)), rng.uniform(0.5, 1, (B, N))
    # Sub-2's scaling of the tie term: far below the costs' real differences
    scale = np.max(np.where(np.isfinite(cost), cost, 0.0), axis=(1, 2))
    delta = np.array([rs.tie_break_weight(s, 1.0) for s in scale])
    tie, tie_none = delta[:, None, None] * tie, delta[:, None] * tie_none
    channel, total, ok = map(np.asarray, tie_match_fn(method)(*map(jnp.asarray, (cost, cost_none, tie, tie_none))))
    untied = 0
    for b in range(B):
        host = rs.match_channels(cost[b], cost_none[b], tie[b], tie_none[b])
        assert bool(ok[b]) == (host is not None)
        if host is None:
            continue
        np.testing.assert_array_equal(channel[b], host[0])
        assert total[b] == pytest.approx(host[1], rel=1e-12, abs=1e-300)
        # without the tie-break the methods' own orders may differ from scipy's
        untied += not np.array_equal(rs.match_channels(cost[b], cost_none[b])[0], host[0])
    assert untied > 0  # some instances had a tie that the tie costs decided


@pytest.mark.parametrize("N,J", [(16, 8), pytest.param(12, 12, marks=pytest.mark.slow)])
def test_matching_large_shapes_equal_scipy(N, J):
    """Both methods reach scipy's optimum on the larger shapes too."""
    rng = np.random.default_rng(N + J)
    cost = rng.uniform(0, 10, (8, N, J))
    cost[rng.uniform(size=cost.shape) < 0.2] = np.inf
    cost_none = rng.uniform(0, 10, (8, N))
    for method in ("dp", "hungarian"):
        _, total, ok = match_fn(method)(jnp.asarray(cost), jnp.asarray(cost_none))
        for b in range(8):
            want = scipy_matching(cost[b], cost_none[b])
            assert bool(ok[b]) == np.isfinite(want)
            if np.isfinite(want):
                assert float(total[b]) == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------- Sub-2


def host_objective(up, lyapunov, V, tau_pipe, S, w, channel, p):
    """Sub-2's objective of a decision, evaluated on the host: V τ + Σ w (β/2) ε (drift: the S
    term of Γ is Sub-1's) or V τ + Σ w p (paper)."""
    n = np.arange(up.N)
    tau_up = np.where(channel >= 0, rs.upload_delay(up, np.where(channel >= 0, p, 1.0), n, np.clip(channel, 0, None)), 0.0)
    extra = w @ (0.5 * up.beta * rs.noise_variance(up, p, n, channel)) if lyapunov == "drift" else w @ p
    return V * float(np.max(tau_pipe + tau_up)) + float(extra)


def compare_solve(problems, lyapunov, V=10.0, method=None, zero_weights=False):
    """The device's Sub-2 against the host's on `problems` (zero_weights: every weight 0 in
    every other instance, about half of them in the rest: ties the tie-break decides)."""
    ups = [p.uplink for p in problems]
    N, J = ups[0].N, ups[0].J
    p_ub = [rs.power_upper_bounds(u) for u in ups]
    scale = [float(np.nanmedian(rs.upload_delay(u, np.where(np.isnan(q), 1.0, q), np.arange(N)[:, None],
                                                np.arange(J)[None, :]))) for u, q in zip(ups, p_ub)]
    inputs = [sub1_inputs(b, N, s) for b, s in enumerate(scale)]
    tau, S, w = (np.stack(x) for x in zip(*inputs))
    if zero_weights:
        keep = np.random.default_rng(N + J).uniform(size=w.shape) < 0.5
        w = np.where(keep & (np.arange(len(ups)) % 2 == 1)[:, None], w, 0.0)
    got = solve_fn(lyapunov, method)(stack(ups), jnp.asarray(tau), jnp.asarray(S), jnp.asarray(w), V,
                                     jnp.asarray(np.stack(p_ub)))
    got = jax.tree_util.tree_map(np.asarray, got)
    feasible = 0
    for b, up in enumerate(ups):
        try:
            want = rs.solve_resources(up, tau[b], S[b], w[b], V, lyapunov, p_ub=p_ub[b])
        except InfeasibleError as err:
            assert err.report["constraint"] == "C11'"
            assert not got.ok[b]
            continue
        feasible += 1
        assert got.ok[b]
        ch, p = got.channel[b], got.p_n_w[b]
        if lyapunov == "paper" and up.fading == "rayleigh":
            # the paper objective's bound grid is a search, not an exact method: where a pair's
            # latency bound is a rounding tie the device may refine another matching; its
            # objective is then the better one (checked feasible below)
            assert got.objective[b] <= want.objective * (1 + 1e-7)
            exact = got.objective[b] >= want.objective * (1 - 1e-7)
        else:
            assert got.objective[b] == pytest.approx(want.objective, rel=1e-7)
            exact = True
        # the decision is what it claims, and feasible (C6, C8, C11')
        assert host_objective(up, lyapunov, V, tau[b], S[b], w[b], ch, p) == pytest.approx(got.objective[b], rel=1e-9)
        check_c6(ch, np.where(np.isnan(p_ub[b]), np.inf, 1.0), np.zeros(N))
        check_powers(up, p_ub[b], ch, p)
        if not exact:
            continue
        np.testing.assert_array_equal(ch, want.channel)  # random continuous inputs: a unique optimum
        np.testing.assert_allclose(p, want.p_n_w, rtol=1e-9 if lyapunov == "drift" else 1e-5)
        np.testing.assert_allclose(got.tau_up_s[b], want.tau_up_s, rtol=1e-9 if lyapunov == "drift" else 1e-5)
    return feasible


def check_powers(up, p_ub, channel, p):
    for n, c in enumerate(channel):
        if c < 0:
            assert p[n] == 0.0
            continue
        assert 0 < p[n] <= min(p_ub[n, c], up.P_max_n_w[n]) * (1 + 1e-12)  # C8
        assert float(rs.upload_energy(up, p[n], n, c)) <= up.E_max_n_j[n]  # C11'


@pytest.mark.parametrize("N,J,fading,lyapunov", [(3, 4, "mean", "drift"), (3, 4, "mean", "paper"),
                                                 (6, 4, "mean", "drift"), (3, 4, "rayleigh", "drift")])
def test_solve_resources_equals_the_host(N, J, fading, lyapunov):
    feasible = compare_solve(instances(N, J, fading, 12), lyapunov)
    assert 0 < feasible < 12  # both kinds of instance were compared


@pytest.mark.parametrize("N,J,lyapunov", [(3, 4, "drift"), (3, 4, "paper"), (6, 4, "drift")])
def test_sub2_with_zero_queues_equals_the_host(N, J, lyapunov):
    """Y_n = 0 leaves ties (all matchings that meet the bottleneck when every Y_n is 0): the
    device decides them as the host (the least Σ ε_n), so channels and powers agree."""
    feasible = compare_solve(instances(N, J, "mean", 12), lyapunov, zero_weights=True)
    assert feasible > 0


@pytest.mark.slow
@pytest.mark.parametrize("lyapunov", ["drift", "paper"])
@pytest.mark.parametrize("N,J,fading,method", [(3, 4, "rayleigh", None), (6, 4, "mean", None),
                                               (6, 4, "rayleigh", None), (16, 8, "mean", None),
                                               (16, 8, "rayleigh", None), (6, 4, "mean", "dp"),
                                               (6, 4, "mean", "hungarian"), (16, 8, "mean", "dp")])
def test_solve_resources_equals_the_host_more(lyapunov, N, J, fading, method):
    compare_solve(instances(N, J, fading, 24, start=100), lyapunov, method=method)


def test_solve_resources_runs_in_float32():
    """float32 inputs compute in float32 and stay feasible, near the float64 optimum."""
    problems = [p for p in instances(3, 4, "mean", 8) if not np.all(np.isnan(rs.power_upper_bounds(p.uplink)))]
    for problem in problems[:2]:
        up = problem.uplink
        p_ub = rs.power_upper_bounds(up)
        tau, S, w = sub1_inputs(0, 3, 100.0)
        try:
            want = rs.solve_resources(up, tau, S, w, 10.0, "drift", p_ub=p_ub)
        except InfeasibleError:
            continue
        with jax.enable_x64(False):
            d = dr.uplink_from_host(up, jnp.float32)
            got = jax.jit(dr.solve_resources, static_argnames="lyapunov")(
                d, jnp.asarray(tau, jnp.float32), S, jnp.asarray(w, jnp.float32), 10.0, "drift")
            assert got.p_n_w.dtype == jnp.float32 and bool(got.ok)
            assert float(got.objective) == pytest.approx(want.objective, rel=1e-4)


# --------------------------------------------------------------------------- Sub-1's choice of S


def fronts_of(F):
    return [SimpleNamespace(plans=[SimpleNamespace(tau_pipe_s=t) if np.isfinite(t) else None for t in row]) for row in F]


def stage_value(F, pick, tau_up, w, V, coef):
    rows = np.arange(F.shape[0])
    return V * float(np.max(F[rows, pick] + tau_up)) + float(np.sum(w * coef * (np.asarray(pick) + 1)))


def random_fronts(rng, N, K, scale):
    F = np.sort(rng.uniform(0.2, 3.0, (N, K)), axis=1)[:, ::-1] * scale  # more stages, faster (mostly)
    F[rng.uniform(size=(N, K)) < 0.25] = np.inf
    F[:, rng.integers(K)] = rng.uniform(0.2, 3.0, N) * scale  # every cluster has a plan
    return F


def test_choose_stage_counts_equals_the_host():
    fn = jax.jit(jax.vmap(dr.choose_stage_counts, in_axes=(0, 0, 0, None, None)))
    rng = np.random.default_rng(3)
    N, K, B = 6, 5, 30
    F = np.stack([random_fronts(rng, N, K, 50.0) for _ in range(B)])
    tau_up, w = rng.uniform(0, 100, (B, N)), rng.uniform(0, 30, (B, N))
    for V, coef in ((10.0, 0.005), (0.1, 1.0)):
        got = np.asarray(fn(jnp.asarray(F), jnp.asarray(tau_up), jnp.asarray(w), V, coef))
        for b in range(B):
            want = ds.choose_stage_counts(fronts_of(F[b]), tau_up[b], w[b], V, coef)
            assert stage_value(F[b], got[b], tau_up[b], w[b], V, coef) == pytest.approx(
                stage_value(F[b], want, tau_up[b], w[b], V, coef), rel=1e-12)


def paper_stage_value(F, pick, up, channel, p_ub, w, V, T):
    """min over the bottlenecks T of V T + Σ_n w_n (S_n + p_req,n(T)) for a fixed pick."""
    total = V * T
    for n, k in enumerate(pick):
        budget = T - F[n, k]
        if channel[n] >= 0:
            floor = float(rs.upload_delay(up, p_ub[n, channel[n]], n, channel[n]))
            p = rs.power_for_delay(up, np.where(budget >= floor, budget, 1.0), n, channel[n], p_cap=p_ub[n, channel[n]])
            total = total + np.where((budget >= floor) & np.isfinite(p), w[n] * (k + 1 + np.nan_to_num(p, posinf=0.0)), np.inf)
        else:
            total = total + np.where(budget >= 0, w[n] * (k + 1), np.inf)
    return float(np.min(total))


@pytest.mark.parametrize("fading", ["mean", pytest.param("rayleigh", marks=pytest.mark.slow)])
def test_choose_stage_counts_paper_equals_the_host(fading):
    problems = [p for p in instances(6, 4, fading, 16) if np.sum(~np.all(np.isnan(rs.power_upper_bounds(p.uplink)), 1)) >= 4]
    fn = jax.jit(jax.vmap(functools.partial(dr.choose_stage_counts_paper, grid=400), in_axes=(0, 0, 0, 0, 0, None)))
    rng = np.random.default_rng(5)
    rows, V = [], 10.0
    for problem in problems[:6]:
        up = problem.uplink
        p_ub = rs.power_upper_bounds(up)
        cost = np.where(np.isnan(p_ub), np.inf, rng.uniform(size=p_ub.shape))
        channel, _ = rs.match_channels(cost, np.zeros(6)) or (None, None)
        if channel is None:
            continue
        scale = float(np.nanmedian(rs.upload_delay(up, np.nan_to_num(p_ub, nan=1.0), np.arange(6)[:, None], np.arange(4)[None, :])))
        rows.append((up, p_ub, channel, random_fronts(rng, 6, 5, scale), rng.uniform(0.1, 30, 6)))
    assert rows
    ups, p_ub, channel, F, w = zip(*rows)
    got = np.asarray(fn(jnp.asarray(np.stack(F)), stack(ups), jnp.asarray(np.stack(channel)),
                        jnp.asarray(np.stack(p_ub)), jnp.asarray(np.stack(w)), V))
    for b, (up, q, ch, f, wb) in enumerate(rows):
        want = ds.choose_stage_counts_paper(fronts_of(f), up, ch, q, wb, V, grid=400)
        T = np.geomspace(1e-3, 1e3, 20001) * np.max(f[np.isfinite(f)])
        assert paper_stage_value(f, got[b], up, ch, q, wb, V, T) == pytest.approx(
            paper_stage_value(f, want, up, ch, q, wb, V, T), rel=1e-9)


# --------------------------------------------------------------------------- fixed rules


default_uploads_fn = jax.jit(dr.default_uploads)


def test_default_uploads_and_channels_equal_the_host():
    problems = instances(6, 4, "mean", 12) + instances(3, 4, "rayleigh", 6)
    rng = np.random.default_rng(7)
    for problem in problems:
        up = problem.uplink
        N, J = up.N, up.J
        d = dr.uplink_from_host(up)
        p_ub = jnp.asarray(rs.power_upper_bounds(up))
        selected = sorted(rng.permutation(N)[:min(N, J)].tolist())
        mask = np.zeros(N, bool)
        mask[selected] = True
        for preference in (None, rng.uniform(size=(N, J))):
            pref = jax.jit(dr.default_preference, static_argnums=1)(jnp.asarray(mask), J) if preference is None else jnp.asarray(preference)
            channel, p, ok = default_uploads_fn(d, p_ub, jnp.asarray(mask), pref)
            try:
                want_channel, want_p = bl.default_uploads(problem, selected, preference)
            except InfeasibleError:
                assert not bool(ok)
                continue
            assert bool(ok)
            np.testing.assert_array_equal(channel, want_channel)
            np.testing.assert_allclose(p, want_p, rtol=1e-12)
        channel, p = jax.jit(dr.default_channels)(d, p_ub)
        want_channel, want_p = fw.default_channels(problem)
        np.testing.assert_array_equal(channel, want_channel)
        np.testing.assert_allclose(p, want_p, rtol=1e-12)


# --------------------------------------------------------------------------- properties


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 100_000), V=st.sampled_from([0.0, 0.1, 10.0, 1000.0]))
def test_every_decision_meets_c6_c8_c11(seed, V):
    """Whatever the instance: no channel twice, exactly min(N, J) uploads, no forbidden pair,
    0 < p ≤ P_max and E^com ≤ E^max for every upload; ok exactly when the host finds one."""
    with jax.enable_x64(True):
        N, J = 3, 4
        problem = round_instance(seed, ["paper-bert", "tiny"][seed % 2], ["full", "lora:8"][seed // 2 % 2], N, J)
        up = problem.uplink
        p_ub = rs.power_upper_bounds(up)
        tau, S, w = sub1_inputs(seed, N, 100.0)
        batch = lambda x: jnp.asarray(np.stack([x] * 12))  # noqa: E731 - the shape compiled above
        for lyapunov in ("drift", "paper"):
            got = solve_fn(lyapunov)(stack([up] * 12), batch(tau), batch(S), batch(w), V, batch(p_ub))
            got = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], got)
            try:
                rs.solve_resources(up, tau, S, w, V, lyapunov, p_ub=p_ub)
                host_ok = True
            except InfeasibleError:
                host_ok = False
            assert bool(got.ok) == host_ok
            if host_ok:
                check_c6(got.channel, np.where(np.isnan(p_ub), np.inf, 1.0), np.zeros(N))
                check_powers(up, p_ub, got.channel, got.p_n_w)


# --------------------------------------------------------------------------- Sub-2's threshold search


@pytest.mark.parametrize("N,J", [(6, 4), pytest.param(3, 5, marks=pytest.mark.slow),
                                 pytest.param(8, 8, marks=pytest.mark.slow)])
def test_matching_size_and_least_feasible_bound_equal_scipy(N, J):
    """The fixed-shape augmenting-path matching against scipy's Hopcroft–Karp, and the binary
    search for the least feasible bound against the host's, on random graphs."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    rng = np.random.default_rng(N * 10 + J)
    B = 40
    tau = rng.uniform(0, 1, (B, N))
    lat = tau[:, :, None] + rng.uniform(0, 1, (B, N, J))
    lat[rng.uniform(size=(B, N, J)) < 0.5] = np.inf
    graphs = rng.uniform(size=(B, N, J)) < rng.uniform(0.05, 0.6, (B, 1, 1))
    size = jax.jit(jax.vmap(dr.max_matching_size))(jnp.asarray(graphs))
    cands = np.sort(np.concatenate([lat.reshape(B, -1), tau], axis=1), axis=1)
    first, any_ok = jax.jit(jax.vmap(dr.least_feasible_bound))(jnp.asarray(cands), jnp.asarray(lat),
                                                              jnp.asarray(tau))
    for b in range(B):
        want = int(np.sum(maximum_bipartite_matching(csr_matrix(graphs[b].astype(np.int8)),
                                                     perm_type="column") >= 0))
        assert int(size[b]) == want
        host = rs.least_feasible_bound(cands[b][np.isfinite(cands[b])], lat[b], tau[b])
        assert bool(any_ok[b]) == (host is not None)
        if host is not None:
            assert float(cands[b][int(first[b])]) == float(cands[b][np.isfinite(cands[b])][host])


@pytest.mark.parametrize("V", [1e-4, 0.05])
def test_long_walks_over_bounds_equal_the_host(V):
    """With V small the cost terms outweigh the latency, so the walk over bounds goes on past the
    least feasible one and the matching changes on the way (the bisection over its steps)."""
    problems = instances(6, 4, "mean", 12, start=40)
    assert compare_solve(problems, "drift", V=V) > 0
    assert compare_solve(problems, "drift", V=V, zero_weights=True) > 0
    # the matching does change past the least feasible bound on some of these instances
    changed = 0
    for problem in problems:
        up = problem.uplink
        N = up.N
        tau, S, w = sub1_inputs(0, N, 1.0)
        try:
            a = rs.solve_resources(up, tau, S, w, V)
            b = rs.solve_resources(up, tau, S, w, 1e9)  # the least feasible bound's matching
        except InfeasibleError:
            continue
        changed += not np.array_equal(a.channel, b.channel)
    assert changed > 0


def test_choose_stage_counts_decisions_equal_the_host():
    """The prefix form of the choice of S against the host's walk over every bound: the same
    picks (random fronts with missing plans; half the weights 0, where the faster plan wins)."""
    fn = jax.jit(jax.vmap(dr.choose_stage_counts, in_axes=(0, 0, 0, None, None)))
    rng = np.random.default_rng(11)
    N, K, B = 20, 6, 20
    F = np.stack([random_fronts(rng, N, K, 50.0) for _ in range(B)])
    tau_up = rng.uniform(0, 100, (B, N))
    w = np.where(rng.uniform(size=(B, N)) < 0.5, 0.0, rng.uniform(0, 30, (B, N)))
    for V, coef in ((10.0, 0.005), (0.01, 1.0)):
        got = np.asarray(fn(jnp.asarray(F), jnp.asarray(tau_up), jnp.asarray(w), V, coef))
        for b in range(B):
            want = ds.choose_stage_counts(fronts_of(F[b]), tau_up[b], w[b], V, coef)
            np.testing.assert_array_equal(got[b], want)
