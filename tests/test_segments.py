"""Sub-1 (Alg. 2): the exact segment solver and the MILP against brute force."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from collapipe_jax.errors import InfeasibleError, ValidationError
from collapipe_jax.scheduling import segments as sg


def random_cluster(seed, K, L, b, variant="paper", mem_teb=None, e_max=None):
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.1e9, 0.8e9, K)
    phi = rng.uniform(10, 24, K)
    p_k = rng.uniform(0.07, 0.1, K)
    r_dd = sg.d2d_rate(p_k, 1e-3, 5e-10, 5e5, 10 ** (-17.4) / 1000)
    gamma0 = 3e8
    # memory for between 1 and L TEBs per device (C7 binding on some devices)
    mem_teb = rng.integers(1, L + 1, K) if mem_teb is None else np.asarray(mem_teb)
    gmax = (mem_teb + 0.5) * gamma0
    # o_l large enough that compute and D2D times are comparable
    o = rng.uniform(1e8, 2e9)
    z = rng.uniform(1e5, 3e6)
    emax = rng.uniform(0.2, 5.0, K) if e_max is None else np.full(K, e_max)
    return sg.ClusterDevices(f_hz=f, phi=phi, p_k_w=p_k, r_dd_bps=r_dd, gamma_max_bytes=gmax, E_max_j=emax,
                             L=L, b=b, o_fwd=o, o_bwd=2 * o, z_bits=z, g_bits=z, gamma0_bytes=gamma0,
                             kappa=1e-28, variant=variant)


def brute_force(dev, ms):
    """Every composition of L over the devices × every order of the scheduled ones × every m,
    written from the equations directly (independent of segments.m_terms): Eq. 15 as printed
    with Eq. 16's 2m energy (paper), or the GPipe makespan with m micro-batches' energy
    (consistent)."""
    K, L = dev.K, dev.L
    best = [math.inf] * K
    for m in ms:
        bh = dev.b / m
        for comp in itertools.product(range(L + 1), repeat=K):
            if sum(comp) != L:
                continue
            sched = [k for k in range(K) if comp[k] > 0]
            for order in itertools.permutations(sched):
                times, ok = [], True
                for pos, k in enumerate(order):
                    last = pos == len(order) - 1
                    if dev.variant == "paper":
                        cyc = comp[k] * (bh * dev.o_fwd + dev.o_bwd) / dev.phi[k]
                        dd = (dev.z_bits + dev.g_bits) / dev.r_dd_bps[k]
                        t = cyc / dev.f_hz[k] + dd  # the last device's τ^dd is inside the max
                        e = 2 * m * (dev.kappa * dev.f_hz[k] ** 2 * cyc + dev.p_k_w[k] * dd)
                    else:
                        cyc = comp[k] * bh * (dev.o_fwd + dev.o_bwd) / dev.phi[k]
                        dd = bh * (dev.z_bits + dev.g_bits) / dev.r_dd_bps[k]
                        t = cyc / dev.f_hz[k] + (0.0 if last else dd)
                        e = m * (dev.kappa * dev.f_hz[k] ** 2 * cyc + (0.0 if last else dev.p_k_w[k] * dd))
                    if comp[k] * dev.gamma0_bytes > dev.gamma_max_bytes[k] or e > dev.E_max_j[k]:
                        ok = False
                        break
                    times.append(t)
                if not ok:
                    continue
                S = len(order)
                if dev.variant == "paper":
                    tau = (S + m - 1) * max(times) - (dev.z_bits + dev.g_bits) / dev.r_dd_bps[order[-1]]
                else:
                    tau = sum(times) + (m - 1) * max(times)
                best[S - 1] = min(best[S - 1], tau)
    return best


def front_values(plans):
    return [math.inf if p is None else p.tau_pipe_s for p in plans]


def assert_fronts_equal(got, want):
    for g, w in zip(got, want):
        if math.isinf(w):
            assert math.isinf(g)
        else:
            assert g == pytest.approx(w, rel=1e-10)


METHODS = {"paper": ["auto", "greedy", "enum", "dp"], "consistent": ["auto", "enum", "dp"]}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(1, 4), L=st.integers(1, 6), m=st.integers(1, 8),
       variant=st.sampled_from(["paper", "consistent"]), pick=st.integers(0, 3))
def test_every_exact_method_equals_brute_force_at_fixed_m(seed, K, L, m, variant, pick):
    dev = random_cluster(seed, K, L, b=8, variant=variant)
    method = METHODS[variant][pick % len(METHODS[variant])]
    plans = sg.front_exact(dev, m, method=method)
    assert_fronts_equal(front_values(plans), brute_force(dev, [m]))
    for s, p in enumerate(plans):
        if p is not None:
            assert sg.plan_violations(dev, m, p.delta, p.order) == []
            assert sum(p.delta) == L and p.S == s + 1


def test_greedy_is_for_the_paper_variant_only():
    with pytest.raises(ValidationError, match="method"):
        sg.front_exact(random_cluster(0, 3, 4, b=8, variant="consistent"), 2, method="greedy")
    with pytest.raises(ValidationError, match="method"):
        sg.front_exact(random_cluster(0, 3, 4, b=8), 2, method="bisect")


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 4), L=st.integers(2, 5),
       variant=st.sampled_from(["paper", "consistent"]))
def test_exhaustive_m_equals_brute_force_over_every_m(seed, K, L, variant):
    b = 6
    dev = random_cluster(seed, K, L, b=b, variant=variant)
    want = brute_force(dev, range(1, b + 1))
    if all(math.isinf(w) for w in want):
        with pytest.raises(InfeasibleError):
            sg.solve_segments(dev, m_rule="exhaustive")
        return
    front = sg.solve_segments(dev, m_rule="exhaustive")
    assert_fronts_equal(front_values(front.plans), want)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 4), L=st.integers(2, 6), m=st.integers(1, 8),
       variant=st.sampled_from(["paper", "consistent"]))
@example(seed=5227, K=4, L=3, m=4, variant="paper")  # within HiGHS's default MIP gap of the optimum
def test_milp_equals_brute_force(seed, K, L, m, variant):
    dev = random_cluster(seed, K, L, b=8, variant=variant)
    assert_fronts_equal(front_values(sg.front_milp(dev, m)), brute_force(dev, [m]))


def dominated_cluster(seed, K, L, b, variant):
    """Loose C7/C9'; device 0 slow and holding the most TEBs, so it is the bottleneck at every m."""
    rng = np.random.default_rng(seed)
    f = np.r_[0.1e9, rng.uniform(0.6e9, 0.8e9, K - 1)]
    p_k = rng.uniform(0.07, 0.1, K)
    r_dd = sg.d2d_rate(p_k, 1e-3, 5e-10, 5e5, 10 ** (-17.4) / 1000)
    o = rng.uniform(1e8, 2e9)
    z = rng.uniform(1e5, 3e6)
    dev = sg.ClusterDevices(f_hz=f, phi=rng.uniform(10, 24, K), p_k_w=p_k, r_dd_bps=r_dd,
                            gamma_max_bytes=np.full(K, 1e12), E_max_j=np.full(K, 1e12), L=L, b=b, o_fwd=o,
                            o_bwd=rng.uniform(0.5, 3) * o, z_bits=z, g_bits=z, gamma0_bytes=1.0, kappa=1e-28,
                            variant=variant)
    delta = [L - (K - 1)] + [1] * (K - 1)
    order = tuple(int(k) for k in rng.permutation(K))
    return dev, sg.SegmentPlan(tuple(delta), order, 1, 0.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(1, 5), b=st.integers(1, 96),
       variant=st.sampled_from(["paper", "consistent"]))
