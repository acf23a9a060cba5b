"""The system model against plain-Python arithmetic on a 2-cluster, 3-device instance."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from system_by_hand import pipeline_by_hand

from collapipe_jax.scenario import Scenario, draw_state, make_decision
from collapipe_jax.system import evaluate, round_latency_of_power
from collapipe_jax.system import latency as lat

F = [[4e8, 2e8, 6e8], [1e8, 8e8, 3e8]]
PHI = [[10.0, 20.0, 16.0], [24.0, 12.0, 18.0]]
PK = [[0.08, 0.07, 0.1], [0.09, 0.1, 0.075]]
H = [0.975, 0.98]
I_CH = [0.06, 0.08]
B_CH = [0.4e6, 0.6e6]


def instance():
    scenario = Scenario(N=2, K=3, J=2, L=5, b=8, z_bits=2e5, g_bits=1.5e5, z_enc_bits=1e6,
                        theta_enc_bits=3e6, gamma0_bytes=1e8, o_fwd_flops=3e6, o_bwd_flops=5e6)
    state = draw_state(scenario, jax.random.PRNGKey(0)).replace(
        f_hz=jnp.array(F), phi_flops_per_cycle=jnp.array(PHI), p_k_w=jnp.array(PK),
        h_n=jnp.array(H), I_i_w=jnp.array(I_CH), B_U_hz=jnp.array(B_CH))
    # cluster 0: devices 2 → 0 (device 1 idle), channel 1; cluster 1: 0 → 1 → 2, channel 0
    decision = make_decision(scenario, [[2, 0, 3], [1, 3, 1]], [2, 4], [1, 0], [0.3, 0.45],
                             orders=[[2, 0], [0, 1, 2]])
    return scenario, state, decision


def by_hand(scenario, decision_lists, variant):
    s = scenario
    delta, orders, m, channel, p = decision_lists
    n0 = 10 ** (-17.4) / 1000
    inp = dict(f_hz=F, phi_flops_per_cycle=PHI, p_k_w=PK, h_dd=s.h_dd, I_dd_w=s.I_dd_w, B_dd_hz=s.B_dd_hz,
               N0_w_per_hz=n0, o_fwd_flops=s.o_fwd_flops, o_bwd_flops=s.o_bwd_flops, z_bits=s.z_bits,
               g_bits=s.g_bits, kappa=s.kappa, b=s.b, delta=delta)
    pipe = pipeline_by_hand(inp, orders, m, variant)
    out = {"tau_pipe": [t for t, _ in pipe], "E_sch": [e for _, e in pipe], "tau_up": [], "E_com": [], "Gamma": []}
    for n in range(2):
        j = channel[n]
        r_up = B_CH[j] * math.log2(1 + p[n] * H[n] / (I_CH[j] + B_CH[j] * n0))
        t_up = (s.theta_enc_bits + s.z_enc_bits) / r_up
        out["tau_up"].append(t_up)
        out["E_com"].append(p[n] * s.theta_enc_bits / r_up)  # Eq. 12: the parameters only
        eps = s.C_noise / (p[n] * H[n] + I_CH[j])
        n_stages = sum(1 for d in delta[n] if d > 0)
        out["Gamma"].append(0.5 * s.beta * s.eta**2 * s.phi_seg * n_stages + 0.5 * s.beta * eps)
    out["tau_round"] = max(a + b for a, b in zip(out["tau_pipe"], out["tau_up"]))
    return out


@pytest.mark.parametrize("variant", ["paper", "consistent"])
def test_equations_match_hand_computation(variant):
    scenario, state, decision = instance()
    expected = by_hand(scenario, ([[2, 0, 3], [1, 3, 1]], [[2, 0], [0, 1, 2]], [2, 4], [1, 0], [0.3, 0.45]),
                       variant)
    got = evaluate(state, decision, variant)
    np.testing.assert_allclose(got.tau_pipe_s, expected["tau_pipe"], rtol=1e-5)
    np.testing.assert_allclose(got.tau_up_s, expected["tau_up"], rtol=1e-5)
    np.testing.assert_allclose(got.E_com_j, expected["E_com"], rtol=1e-5)
    np.testing.assert_allclose(got.E_sch_j, expected["E_sch"], rtol=1e-5)
    np.testing.assert_allclose(got.E_pipe_j, np.sum(expected["E_sch"], axis=1), rtol=1e-5)
    np.testing.assert_allclose(got.Gamma, expected["Gamma"], rtol=1e-5)
    np.testing.assert_allclose(got.tau_round_s, expected["tau_round"], rtol=1e-5)


def test_variants_differ_and_where_the_last_device_is_charged():
    scenario, state, decision = instance()
    paper, consistent = evaluate(state, decision, "paper"), evaluate(state, decision, "consistent")
    assert not np.allclose(paper.tau_pipe_s, consistent.tau_pipe_s)
    # the last device of each order (device 0 of cluster 0, device 2 of cluster 1) sends nothing
    # under consistent; under paper its τ^dd is inside Eq. 15's max, then subtracted once
    assert float(consistent.tau_dd_s[0, 0]) == 0.0 and float(consistent.tau_dd_s[1, 2]) == 0.0
    assert float(paper.tau_dd_s[0, 0]) > 0.0 and float(paper.tau_dd_s[1, 2]) > 0.0
    for metrics in (paper, consistent):  # the idle device
        assert float(metrics.tau_dd_s[0, 1]) == 0.0 and float(metrics.tau_cmp_s[0, 1]) == 0.0
        assert float(metrics.E_sch_j[0, 1]) == 0.0
    assert float(paper.tau_dd_s[0, 2]) > 0.0
    # reversing the order moves the special D2D term to another device: the latency changes
    flipped = make_decision(scenario, [[2, 0, 3], [1, 3, 1]], [2, 4], [1, 0], [0.3, 0.45],
                            orders=[[0, 2], [0, 1, 2]])
    for variant, metrics in (("paper", paper), ("consistent", consistent)):
        assert float(evaluate(state, flipped, variant).tau_pipe_s[0]) != pytest.approx(float(metrics.tau_pipe_s[0]))


@pytest.mark.parametrize("variant", ["paper", "consistent"])
def test_time_split_into_computation_d2d_and_upload_by_hand(variant):
    """tau_pipe_cmp_s is τ^pipe with free D2D links: (S + m − 1) max_k τ^cmp_k (Eq. 15 as printed)
    or Σ_k τ^cmp_k + (m − 1) max_k τ^cmp_k (GPipe makespan); the D2D part is the rest."""
    from collapipe_jax.system.report import time_split

    scenario, state, decision = instance()
    metrics = evaluate(state, decision, variant)
    split = time_split(decision, metrics, variant)
    delta, orders, m = [[2, 0, 3], [1, 3, 1]], [[2, 0], [0, 1, 2]], [2, 4]
    for n in range(2):
        b_hat = scenario.b / m[n]
        cmp = []
        for k in orders[n]:
            flops = (b_hat * (scenario.o_fwd_flops + scenario.o_bwd_flops) if variant == "consistent"
                     else b_hat * scenario.o_fwd_flops + scenario.o_bwd_flops)
            cmp.append(delta[n][k] * flops / PHI[n][k] / F[n][k])
        S = len(orders[n])
        want = (S + m[n] - 1) * max(cmp) if variant == "paper" else sum(cmp) + (m[n] - 1) * max(cmp)
        assert split["tau_pipe_cmp_s"][n] == pytest.approx(want, rel=1e-5)
        assert split["tau_pipe_cmp_s"][n] + split["tau_pipe_dd_s"][n] == pytest.approx(float(metrics.tau_pipe_s[n]),
                                                                                      rel=1e-6)
    assert split["tau_up_s"] == pytest.approx(np.asarray(metrics.tau_up_s).tolist())
    assert split["round_cmp_s"] == max(split["tau_pipe_cmp_s"]) and split["round_up_s"] == max(split["tau_up_s"])


ORDERS = st.permutations(range(4))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), variant=st.sampled_from(["paper", "consistent"]),
       teb_device=st.lists(st.lists(st.integers(0, 3), min_size=9, max_size=9), min_size=3, max_size=3),
       orders=st.lists(ORDERS, min_size=3, max_size=3), m=st.lists(st.integers(1, 16), min_size=3, max_size=3))
def test_pipeline_latency_and_energy_equal_the_printed_equations_on_random_plans(seed, variant, teb_device,
                                                                                 orders, m):
    """Uneven δ (each TEB on a random device), idle devices, any pipeline order, any m: τ^pipe
    and E_k equal the plain-Python reading (tests/system_by_hand.py) of Eq. 15/16 (paper) or
    the GPipe makespan (consistent)."""
    from collapipe_jax.system.report import inputs_dict

    scenario = Scenario(N=3, K=4, J=3, L=9, b=16, z_bits=3e5, g_bits=2e5, z_enc_bits=1e6, theta_enc_bits=2e6,
                        gamma0_bytes=1e7, o_fwd_flops=4e7, o_bwd_flops=8e7)
    state = draw_state(scenario, jax.random.PRNGKey(seed))
    delta = [[row.count(k) for k in range(4)] for row in teb_device]
    orders = [[k for k in order if delta[n][k] > 0] for n, order in enumerate(orders)]
    decision = make_decision(scenario, delta, m, [0, 1, 2], 0.3, orders=orders)
    inp = inputs_dict(scenario, state, decision)
    want = pipeline_by_hand(inp, orders, m, variant)
    got = evaluate(state, decision, variant)
    eps = float(np.finfo(np.float32).eps)
    for n, (tau, energy) in enumerate(want):
        # float32 rounding of the terms (Eq. 15 subtracts τ^dd_last from (S + m − 1) max u)
        scale = (len(orders[n]) + m[n]) * float(np.max(np.asarray(got.stage_s[n])))
        assert abs(float(got.tau_pipe_s[n]) - tau) <= 64 * eps * scale
        np.testing.assert_allclose(np.asarray(got.E_sch_j[n]), energy, rtol=64 * eps, atol=0)


def test_unassigned_cluster_uploads_nothing_and_uses_mean_interference():
    scenario, state, decision = instance()
    decision = decision.replace(channel=jnp.array([-1, 0]))
    got = evaluate(state, decision)
    assert float(got.tau_up_s[0]) == 0.0 and float(got.E_com_j[0]) == 0.0
    eps0 = scenario.C_noise / np.mean(I_CH)
    expected = 0.5 * scenario.beta * scenario.eta**2 * scenario.phi_seg * 2 + 0.5 * scenario.beta * eps0
    assert float(got.Gamma[0]) == pytest.approx(expected, rel=1e-5)


def test_rayleigh_expectation_matches_monte_carlo():
    snr = 6.0
    rng = np.random.default_rng(0)
    mc = np.mean(np.log2(1 + snr * rng.exponential(size=2_000_000)))
    assert float(lat.spectral_efficiency(jnp.float32(snr), "rayleigh")) == pytest.approx(mc, rel=2e-3)
    # Jensen: fading lowers the mean rate
    assert float(lat.spectral_efficiency(jnp.float32(snr), "rayleigh")) < math.log2(1 + snr)


def _random_batch(scenario, n, seed):
    rng = np.random.default_rng(seed)
    states, decisions = [], []
    for i in range(n):
        states.append(draw_state(scenario, jax.random.PRNGKey(seed * 1000 + i)))
        delta = np.zeros((scenario.N, scenario.K), int)
        for c in range(scenario.N):
            for _ in range(scenario.L):
                delta[c, rng.integers(scenario.K)] += 1
        orders = [list(rng.permutation([k for k in range(scenario.K) if delta[c, k] > 0]))
                  for c in range(scenario.N)]
        channel = rng.permutation(np.r_[np.arange(scenario.J), -np.ones(scenario.N, int)])[: scenario.N]
        channel[channel < 0] = -1
        decisions.append(make_decision(scenario, delta, rng.integers(1, scenario.b + 1, scenario.N), channel,
                                       rng.uniform(0.05, scenario.P_max_n_w, scenario.N), orders))
    return states, decisions


@pytest.mark.parametrize("variant", ["paper", "consistent"])
def test_vmap_equals_python_loop(variant):
    from collapipe_jax.system.sharded import stack

    scenario = Scenario(N=3, K=4, J=2, L=7, b=16, z_bits=1e5, g_bits=1e5, z_enc_bits=1e6,
                        theta_enc_bits=2e6, gamma0_bytes=1e7)
    states, decisions = _random_batch(scenario, 12, seed=1)
    batched = jax.vmap(lambda s, d: evaluate(s, d, variant))(stack(states), stack(decisions))
    for i, (s, d) in enumerate(zip(states, decisions)):
        one = evaluate(s, d, variant)
        for name in ("tau_pipe_s", "tau_up_s", "tau_round_s", "E_sch_j", "E_com_j", "Gamma"):
            np.testing.assert_allclose(getattr(batched, name)[i], getattr(one, name), rtol=1e-6)


def test_grad_matches_central_finite_differences():
    scenario, state, decision = instance()
    state64 = jax.tree.map(lambda x: np.asarray(x, np.float64), state)
    with jax.enable_x64():
        state64 = jax.tree.map(jnp.asarray, state64)
        dec64 = decision.replace(p_n_w=jnp.asarray(decision.p_n_w, jnp.float64))

        def per_cluster_total(p):
            m = evaluate(state64, dec64.replace(p_n_w=p))
            return jnp.sum(m.tau_pipe_s + m.tau_up_s + m.E_com_j + 100 * m.Gamma)

        grad = jax.grad(per_cluster_total)(dec64.p_n_w)
        for n in range(2):
            h = 1e-6
            e = jnp.zeros(2, jnp.float64).at[n].set(h)
            fd = (per_cluster_total(dec64.p_n_w + e) - per_cluster_total(dec64.p_n_w - e)) / (2 * h)
            assert float(grad[n]) == pytest.approx(float(fd), rel=1e-5)
        # the hard max and the smooth max: gradient w.r.t. p_n of the slowest cluster only
        for temperature in (None, 5.0):
            g = jax.grad(round_latency_of_power)(dec64.p_n_w, state64, dec64, "paper", temperature)
            for n in range(2):
                e = jnp.zeros(2, jnp.float64).at[n].set(1e-6)
                f = lambda p: round_latency_of_power(p, state64, dec64, "paper", temperature)  # noqa: E731
                fd = (f(dec64.p_n_w + e) - f(dec64.p_n_w - e)) / 2e-6
                assert float(g[n]) == pytest.approx(float(fd), rel=1e-4, abs=1e-9)


def test_grad_wrt_continuous_state_inputs_matches_finite_differences():
    scenario, state, decision = instance()
    with jax.enable_x64():
        st = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), state)
        for field in ("f_hz", "p_k_w", "B_U_hz", "h_n"):
            def total(v, field=field):
                m = evaluate(st.replace(**{field: v}), decision)
                return jnp.sum(m.tau_pipe_s + m.tau_up_s) + jnp.sum(m.E_sch_j)

            x = getattr(st, field)
            g = jax.grad(total)(x)
            flat = np.asarray(x).ravel()
            i = int(np.argmax(flat))
            h = 1e-6 * flat[i]
            e = np.zeros_like(flat)
            e[i] = h
            fd = (total(x + e.reshape(x.shape)) - total(x - e.reshape(x.shape))) / (2 * h)
            assert float(np.asarray(g).ravel()[i]) == pytest.approx(float(fd), rel=1e-4)


def test_batch_in_trailing_axes_equals_vmap():
    from collapipe_jax.system.model import to_batch_minor
    from collapipe_jax.system.sharded import stack

    scenario = Scenario(N=3, K=4, J=3, L=7, b=16, z_bits=1e5, g_bits=1e5, z_enc_bits=1e6,
                        theta_enc_bits=2e6, gamma0_bytes=1e7)
    states, decisions = _random_batch(scenario, 10, seed=5)
    states, decisions = stack(states), stack(decisions)
    for variant in ("paper", "consistent"):
        lead = jax.vmap(lambda s, d: evaluate(s, d, variant))(states, decisions)
        minor = evaluate(*to_batch_minor((states, decisions)), variant)
        for name in ("tau_pipe_s", "tau_up_s", "tau_round_s", "E_sch_j", "Gamma"):
            np.testing.assert_allclose(np.moveaxis(np.asarray(getattr(minor, name)), -1, 0),
                                       getattr(lead, name), rtol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "consistent"])
def test_local_steps_charge_the_pipeline_e_times_and_the_upload_once(variant):
    """E_n local steps: E_n pipeline iterations (latency and device energy E_n-fold), one upload."""
    _, state, decision = instance()
    one = evaluate(state, decision, variant)
    steps = jnp.array([3.0, 2.0])
    many = evaluate(state.replace(local_steps=steps), decision, variant)
    np.testing.assert_allclose(many.tau_pipe_s, np.asarray(steps) * np.asarray(one.tau_pipe_s), rtol=1e-6)
    np.testing.assert_allclose(many.E_sch_j, np.asarray(steps)[:, None] * np.asarray(one.E_sch_j), rtol=1e-6)
    np.testing.assert_allclose(many.E_pipe_j, np.asarray(steps) * np.asarray(one.E_pipe_j), rtol=1e-6)
    np.testing.assert_allclose(many.tau_up_s, one.tau_up_s, rtol=0)
    np.testing.assert_allclose(many.E_com_j, one.E_com_j, rtol=0)
    expected = max(float(e) * float(p) + float(u) for e, p, u in zip(steps, one.tau_pipe_s, one.tau_up_s))
    assert float(many.tau_round_s) == pytest.approx(expected, rel=1e-6)
