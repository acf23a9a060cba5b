"""Sub-2 (Alg. 3): channel matching, power bounds and power control against brute force."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collapipe_jax.errors import InfeasibleError
from collapipe_jax.scheduling import resources as rs


def random_uplink(seed, N, J, bits=None, e_max=10.0, fading="mean", theta_share=0.9):
    """`bits` = θ^enc + z^enc (what τ^up carries), of which θ^enc = theta_share · bits (Eq. 12)."""
    rng = np.random.default_rng(seed)
    bits = rng.uniform(2e6, 4e7) if bits is None else bits
    return rs.Uplink(
        h_n=rng.uniform(0.97, 0.98, N), I_i_w=rng.uniform(0.06, 0.08, J), B_U_hz=rng.uniform(0.4e6, 0.6e6, J),
        P_max_n_w=np.full(N, 0.5), E_max_n_j=np.full(N, e_max), N0_w_per_hz=10 ** (-17.4) / 1000,
        bits=bits, theta_bits=theta_share * bits, C_noise=0.01, beta=1.0, eta=0.1, phi_seg=1.0, fading=fading)


def test_upload_energy_charges_the_parameters_only():
    """Eq. 12 as printed: E^com = p θ^enc / r(p), while τ^up = (θ^enc + z^enc) / r(p) (Eq. 11)."""
    up = random_uplink(2, 2, 2, bits=5e6, theta_share=0.6)
    p, n, j = 0.3, 1, 0
    rate = up.B_U_hz[j] * math.log2(1 + p * up.h_n[n] / (up.I_i_w[j] + up.B_U_hz[j] * up.N0_w_per_hz))
    assert float(rs.upload_delay(up, p, n, j)) == pytest.approx(5e6 / rate, rel=1e-12)
    assert float(rs.upload_energy(up, p, n, j)) == pytest.approx(p * 3e6 / rate, rel=1e-12)


def brute_matching(cost, cost_none):
    N, J = cost.shape
    cols = list(range(J)) + [-1 - i for i in range(max(0, N - J))]
    best = math.inf
    for perm in itertools.permutations(cols, N):
        total = sum(cost[n, c] if c >= 0 else cost_none[n] for n, c in enumerate(perm))
        best = min(best, total)
    return best


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), N=st.integers(1, 4), J=st.integers(1, 4))
def test_hungarian_with_virtual_channels_equals_brute_force(seed, N, J):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0, 10, (N, J))
    cost[rng.uniform(size=(N, J)) < 0.25] = np.inf  # forbidden pairs (C11')
    cost_none = rng.uniform(0, 10, N)
    want = brute_matching(cost, cost_none)
    got = rs.match_channels(cost, cost_none)
    if math.isinf(want):
        assert got is None
        return
    channel, total = got
    assert total == pytest.approx(want, rel=1e-12)
    used = channel[channel >= 0]
    assert len(set(used.tolist())) == len(used) == min(N, J)  # C6, min(N, J) uploads
    assert total == pytest.approx(sum(cost[n, c] if c >= 0 else cost_none[n] for n, c in enumerate(channel)))


def matchings(N, J):
    """Every channel vector with exactly min(N, J) uploads and no channel twice (−1: none)."""
    cols = list(range(J)) + [-1] * max(0, N - J)
    return sorted(set(itertools.permutations(cols, N)))


def least_tie_among_best(cost, cost_none, tie, tie_none):
    """Brute force of the tie-break: the least Σ tie among the matchings of least Σ cost
    (equal to 1e-12 relative); None when that is itself a tie or no finite matching exists."""
    rows = []
    for perm in matchings(*cost.shape):
        c = sum(cost[n, j] if j >= 0 else cost_none[n] for n, j in enumerate(perm))
        t = sum(tie[n, j] if j >= 0 else tie_none[n] for n, j in enumerate(perm))
        rows.append((c, t, perm))
    best = min(r[0] for r in rows)
    if math.isinf(best):
        return None
    tied = sorted((t, perm) for c, t, perm in rows if c <= best + 1e-12 * abs(best))
    if len(tied) > 1 and tied[1][0] <= tied[0][0] * (1 + 1e-12):
        return None
    return np.array(tied[0][1])


def scaled_ties(cost, cost_none, tie, tie_none):
    """Sub-2's scaling of the tie term: δ = tie_break_weight(largest finite cost, largest tie)."""
    finite = np.concatenate([cost[np.isfinite(cost)], cost_none[np.isfinite(cost_none)]])
    delta = rs.tie_break_weight(float(np.max(finite, initial=0.0)), float(max(tie.max(), tie_none.max())))
    return delta * tie, delta * tie_none


