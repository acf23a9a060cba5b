"""Sub-1 (Alg. 2): the exact segment solver and the MILP against brute force."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collapipe_jax.errors import InfeasibleError
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
    written from the equations directly (independent of segments.m_terms)."""
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
                tau = sum(times) + (m - 1) * max(times)
                s = len(order) - 1
                best[s] = min(best[s], tau)
    return best


def front_values(plans):
    return [math.inf if p is None else p.tau_pipe_s for p in plans]


def assert_fronts_equal(got, want):
    for g, w in zip(got, want):
        if math.isinf(w):
            assert math.isinf(g)
        else:
            assert g == pytest.approx(w, rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(1, 4), L=st.integers(1, 6), m=st.integers(1, 8),
       variant=st.sampled_from(["paper", "consistent"]))
def test_exact_front_equals_brute_force_at_fixed_m(seed, K, L, m, variant):
    dev = random_cluster(seed, K, L, b=8, variant=variant)
    plans = sg.front_exact(dev, m)
    assert_fronts_equal(front_values(plans), brute_force(dev, [m]))
    for p in plans:
        if p is not None:
            assert sg.plan_violations(dev, m, p.delta, p.order) == []
            assert sum(p.delta) == L


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


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(2, 4), L=st.integers(2, 6), m=st.integers(1, 8))
def test_milp_equals_exact(seed, K, L, m):
    dev = random_cluster(seed, K, L, b=8)
    assert_fronts_equal(front_values(sg.front_milp(dev, m)), front_values(sg.front_exact(dev, m)))


def test_stationary_m_matches_the_continuous_minimum():
    """With δ and order fixed, τ_pipe(m) near m° is no worse than at any other integer m in a
    neighbourhood where the bottleneck does not change; and the rule's pick beats m ± 1."""
    dev = random_cluster(3, K=4, L=8, b=64, mem_teb=[8, 8, 8, 8], e_max=1e9)
    plan = sg.front_exact(dev, 8)[3]
    m_real = sg.stationary_m(dev, plan)
    m = sg.better_integer_neighbour(dev, plan, m_real)
    assert m is not None and 1 <= m <= 64
    taus = {mm: sg.pipeline_latency(dev, mm, plan.delta, plan.order) for mm in range(1, 65)}
    # the bottleneck at the plan's m stays the bottleneck around the optimum here; check locally
    for mm in (m - 1, m + 1):
        if 1 <= mm <= 64:
            assert taus[m] <= taus[mm] + 1e-12


def test_stationary_m_formula_by_hand():
    """Two equal devices, paper variant: α = δ b o/(ϕf), β = δ o'/(ϕf) + d for the first one."""
    K, L, b = 2, 2, 64
    dev = sg.ClusterDevices(f_hz=np.full(K, 1e9), phi=np.full(K, 10.0), p_k_w=np.full(K, 0.1),
                            r_dd_bps=np.full(K, 1e7), gamma_max_bytes=np.full(K, 1e12), E_max_j=np.full(K, 1e9),
                            L=L, b=b, o_fwd=1e9, o_bwd=2e9, z_bits=1e6, g_bits=1e6, gamma0_bytes=1.0, kappa=1e-28)
    plan = sg.SegmentPlan((1, 1), (0, 1), 8, 0.0)
    # device 0 (not last) is the bottleneck: α0 = α1 = 64e9/1e10 = 6.4, β0 = 0.2 + 0.2 = 0.4
    assert sg.stationary_m(dev, plan) == pytest.approx(math.sqrt(6.4 / 0.4))


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


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), K=st.integers(1, 4), L=st.integers(1, 6), m=st.integers(1, 8),
       variant=st.sampled_from(["paper", "consistent"]), method=st.sampled_from(["enum", "dp"]))
def test_both_exact_methods_equal_brute_force(seed, K, L, m, variant, method):
    dev = random_cluster(seed, K, L, b=8, variant=variant)
    plans = sg.front_exact(dev, m, method=method)
    assert_fronts_equal(front_values(plans), brute_force(dev, [m]))
    for p in plans:
        if p is not None:
            assert sg.plan_violations(dev, m, p.delta, p.order) == []