def test_stationary_rule_picks_the_best_integer_m_when_the_bottleneck_is_fixed(seed, K, b, variant):
    """Eq. 38 for each variant: with δ, the order and the bottleneck device fixed, τ(m) is convex
    in m, so the better integer neighbour of m° is the best m in [1, b] (consistent: m = b)."""
    dev, plan = dominated_cluster(seed, K, L=K + 4, b=b, variant=variant)
    tops = {int(np.argmax(sg.stage_times(dev, m, plan.delta, plan.order))) for m in (1, b)}
    assume(tops == {0})  # the bottleneck is the same at both ends, hence at every m in between
    taus = [sg.pipeline_latency(dev, m, plan.delta, plan.order) for m in range(1, b + 1)]
    best = int(np.argmin(taus)) + 1
    for at in (1, b, best):  # the rule does not depend on the m the plan was solved at
        m_real = sg.stationary_m(dev, dataclasses.replace(plan, m=at))
        if variant == "consistent":
            assert m_real == b
        got = sg.better_integer_neighbour(dev, plan, m_real)
        assert taus[got - 1] == pytest.approx(taus[best - 1], rel=1e-12)


def test_stationary_m_formula_by_hand():
    """Three devices, paper variant (Eq. 15/38): τ(m) = (S + m − 1)(α_*/m + β_*) − d_ℓ with
    α = δ b o_l/(ϕf), β = δ o'_l/(ϕf) + (z + g)/r^dd for the bottleneck, so m° = sqrt((S − 1) α_*/β_*)."""
    K, b = 3, 64
    dev = sg.ClusterDevices(f_hz=np.array([1e9, 2e9, 1e9]), phi=np.full(K, 10.0), p_k_w=np.full(K, 0.1),
                            r_dd_bps=np.array([1e7, 1e7, 2e7]), gamma_max_bytes=np.full(K, 1e12),
                            E_max_j=np.full(K, 1e9), L=5, b=b, o_fwd=1e9, o_bwd=2e9, z_bits=1e6, g_bits=1e6,
                            gamma0_bytes=1.0, kappa=1e-28)
    plan = sg.SegmentPlan((1, 2, 2), (0, 1, 2), 8, 0.0)
    # u_k = α_k/m + β_k: device 0 α = 6.4, β = 0.2 + 0.2; device 1 α = 6.4, β = 0.2 + 0.2;
    # device 2 α = 12.8, β = 0.4 + 0.1: device 2 (the last) is the bottleneck at m = 8
    assert sg.stationary_m(dev, plan) == pytest.approx(math.sqrt(2 * 12.8 / 0.5))
    # consistent: every term scales with b̂ = b/m, τ falls with m, the rule returns b
    consistent = dataclasses.replace(dev, variant="consistent", _terms={})
    assert sg.stationary_m(consistent, plan) == b