def test_ties_go_to_the_least_tie_cost_by_hand():
    # every cost 0 (Y = 0): (0→0, 1→1) has tie cost 1 + 5, (0→1, 1→0) has 2 + 3
    tie = np.array([[1.0, 2.0], [3.0, 5.0]])
    channel, total = rs.match_channels(np.zeros((2, 2)), np.zeros(2), *scaled_ties(np.zeros((2, 2)), np.zeros(2), tie, np.ones(2)))
    assert channel.tolist() == [1, 0] and total == 0.0
    # a real cost difference wins over the tie term: cluster 1 prefers channel 1 by 1e-6 of the
    # largest cost (1), far above TIE_RTOL
    cost = np.array([[1.0, 1.0], [1.0 + 1e-6, 1.0]])
    channel, total = rs.match_channels(cost, np.zeros(2), *scaled_ties(cost, np.zeros(2), tie, np.ones(2)))
    assert channel.tolist() == [0, 1] and total == 2.0
    # three clusters, one channel: the upload that lowers the tie cost most (2 → 0.5) wins
    channel, _ = rs.match_channels(np.zeros((3, 1)), np.zeros(3), np.array([[1.5], [0.5], [1.0]]), np.full(3, 2.0))
    assert channel.tolist() == [-1, 0, -1]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), N=st.integers(1, 4), J=st.integers(1, 4))
def test_ties_go_to_the_least_tie_cost(seed, N, J):
    """Rows of weight 0 (Y_n = 0) make ties; the matching is the brute-force least Σ tie among
    the least Σ cost."""
    rng = np.random.default_rng(seed)
    weight = rng.uniform(0, 10, N) * (rng.uniform(size=N) < 0.5)
    cost = weight[:, None] * rng.uniform(0, 1, (N, J))
    cost[rng.uniform(size=(N, J)) < 0.2] = np.inf
    cost_none = weight * rng.uniform(0, 1, N)
    tie, tie_none = rng.uniform(0.1, 1, (N, J)), rng.uniform(0.5, 1, N)
    want = least_tie_among_best(cost, cost_none, tie, tie_none)
    got = rs.match_channels(cost, cost_none, *scaled_ties(cost, cost_none, tie, tie_none))
    if want is None:
        return
    channel, total = got
    np.testing.assert_array_equal(channel, want)
    assert total == pytest.approx(brute_matching(cost, cost_none), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("lyapunov", ["drift", "paper"])
@pytest.mark.parametrize("N,J", [(3, 4), (4, 2)])
def test_with_zero_queues_sub2_picks_the_least_noise_of_the_fastest_matchings(lyapunov, N, J):
    """Y = 0: the objective is V τ alone and every matching meeting the least bottleneck T* is
    optimal; Sub-2 returns the one with the least Σ ε_n (Eq. 25) at the powers of T* (drift: p_ub;
    paper: the least power meeting T*), by brute force over the matchings."""
    checked = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        up = random_uplink(seed, N, J)
        tau_pipe = rng.uniform(1, 30, N)
        p_ub = rs.power_upper_bounds(up)
        n = np.arange(N)
        rows = []
        for perm in matchings(N, J):
            ch = np.array(perm)
            j = np.clip(ch, 0, None)
            lat = tau_pipe + np.where(ch >= 0, rs.upload_delay(up, p_ub[n, j], n, j), 0.0)
            rows.append((float(np.max(lat)), ch))
        T_star = min(r[0] for r in rows)
        noise = []
        for T, ch in rows:
            if T != T_star:
                continue
            j = np.clip(ch, 0, None)
            p = p_ub[n, j] if lyapunov == "drift" else rs.power_for_delay(up, T_star - tau_pipe, n, j, p_cap=p_ub[n, j])
            noise.append((float(np.sum(rs.noise_variance(up, np.where(ch >= 0, p, 0.0), n, ch))), ch.tolist()))
        noise.sort()
        got = rs.solve_resources(up, tau_pipe, np.ones(N), np.zeros(N), 10.0, lyapunov, p_ub=p_ub)
        assert got.objective == pytest.approx(10.0 * T_star, rel=1e-9)
        assert got.channel.tolist() == noise[0][1], noise[:3]
        checked += len(noise) > 1
    assert checked >= 3  # draws with a tie to break


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), fading=st.sampled_from(["mean", "rayleigh"]))
def test_power_upper_bound_is_the_energy_boundary(seed, fading):
    up = random_uplink(seed, 3, 3, e_max=np.random.default_rng(seed).uniform(0.5, 10), fading=fading)
    p_ub = rs.power_upper_bounds(up)
    for n in range(3):
        for j in range(3):
            e_min = float(rs.min_upload_energy(up, n, j))
            if np.isnan(p_ub[n, j]):
                assert e_min >= up.E_max_n_j[n]
                continue
            assert 0 < p_ub[n, j] <= up.P_max_n_w[n]
            budget = (1 - rs.ENERGY_MARGIN) * up.E_max_n_j[n]  # guard band for the float32 model
            assert rs.upload_energy(up, p_ub[n, j], n, j) <= budget
            if p_ub[n, j] < up.P_max_n_w[n]:
                assert rs.upload_energy(up, p_ub[n, j] * (1 + 1e-6), n, j) > budget
            # energy increases with p; its limit at 0 is the closed form
            assert rs.upload_energy(up, 1e-9, n, j) == pytest.approx(e_min, rel=1e-6)


