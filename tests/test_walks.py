"""The scalable forms of the walks over candidate bottlenecks against the walks they replaced
(tests/walk_reference.py) and brute force: Sub-2's threshold search (resources.solve_resources)
and Sub-1's choice of S given Sub-2 (dssra.choose_stage_counts)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collapipe_jax.errors import InfeasibleError
from collapipe_jax.scheduling import dssra as ds
from collapipe_jax.scheduling import resources as rs
from collapipe_jax.scheduling.segments import SegmentFront, SegmentPlan
from walk_reference import choose_stage_counts_walk, solve_resources_walk


def uplink(rng, N, J, e_lo=2.0, e_hi=10.0):
    """Random uplink whose energy budgets forbid some pairs (C11') when e_lo is small."""
    bits = rng.uniform(2e6, 4e7)
    return rs.Uplink(
        h_n=rng.uniform(0.5, 1.5, N), I_i_w=rng.uniform(0.02, 0.1, J), B_U_hz=rng.uniform(0.2e6, 0.8e6, J),
        P_max_n_w=rng.uniform(0.2, 0.8, N), E_max_n_j=rng.uniform(e_lo, e_hi, N), N0_w_per_hz=10 ** (-17.4) / 1000,
        bits=bits, theta_bits=0.9 * bits, C_noise=0.01, beta=1.0, eta=0.1, phi_seg=1.0)


def instance(seed, N, J, zeros=0.3, e_lo=2.0):
    rng = np.random.default_rng(seed)
    up = uplink(rng, N, J, e_lo=e_lo)
    tau_pipe = rng.uniform(1, 30, N)
    S = rng.integers(1, 6, N)
    Y = np.where(rng.uniform(size=N) < zeros, 0.0, rng.uniform(0, 20, N))
    return up, tau_pipe, S, Y


def solve_both(up, tau_pipe, S, Y, V, lyapunov):
    p_ub = rs.power_upper_bounds(up)
    try:
        old = solve_resources_walk(up, tau_pipe, S, Y, V, lyapunov, p_ub=p_ub)
    except InfeasibleError:
        with pytest.raises(InfeasibleError):
            rs.solve_resources(up, tau_pipe, S, Y, V, lyapunov, p_ub=p_ub)
        return None, None
    return rs.solve_resources(up, tau_pipe, S, Y, V, lyapunov, p_ub=p_ub), old


def assert_same(new, old, paper=False):
    """Same channels, objective and powers. ``paper``: the powers come from a conic solve
    (cvxpy) whose first solve and re-solves differ (objective ~1e-10, powers ~1e-5 at the flat
    optimum), so there the channels and the objective (to 1e-8) are compared."""
    np.testing.assert_array_equal(new.channel, old.channel)
    assert new.objective == pytest.approx(old.objective, rel=1e-8 if paper else 1e-12, abs=0.0)
    if not paper:
        np.testing.assert_allclose(new.p_n_w, old.p_n_w, rtol=1e-12)
        np.testing.assert_allclose(new.tau_up_s, old.tau_up_s, rtol=1e-12)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 100_000), N=st.integers(1, 7), J=st.integers(1, 6),
       V=st.sampled_from([0.0, 1e-3, 0.1, 1.0, 10.0, 1000.0]), zeros=st.sampled_from([0.0, 0.5, 1.0]),
       e_lo=st.sampled_from([0.05, 2.0]))
def test_threshold_search_equals_the_walk_drift(seed, N, J, V, zeros, e_lo):
    """Small V makes the walk long (many steps of the matching before the stop); all-zero Y
    leaves only the tie-break to decide; a small E_max forbids pairs (and may leave none)."""
    new, old = solve_both(*instance(seed, N, J, zeros, e_lo), V, "drift")
    if old is not None:
        assert_same(new, old)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 100_000), N=st.integers(1, 4), J=st.integers(1, 4),
       V=st.sampled_from([0.01, 10.0, 100.0]))
def test_threshold_search_equals_the_walk_paper(seed, N, J, V):
    new, old = solve_both(*instance(seed, N, J), V, "paper")
    if old is not None:
        assert_same(new, old, paper=True)