def test_alg2_front_is_no_worse_than_the_exact_front_at_its_own_m():
    dev = random_cluster(7, K=5, L=10, b=64)
    try:
        front = sg.solve_segments(dev)
    except InfeasibleError:
        pytest.skip("random instance infeasible")
    for s, p in enumerate(front.plans):
        if p is None:
            continue
        at_m = sg.front_exact(dev, p.m)[s]
        assert p.tau_pipe_s == pytest.approx(at_m.tau_pipe_s, rel=1e-12)


def test_memory_infeasible_is_reported_as_c7():
    dev = random_cluster(1, K=3, L=12, b=8, mem_teb=[2, 2, 2])
    with pytest.raises(InfeasibleError) as err:
        sg.solve_segments(dev, cluster=2)
    assert err.value.report["constraint"] == "C7" and err.value.report["cluster"] == 2


def test_energy_infeasible_is_reported_as_c9():
    dev = random_cluster(1, K=3, L=6, b=8, mem_teb=[6, 6, 6], e_max=1e-9)
    with pytest.raises(InfeasibleError) as err:
        sg.solve_segments(dev, cluster=0)
    assert err.value.report["constraint"] == "C9'"


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(5, 7), L=st.integers(6, 14), m=st.integers(1, 20),
       variant=st.sampled_from(["paper", "consistent"]))
def test_exact_methods_agree_beyond_brute_force_sizes(seed, K, L, m, variant):
    dev = random_cluster(seed, K, L, b=32, variant=variant)
    want = front_values(sg.front_exact(dev, m, method="dp"))
    for method in METHODS[variant][1:]:
        assert_fronts_equal(front_values(sg.front_exact(dev, m, method=method)), want)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(8, 12), L=st.integers(12, 20), m=st.integers(1, 20))
def test_paper_greedy_equals_dp_at_larger_k(seed, K, L, m):
    dev = random_cluster(seed, K, L, b=32, variant="paper")
    assert_fronts_equal(front_values(sg.front_greedy(dev, m)), front_values(sg.front_dp(dev, m)))


@pytest.mark.parametrize("variant", ["paper", "consistent"])
def test_iterations_scale_latency_and_tighten_the_energy_budget(variant):
    """E pipeline iterations per round: the front under budget E_max with E = 3 is the front
    of one iteration under E_max / 3, with every τ_pipe three times as long."""
    base = random_cluster(11, 4, 6, 8, variant)
    three = dataclasses.replace(base, iterations=3.0, _terms={})
    third = dataclasses.replace(base, E_max_j=base.E_max_j / 3.0, _terms={})
    for m in (1, 2, 4):
        a, b = sg.front_exact(three, m), sg.front_exact(third, m)
        assert [p is None for p in a] == [p is None for p in b]
        for pa, pb in zip(a, b):
            if pa is not None:
                assert (pa.delta, pa.order) == (pb.delta, pb.order)
                assert pa.tau_pipe_s == pytest.approx(3.0 * pb.tau_pipe_s, rel=1e-12)