def test_power_for_delay_inverts_the_delay():
    for fading in ("mean", "rayleigh"):
        up = random_uplink(1, 2, 2, fading=fading)
        for p in (0.01, 0.2, 0.5):
            tau = float(rs.upload_delay(up, p, 1, 0))
            assert float(rs.power_for_delay(up, tau, 1, 0, p_cap=1.0)) == pytest.approx(p, rel=1e-6)


def exhaustive_sub2(up, tau_pipe, S, Y, V, lyapunov, grid=400):
    """All matchings × a fine power grid per uploading cluster (grid over (0, p_ub])."""
    p_ub = rs.power_upper_bounds(up)
    N, J = up.N, up.J
    cols = list(range(J)) + [-1] * max(0, N - J)
    best = math.inf
    for perm in set(itertools.permutations(cols, N)):
        if any(c >= 0 and np.isnan(p_ub[n, c]) for n, c in enumerate(perm)):
            continue
        grids = [np.linspace(p_ub[n, c] / grid, p_ub[n, c], grid) if c >= 0 else np.zeros(1)
                 for n, c in enumerate(perm)]
        mesh = np.meshgrid(*grids, indexing="ij")
        total_lat = np.zeros(mesh[0].shape)
        extra = np.zeros(mesh[0].shape)
        for n, c in enumerate(perm):
            p = mesh[n]
            if c >= 0:
                lat = tau_pipe[n] + rs.upload_delay(up, p, n, c)
                if lyapunov == "drift":
                    extra += Y[n] * 0.5 * up.C_noise / (p * up.h_n[n] + up.I_i_w[c])
                else:
                    extra += Y[n] * p
            else:
                lat = np.full(p.shape, tau_pipe[n])
                if lyapunov == "drift":
                    extra += Y[n] * 0.5 * up.C_noise / np.mean(up.I_i_w)
            total_lat = np.maximum(total_lat, lat)
        best = min(best, float(np.min(V * total_lat + extra)))
    return best


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), N=st.integers(1, 3), J=st.integers(1, 3),
       lyapunov=st.sampled_from(["drift", "paper"]), V=st.sampled_from([0.01, 10.0, 100.0]))