def test_the_walk_takes_several_steps_on_these_instances():
    """The equivalence above is only a test of the step search if the matching under T does
    change between the least feasible bound and the stop: count the instances where it does."""
    changed = 0
    for seed in range(20):
        up, tau_pipe, S, Y = instance(seed, 6, 4, zeros=0.0)
        p_ub = rs.power_upper_bounds(up)
        first = solve_resources_walk(up, tau_pipe, S, Y, 1e-3, p_ub=p_ub)
        least = solve_resources_walk(up, tau_pipe, S, Y, 1e6, p_ub=p_ub)  # V huge: the least bound's matching
        changed += not np.array_equal(first.channel, least.channel)
    assert changed >= 5


def brute_feasible(lat, tau_pipe, T):
    N, J = lat.shape
    cols = list(range(J)) + [-1] * max(0, N - J)
    for perm in set(itertools.permutations(cols, N)):
        if all((lat[n, c] <= T) if c >= 0 else (tau_pipe[n] <= T) for n, c in enumerate(perm)):
            return True
    return False


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000), N=st.integers(1, 5), J=st.integers(1, 5))
def test_feasibility_test_equals_brute_force(seed, N, J):
    rng = np.random.default_rng(seed)
    tau_pipe = rng.uniform(0, 1, N)
    lat = tau_pipe[:, None] + rng.uniform(0, 1, (N, J))
    lat[rng.uniform(size=(N, J)) < 0.4] = np.inf
    candidates = np.unique(np.concatenate([lat[np.isfinite(lat)], tau_pipe]))
    for T in candidates:
        assert rs.can_all_finish(lat, tau_pipe, float(T)) == brute_feasible(lat, tau_pipe, T)
    first = rs.least_feasible_bound(candidates, lat, tau_pipe)
    want = next((k for k, T in enumerate(candidates) if brute_feasible(lat, tau_pipe, T)), None)
    assert first == want


@pytest.mark.parametrize("N,J,seeds", [(16, 8, 3)])
def test_threshold_search_equals_the_walk_at_16(N, J, seeds):
    for seed in range(seeds):
        for V in (0.01, 10.0):
            new, old = solve_both(*instance(seed, N, J, zeros=0.2), V, "drift")
            assert_same(new, old)


@pytest.mark.slow
@pytest.mark.parametrize("N,J,seeds", [(64, 32, 3), (128, 64, 2)])
def test_threshold_search_equals_the_walk_large(N, J, seeds):
    for seed in range(seeds):
        for V in (0.01, 10.0):
            new, old = solve_both(*instance(seed, N, J, zeros=0.2), V, "drift")
            assert_same(new, old)


def random_fronts(rng, N, K):
    """Fronts with some plans missing (never all of a cluster's)."""
    fronts = []
    for _ in range(N):
        taus = np.sort(rng.uniform(1, 50, K))[::-1]
        plans = tuple(SegmentPlan((), (0,), 1, float(taus[s])) if rng.uniform() > 0.3 else None for s in range(K))
        if all(p is None for p in plans):
            plans = (SegmentPlan((), (0,), 1, float(taus[0])),) + plans[1:]
        fronts.append(SegmentFront(plans, (1,)))
    return fronts


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 100_000), N=st.integers(1, 30), K=st.integers(1, 8),
       V=st.sampled_from([0.0, 0.01, 1.0, 10.0]), zeros=st.sampled_from([0.0, 0.5, 1.0]))
def test_stage_count_prefix_form_equals_the_walk(seed, N, K, V, zeros):
    """The same picks as the walk over every bound (zero weights: the faster plan decides)."""
    rng = np.random.default_rng(seed)
    fronts = random_fronts(rng, N, K)
    tau_up = rng.uniform(0, 5, N)
    w = np.where(rng.uniform(size=N) < zeros, 0.0, rng.uniform(0, 50, N))
    assert ds.choose_stage_counts(fronts, tau_up, w, V, 0.005) == choose_stage_counts_walk(fronts, tau_up, w, V, 0.005)