def test_sub2_within_half_percent_of_exhaustive_grid(seed, N, J, lyapunov, V):
    rng = np.random.default_rng(seed)
    up = random_uplink(seed, N, J)
    tau_pipe = rng.uniform(1, 30, N)
    S = rng.integers(1, 6, N)
    Y = rng.uniform(0, 20, N)
    got = rs.solve_resources(up, tau_pipe, S, Y, V, lyapunov)
    want = exhaustive_sub2(up, tau_pipe, S, Y, V, lyapunov, grid=400 if N <= 2 else 60)
    # the grid is itself only an approximation of the continuum: got may beat it slightly
    assert got.objective <= want * 1.005 + 1e-12
    # the returned decision's objective is what it claims, and it is feasible
    p_ub = rs.power_upper_bounds(up)
    for n in range(N):
        c = got.channel[n]
        if c >= 0:
            assert 0 < got.p_n_w[n] <= p_ub[n, c] * (1 + 1e-12)
            assert rs.upload_energy(up, got.p_n_w[n], n, c) <= up.E_max_n_j[n] * (1 + 1e-9)
    assert (got.channel >= 0).sum() == min(N, J)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), N=st.integers(1, 3), V=st.sampled_from([0.01, 1.0, 10.0, 100.0]),
       use_cvxpy=st.booleans())
def test_paper_power_control_within_half_percent_of_a_fine_1d_search(seed, N, V, use_cvxpy):
    """With the matching fixed, the paper objective depends on one number, the bottleneck T."""
    rng = np.random.default_rng(seed)
    up = random_uplink(seed, N, N)
    tau_pipe = rng.uniform(1, 30, N)
    Y = rng.uniform(0, 20, N)
    channel = rng.permutation(N)
    p_ub = rs.power_upper_bounds(up)
    got = rs.power_control_paper(up, tau_pipe, channel, Y, V, p_ub, use_cvxpy=use_cvxpy)
    T_lo = max(tau_pipe[n] + float(rs.upload_delay(up, p_ub[n, channel[n]], n, channel[n])) for n in range(N))
    grid = T_lo + np.concatenate([[0.0], np.geomspace(1e-6, 1e4, 20001)])
    # V T + Σ Y_n p_n(T), p_n(T) the least power meeting τ_pipe_n + τ^up_n ≤ T (vectorised over T)
    values = V * grid + sum(Y[n] * rs.power_for_delay(up, grid - tau_pipe[n], n, channel[n]) for n in range(N))
    want = float(np.min(values))
    assert want == pytest.approx(rs.paper_power_objective(up, tau_pipe, channel, Y, V, grid[np.argmin(values)]))
    assert got.objective <= want * 1.005
    assert not got.fallback


def test_drift_power_is_the_upper_bound():
    """Both drift terms fall with p, so every uploading cluster transmits at p_ub."""
    up = random_uplink(3, 3, 4)
    got = rs.solve_resources(up, np.array([5.0, 9.0, 2.0]), np.array([3, 3, 3]), np.array([1.0, 5.0, 0.0]), 10.0)
    p_ub = rs.power_upper_bounds(up)
    for n in range(3):
        assert got.p_n_w[n] == p_ub[n, got.channel[n]]


def test_upload_energy_infeasible_is_reported_as_c11():
    # paper-bert's model-derived θ^enc ≈ 2.7 Gbit needs ≈ 270 J at any power > 0, E_max = 10 J
    up = random_uplink(0, 3, 4, bits=2.72e9 + 1.0e8)
    with pytest.raises(InfeasibleError) as err:
        rs.solve_resources(up, np.ones(3), np.ones(3), np.ones(3), 10.0)
    report = err.value.report
    assert report["constraint"] == "C11'" and report["clusters"] == [0, 1, 2]
    assert "C11'" in str(err.value)


def test_failed_convex_solve_falls_back_to_bracketing_and_says_so(monkeypatch):
    up = random_uplink(5, 2, 2)
    tau_pipe, Y, channel = np.array([3.0, 8.0]), np.array([4.0, 9.0]), np.array([1, 0])
    p_ub = rs.power_upper_bounds(up)
    reference = rs.power_control_paper(up, tau_pipe, channel, Y, 10.0, p_ub, use_cvxpy=True)

    def broken(*args, **kwargs):
        raise RuntimeError("solver failure")

    monkeypatch.setattr(rs, "_power_cvxpy", broken)
    got = rs.power_control_paper(up, tau_pipe, channel, Y, 10.0, p_ub, use_cvxpy=True)
    assert got.fallback and not reference.fallback
    assert got.objective == pytest.approx(reference.objective, rel=1e-6)
    assert np.all(np.isfinite(got.p_n_w))
